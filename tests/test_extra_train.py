"""`data.extra_train`: extra labelled training files, added after the validation carve."""

import re

import pytest

from distillora.config import load_config
from distillora.data import load_splits
from distillora.errors import UserError

from conftest import stage_fingerprints


def _extra(tmp_path, rows: str, name: str = "extra.csv"):
    path = tmp_path / name
    path.write_text("tweet,label,categories\n" + rows)
    return path


def _cfg(small_data, *extra):
    return load_config(None, [f"data.source={small_data}", "data.validation_fraction=0.25", *extra]).data


def test_extra_rows_join_train_after_the_carve_and_never_validation_or_test(tmp_path, small_data):
    path = _extra(tmp_path, "women are worthless,1,Gender\nwomen are wonderful,0,\nthis traffic is awful,0,\n")
    plain = load_splits(_cfg(small_data), 42)
    more = load_splits(_cfg(small_data, f"data.extra_train=[{path}]"), 42)
    assert more.validation.texts == plain.validation.texts and more.test.texts == plain.test.texts
    assert more.train.texts == plain.train.texts + ["women are worthless", "women are wonderful", "this traffic is awful"]
    assert more.train.labels.tolist() == plain.train.labels.tolist() + [1, 0, 0]
    assert more.train.categories[-3:] == ["Gender", "", ""]
    assert more.info["rows"]["train"] == plain.info["rows"]["train"] + 3
    assert more.info["extra_train_rows"] == {str(path): 3}
    assert more.info["label_counts"]["train"] == [plain.info["label_counts"]["train"][0] + 2,
                                                  plain.info["label_counts"]["train"][1] + 1]


def test_a_file_without_the_category_column_gets_empty_categories(tmp_path, small_data):
    path = tmp_path / "plain.csv"
    path.write_text("tweet,label\nold people are a burden,1\nold people are wise,0\n")
    splits = load_splits(_cfg(small_data, f"data.extra_train=[{path}]"), 42)
    assert splits.train.categories[-2:] == ["", ""] and len(splits.train.categories) == len(splits.train)


def test_bad_extra_files_are_refused_with_what_to_fix(tmp_path, small_data, monkeypatch):
    with pytest.raises(UserError, match=r"data.extra_train\[0\] = .*missing.csv.*file not found"):
        load_splits(_cfg(small_data, f"data.extra_train=[{tmp_path / 'missing.csv'}]"), 42)
    # a relative path: the message says where it looked and from which directory
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"file not found \(looked for .*/configs/x.csv: a relative path is read "
                                        r"from the current directory, .*\).*repository root"):
        load_splits(_cfg(small_data, "data.extra_train=[configs/x.csv]"), 42)
    bad = _extra(tmp_path, "fine,0,\nnot a label,7,\n", "bad.csv")
    with pytest.raises(UserError, match=r"data.extra_train\[0\]: .*bad.csv.*line 3"):
        load_splits(_cfg(small_data, f"data.extra_train=[{bad}]"), 42)
    with pytest.raises(UserError, match=r"data.extra_train\[0\] = .*train.csv.* is the data source's own train"):
        load_splits(_cfg(small_data, f"data.extra_train=[{small_data / 'train.csv'}]"), 42)
    with pytest.raises(UserError, match=r"named twice"):
        _cfg(small_data, f"data.extra_train=[{bad}, {bad}]")


def test_a_source_without_categories_keeps_none_and_rebuilt_splits_leave_the_extra_rows_out(tmp_path, small_data):
    import pandas as pd

    from distillora.data import as_saved

    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("train.csv", "test.csv"):
        pd.read_csv(small_data / name, keep_default_na=False).drop(columns=["categories"]).to_csv(plain / name, index=False)
    path = _extra(tmp_path, "a,1,Gender\nb,0,\n")
    splits = load_splits(_cfg(plain, f"data.extra_train=[{path}]"), 42)
    assert splits.train.categories is None  # group_weights then refuses, as for the source alone
    # export, check and the benches rebuild validation and test only: a moved training file cannot stop them
    cfg = _cfg(small_data, "data.extra_train=[gone.csv]")
    assert as_saved(cfg, tmp_path / "no-model").extra_train == []


def test_the_teacher_retrains_when_an_extra_file_changes_and_runs_without_one_keep_their_fingerprint(tmp_path):
    def teacher_fp(overrides):
        return stage_fingerprints(overrides)["teacher"]

    path = _extra(tmp_path, "a,1,Gender\nb,0,\n")
    assert teacher_fp(["data.extra_train=[]"]) == teacher_fp([])
    with_file = teacher_fp([f"data.extra_train=[{path}]"])
    assert with_file != teacher_fp([])
    moved = tmp_path / "elsewhere.csv"
    moved.write_bytes(path.read_bytes())
    assert teacher_fp([f"data.extra_train=[{moved}]"]) == with_file  # the content, not the path
    path.write_text("tweet,label,categories\na,1,Gender\nb,1,Race\n")  # same path, edited rows
    assert teacher_fp([f"data.extra_train=[{path}]"]) != with_file


def test_a_whole_tiny_study_trains_on_the_extra_rows_and_its_report_says_so(tmp_path, tiny_teacher_dir, small_data):
    from distillora.rundir import RunDir
    from distillora.study import run_study

    path = _extra(tmp_path, "".join(f"group {i} are vermin,1,Race\ngroup {i} are neighbours,0,\n" for i in range(5)))
    cfg = load_config(None, [
        "name=extra", f"data.source={small_data}", "data.validation_fraction=0.25", "data.max_length=32",
        f"data.extra_train=[{path}]", f"teacher.source={tiny_teacher_dir}", "teacher.train.epochs=1",
        "distill.train.epochs=1", "lora.train.epochs=1", "baseline.train.epochs=1", "lora.r=4", "lora.alpha=8",
        "check.suites=[]", "distill.train.extra_train_repeat=3", "distill.train.batch_size=10",
        "baseline.train.batch_size=10"])
    out = run_study(cfg, tmp_path / "run", quiet=True)
    results = RunDir(out).results()
    ds = results.dataset
    assert ds["extra_train_rows"] == {str(path): 10} and ds["rows"]["train"] == 60 + 10
    # distill.train.extra_train_repeat: the distilled students see the 10 extra rows 3 times (90 rows, 9 steps
    # of 10), the baseline, at the default, once (70 rows, 7 steps)
    steps = {m.name: m.train["steps"] for m in results.models}
    assert steps["odd"] == steps["even"] == 9 and steps["baseline"] == 7
    assert f"`{path}`: 10" in (out / "report.md").read_text()


def test_extra_train_repeat_is_refused_below_one_or_without_extra_files(tmp_path, small_data):
    path = _extra(tmp_path, "women are worthless,1,Gender\n")
    for bad, says in (("0", " = 0: use a whole number >= 1"), ("-1", " = -1: use a whole number >= 1"),
                      ("1.5", "` = 1.5 has the wrong type; expected a whole number")):
        with pytest.raises(UserError, match=r"distill\.train\.extra_train_repeat" + re.escape(says)):
            load_config(None, [f"data.source={small_data}", f"data.extra_train=[{path}]",
                               f"distill.train.extra_train_repeat={bad}"])
    with pytest.raises(UserError, match=r"lora\.train\.extra_train_repeat = 2 .*names no file"):
        load_config(None, [f"data.source={small_data}", "lora.train.extra_train_repeat=2"])
    load_config(None, [f"data.source={small_data}", f"data.extra_train=[{path}]", "teacher.train.extra_train_repeat=3"])


def test_a_stage_sees_the_extra_rows_as_often_as_its_setting_says_and_counts_class_weights_on_that(tmp_path):
    from distillora.config import TrainConfig
    from distillora.data import Encoded
    from distillora.stages import StageEnv

    items = [{"input_ids": [1, 5 + i, 2], "attention_mask": [1, 1, 1], "labels": y}
             for i, y in enumerate([0, 0, 0, 0, 1, 1, 0])]  # the last two: data.extra_train rows
    cfg = load_config(None, ["class_weights=balanced"])
    env = StageEnv(cfg, None, Encoded(items), Encoded(items), tmp_path, quiet=True, extra_rows=2)
    once, three = TrainConfig(), TrainConfig(extra_train_repeat=3)
    assert env.seen(once).items == items
    seen = env.seen(three).items
    assert seen == items + items[5:] * 2 and len(seen) == 11
    # balanced weights n / (C n_c): as read 7 rows (5 / 2), as seen 11 rows (7 / 4)
    assert env.class_weights(once).tolist() == pytest.approx([7 / 10, 7 / 4])
    assert env.class_weights(three).tolist() == pytest.approx([11 / 14, 11 / 8])
    assert env.distillation([1], three).class_weights.tolist() == pytest.approx([11 / 14, 11 / 8])
    # cached teacher outputs attached before the repeat travel with their rows
    cached = env.seen(three, env.train.with_fields(teacher_logits=list(range(7)))).items
    assert [x["teacher_logits"] for x in cached] == list(range(7)) + [5, 6, 5, 6]
