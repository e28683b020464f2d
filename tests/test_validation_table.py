"""Every malformed input gives one message naming the file/key, the value and the fix, exit code 2,
no traceback, and no run directory."""

import pytest
import yaml

from distillora.cli import main


def _write(path, text, mode="w"):
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _data(tmp_path, train: str | bytes, test: str = "tweet,label\nhello,0\nthey are vermin,1\n"):
    d = tmp_path / "d"
    d.mkdir(exist_ok=True)
    _write(d / "train.csv", train)
    _write(d / "test.csv", test)
    return d


GOOD = "tweet,label\n" + "".join(f"fine tweet {i},0\nhateful tweet {i},1\n" for i in range(10))

# (case id, overrides, train csv (None: the good one), test csv (None: good), needles in the message)
CASES = [
    ("unknown key", ["teacher.epochz=1"], None, None, ["unknown key `teacher.epochz`"]),
    ("wrong type", ["seed=abc"], None, None, ["`seed` = 'abc'", "expected int"]),
    ("layer out of range", ["distill.students={odd: [1, 9]}"], None, None, ["distill.students.odd", "[9]", "layers 1..4"]),
    ("duplicate layers", ["baseline.layers=[2, 2]"], None, None, ["baseline.layers", "more than once"]),
    ("empty layer list", ["lora.layers=[]"], None, None, ["lora.layers", "non-empty"]),
    ("temperature <= 0", ["distill.temperature=0"], None, None, ["distill.temperature = 0.0", "must be > 0"]),
    ("missing data file", ["data.train_file=/nonexistent/train.csv", "data.test_file=/nonexistent/test.csv"], None, None,
     ["/nonexistent/train.csv", "file not found"]),
    ("wrong columns", [], "text_,label\na,0\n", None, ["no column 'tweet'", "data.text_column"]),
    ("non-binary label", [], GOOD + "odd,2\n", None, ["row 21 (line 22)", "label '2'", "data.label_names"]),
    ("non-integer label", [], GOOD + "odd,0.5\n", None, ["row 21", "label '0.5'"]),
    ("all one class", [], "tweet,label\n" + "".join(f"t{i},0\n" for i in range(20)), None, ["both labels"]),
    ("test split with no rows", [], None, "tweet,label\n", ["test.csv", "no data rows"]),
    ("undecodable bytes", [], GOOD.encode() + b"caf\xe9,0\n", None, ["row 21 (line 22), column 4", "not UTF-8"]),
    ("warmup ratio", ["teacher.train.warmup_ratio=2"], None, None, ["warmup_ratio = 2.0", "[0, 1)"]),
]


@pytest.mark.parametrize("case,overrides,train,test,needles", CASES, ids=[c[0] for c in CASES])
def test_malformed_input(case, overrides, train, test, needles, tmp_path, tiny_teacher_dir, capsys):
    d = _data(tmp_path, train if train is not None else GOOD, test or "tweet,label\nhello,0\nthey are vermin,1\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"source": str(d), "validation_fraction": 0.25},
                                   "teacher": {"source": str(tiny_teacher_dir)}}))
    out = tmp_path / "run"
    code = main(["run", "--config", str(cfg), "--output", str(out), "--quiet", *overrides])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("distillora: error:")
    for n in needles:
        assert n in err, (n, err)
    assert not out.exists()


def test_output_path_that_cannot_be_created(tmp_path, tiny_teacher_dir, small_data, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code = main(["run", "--output", str(blocker / "run"), f"data.source={small_data}",
                 f"teacher.source={tiny_teacher_dir}", "data.validation_fraction=0.25"])
    assert code == 2 and "cannot write there" in capsys.readouterr().err


def test_full_disk_fails_before_training(tmp_path, tiny_teacher_dir, small_data, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9, 1000))
    code = main(["run", "--output", str(tmp_path / "run"), f"data.source={small_data}",
                 f"teacher.source={tiny_teacher_dir}", "data.validation_fraction=0.25"])
    err = capsys.readouterr().err
    assert code == 2 and "GB free" in err and "free space" in err
    assert not (tmp_path / "run").exists()


def test_pickled_weights_refused_unless_allowed(tmp_path, tiny_teacher_dir, small_data, capsys):
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification

    d = tmp_path / "pickled"
    shutil.copytree(tiny_teacher_dir, d)
    torch.save(AutoModelForSequenceClassification.from_pretrained(d).state_dict(), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    code = main(["run", "--output", str(tmp_path / "run"), f"data.source={small_data}", f"teacher.source={d}",
                 "data.validation_fraction=0.25"])
    err = capsys.readouterr().err
    assert code == 2 and "pickled weights" in err and "teacher.allow_pickle=true" in err
