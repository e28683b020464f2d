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
    ("wrong type", ["seed=abc"], None, None, ["`seed` = 'abc'", "expected a whole number"]),
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
    # issue 11 D: NaN and infinity used to pass every `x > 0` check
    ("epochs nan", ["teacher.train.epochs=.nan"], None, None, ["teacher.train.epochs = nan", "finite"]),
    ("epochs inf", ["teacher.train.epochs=.inf"], None, None, ["teacher.train.epochs = inf", "finite"]),
    ("learning rate nan", ["lora.train.learning_rate=nan"], None, None, ["lora.train.learning_rate = nan", "finite"]),
    ("temperature nan", ["distill.temperature=.nan"], None, None, ["distill.temperature = nan", "finite"]),
    ("weight -inf", ["distill.w_kd=-.inf"], None, None, ["distill.w_kd = -inf", "finite"]),
    # issue 11 G: seeds sklearn and numpy cannot take, a label that str.isdigit() accepts
    ("seed -1", ["seed=-1"], None, None, ["seed = -1", "0..4294967295"]),
    ("seed 2**32", ["seed=4294967296"], None, None, ["seed = 4294967296", "0..4294967295"]),
    ("extra seed 2**32", ["seeds=[42, 4294967296]"], None, None, ["seeds[1] = 4294967296"]),
    ("superscript label", [], GOOD + "odd,\u00b2\n", None, ["row 21 (line 22)", "label '\u00b2'", "data.label_names"]),
    # issue 11 C: a missing extra test file is found before training, naming its key
    ("missing extra test", ["data.extra_tests={foo: /missing.csv}"], None, None,
     ["data.extra_tests.foo", "/missing.csv", "file not found"]),
    ("bad extra test", ["data.extra_tests={foo: EXTRA}"], None, None, ["data.extra_tests.foo", "extra.csv", "row 1", "label '7'"]),
    # development sets: found and checked before training, as extra test sets are; names kept apart
    ("missing development set", ["data.dev_sets={typed: /missing.csv}"], None, None,
     ["data.dev_sets.typed", "/missing.csv", "file not found"]),
    ("bad development set", ["data.dev_sets={typed: EXTRA}"], None, None, ["data.dev_sets.typed", "extra.csv", "row 1", "label '7'"]),
    ("development set named as a split", ["data.dev_sets={test: EXTRA}"], None, None,
     ["data.dev_sets.test", "taken by a split"]),
    ("development set name with a slash", ["data.dev_sets={a/b: EXTRA}"], None, None,
     ["data.dev_sets", "'a/b'", "only letters, digits, _ and -"]),
    ("development set that is the test split", ["data.dev_sets={typed: TEST}"], None, None,
     ["data.dev_sets.typed", "in the test split", "chosen on test"]),
    ("development set named as an extra test", ["data.dev_sets={foo: EXTRA}", "data.extra_tests={foo: EXTRA}"], None,
     None, ["data.dev_sets.foo", "data.extra_tests has a set of that name"]),
    # issue 11 K: quoted fields spanning lines; a tab-separated file
    ("label after a multi-line field", [], "tweet,label\n\"one\ntwo\nthree\",0\n" + GOOD.split("\n", 1)[1] + "odd,5\n", None,
     ["row 22 (line 25)", "label '5'"]),
    ("tab-separated", [], GOOD.replace(",", "\t"), None, ["tab-separated", "use commas, or set data.sep"]),
    ("sep of two characters", ["data.sep=ab"], None, None, ["data.sep = 'ab'", "one character"]),
]


@pytest.mark.parametrize("case,overrides,train,test,needles", CASES, ids=[c[0] for c in CASES])
def test_malformed_input(case, overrides, train, test, needles, tmp_path, tiny_teacher_dir, capsys):
    d = _data(tmp_path, train if train is not None else GOOD, test or "tweet,label\nhello,0\nthey are vermin,1\n")
    (tmp_path / "extra.csv").write_text("tweet,label\nhello,7\n")
    overrides = [o.replace("EXTRA", str(tmp_path / "extra.csv")).replace("TEST", str(d / "test.csv")) for o in overrides]
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


def test_read_only_filesystem_is_not_reported_as_full(tmp_path, tiny_teacher_dir, small_data, capsys, monkeypatch):
    """Issue 11 K: a read-only filesystem reports 0 bytes free; the message says read-only."""
    import os
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    real = os.statvfs
    fake = namedtuple("statvfs", "f_flag")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9, 0))
    monkeypatch.setattr(os, "statvfs", lambda p: fake(real(p).f_flag | os.ST_RDONLY))
    code = main(["run", "--output", str(tmp_path / "run"), f"data.source={small_data}",
                 f"teacher.source={tiny_teacher_dir}", "data.validation_fraction=0.25"])
    err = capsys.readouterr().err
    assert code == 2 and "read-only filesystem" in err and "GB free" not in err, err
    assert not (tmp_path / "run").exists()


def test_extra_test_set_checked_before_training(tmp_path, tiny_teacher_dir, small_data, capsys, monkeypatch):
    """Issue 11 C: nothing is trained (and nothing written) when an extra test file is missing."""
    from distillora import study

    monkeypatch.setattr(study, "_train_models", lambda *a, **k: pytest.fail("trained despite a missing extra test"))
    code = main(["run", "--output", str(tmp_path / "run"), f"data.source={small_data}",
                 f"teacher.source={tiny_teacher_dir}", "data.validation_fraction=0.25",
                 f"data.extra_tests={{foo: {tmp_path / 'nope.csv'}}}"])
    err = capsys.readouterr().err
    assert code == 2 and "data.extra_tests.foo" in err and "nope.csv" in err
    assert not (tmp_path / "run").exists()
