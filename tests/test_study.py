"""A tiny end-to-end `distillora run`: every artefact, the results.json schema, resuming, refusal of
a changed config, bad data, and `predict`."""

import json
import os

import pytest
import yaml
from transformers import AutoModelForSequenceClassification

from distillora.cli import main

DEV_SET = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "dev" / "short_sentences.csv")
MODELS = ["teacher", "odd", "even", "lora", "baseline"]
TEST_KEYS = {"accuracy", "balanced_accuracy", "f1_macro", "per_class", "roc_auc", "loss", "confusion"}


@pytest.fixture()
def tiny_config(tmp_path, tiny_teacher_dir, small_data):
    import pandas as pd

    shifted = pd.read_csv(small_data / "test.csv", keep_default_na=False).head(10)
    shifted["tweet"] = shifted["tweet"].str.upper()
    shifted.to_csv(tmp_path / "shifted.csv", index=False)
    cfg = {
        "name": "tiny",
        "data": {"source": str(small_data), "validation_fraction": 0.25, "max_length": 32,
                 "extra_tests": {"shouting": str(tmp_path / "shifted.csv")}, "dev_sets": {"typed": DEV_SET}},
        "teacher": {"source": str(tiny_teacher_dir), "train": {"epochs": 1, "batch_size": 16, "logging_steps": 2}},
        "distill": {"students": {"odd": "odd", "even": "even"}, "train": {"epochs": 2, "batch_size": 16, "logging_steps": 2}},
        "lora": {"r": 4, "alpha": 8, "train": {"epochs": 1, "batch_size": 16}},
        "baseline": {"train": {"epochs": 1, "batch_size": 16}},
    }
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def _run(cfg, out, *extra):
    return main(["run", "--config", str(cfg), "--output", str(out), "--quiet", *extra])


def test_tiny_study_end_to_end(tmp_path, tiny_config, capsys):
    out = tmp_path / "run"
    assert _run(tiny_config, out) == 0
    for f in ["config.yaml", "results.json", "report.md", "plots/loss_curves.png", "plots/confusion_matrices.png",
              "plots/accuracy_vs_params.png", "models/lora/adapter/adapter_model.safetensors",
              "models/lora/adapter/adapter_config.json"]:
        assert (out / f).is_file(), f
    assert not (out / "checkpoints").exists()
    r = json.loads((out / "results.json").read_text())
    assert set(r["dataset"]) >= {"source", "rows", "dropped_empty", "label_names"}
    assert r["dataset"]["rows"] == {"train": 60, "validation": 20, "test": 40}
    assert [m["name"] for m in r["models"]] == MODELS
    by = {m["name"]: m for m in r["models"]}
    for m in r["models"]:
        assert set(m) >= {"name", "num_layers", "teacher_layers", "objective", "params_total", "params_trainable",
                          "train", "validation", "test", "path"}
        assert set(m["train"]) >= {"loss", "seconds", "steps"} and m["train"]["steps"] > 0
        assert set(m["validation"]) == {"accuracy", "balanced_accuracy", "f1_macro"}
        assert set(m["test"]) == TEST_KEYS | {"ci95"}
        lo, hi = m["test"]["ci95"]["accuracy"]
        assert lo <= m["test"]["accuracy"] <= hi
        cm = m["test"]["confusion"]
        assert sum(map(sum, cm)) == 40 and abs((cm[0][0] + cm[1][1]) / 40 - m["test"]["accuracy"]) < 1e-9
        assert (out / "logs" / f"{m['name']}.jsonl").is_file()
        model_dir = out / m["path"]
        assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()
        loaded = AutoModelForSequenceClassification.from_pretrained(model_dir)
        assert loaded.config.num_hidden_layers == m["num_layers"]
    assert by["teacher"]["teacher_layers"] == [1, 2, 3, 4] and by["teacher"]["num_layers"] == 4
    assert by["odd"]["teacher_layers"] == [1, 3] and by["even"]["teacher_layers"] == [2, 4]
    assert by["odd"]["num_layers"] == 2
    assert by["lora"]["params_trainable"] < 0.05 * by["lora"]["params_total"]
    assert by["lora"]["merge_max_abs_diff"] < 1e-4
    assert by["baseline"]["params_trainable"] == by["baseline"]["params_total"]
    for m in r["models"]:  # the extra test set, reported like the test split, and the development set
        e = m["extra_tests"]["shouting"]
        assert e["rows"] == 10 and sum(map(sum, e["confusion"])) == 10 and "ci95" in e
        d = m["dev_sets"]["typed"]
        assert d["rows"] == 289 and sum(map(sum, d["confusion"])) == 289 and "ci95" in d
    # the best student: the highest mean of validation F1 and the development set's F1 (one seed: the
    # development figures are the ones reported per model), every student scored
    scores = r["best_student_scores"]
    assert set(scores) == set(MODELS[1:])
    for m in r["models"][1:]:
        s = scores[m["name"]]
        assert s["typed"] == m["dev_sets"]["typed"]["f1_macro"] and s["score"] == (s["validation"] + s["typed"]) / 2
        assert abs(s["validation"] - m["validation"]["f1_macro"]) < 0.05  # scored again from the stored probabilities
    assert r["best_student"] == max(scores, key=lambda n: scores[n]["score"])
    assert r["best_student_rule"] == "validation f1_macro and f1_macro on the development sets typed (their mean, equal weight)"
    report = (out / "report.md").read_text()
    assert "## Development sets" in report and "| typed | 289 |" in report
    assert "## Choosing the best student" in report and f"| {r['best_student']} (chosen) |" in report
    for m in r["models"]:
        assert m["calibration"]["test"]["ece"] >= 0 and 0 < m["threshold"]["value"] < 1
        assert m["per_category"]["(none)"]["rows"] == 20
    assert {(x["a"], x["b"]) for x in r["significance"]} >= {("odd", "even"), ("lora", "baseline"), ("odd", "teacher")}
    assert r["audit"]["splits"]["test"]["rows"] == 40
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html and "plots/" not in html.split("<body>")[1]
    report = (out / "report.md").read_text()
    assert "## Extra test sets" in report and "## Are the differences real?" in report and "## Data audit" in report
    assert "| model |" in report and "## Analysis" in report
    assert f"{by['teacher']['test']['accuracy']:.3f}" in report

    # predict from the finished run
    capsys.readouterr()
    assert main(["predict", "--run", str(out), "--model", "odd", "you are lovely", "I hate them all"]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["model"] == "odd" and len(pred["predictions"]) == 2
    for p in pred["predictions"]:
        assert p["label"] in ("not_hate", "hate")
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-5

    # second run skips every finished stage and changes no model
    stamps = {n: os.stat(out / "models" / n / "model.safetensors").st_mtime_ns for n in MODELS}
    markers = {n: (out / "stages" / f"{n}.json").read_text() for n in MODELS}
    assert _run(tiny_config, out) == 0
    assert stamps == {n: os.stat(out / "models" / n / "model.safetensors").st_mtime_ns for n in MODELS}
    assert markers == {n: (out / "stages" / f"{n}.json").read_text() for n in MODELS}

    # a changed configuration is refused, and accepted with --force (redoing only what it affects)
    capsys.readouterr()
    assert _run(tiny_config, out, "baseline.train.learning_rate=1e-4") == 2
    assert "different configuration" in capsys.readouterr().err
    assert _run(tiny_config, out, "baseline.train.learning_rate=1e-4", "--force") == 0
    after = {n: os.stat(out / "models" / n / "model.safetensors").st_mtime_ns for n in MODELS}
    assert after["teacher"] == stamps["teacher"] and after["odd"] == stamps["odd"]
    assert after["baseline"] != stamps["baseline"]


def test_bad_data_exits_2_and_writes_nothing(tmp_path, tiny_config, small_data, capsys):
    with open(small_data / "train.csv", "a") as f:
        f.write("a tweet with a bad label,2\n")
    out = tmp_path / "run"
    assert _run(tiny_config, out) == 2
    err = capsys.readouterr().err
    assert "train.csv: row 81 (line 82)" in err and "label '2'" in err and "Traceback" not in err
    assert not out.exists()


def test_layer_out_of_range_for_teacher_is_a_clear_error(tmp_path, tiny_config, capsys):
    out = tmp_path / "run"
    assert _run(tiny_config, out, "distill.students={odd: [1, 9]}", "teacher.train.epochs=1") in (2,)
    assert "out of range" in capsys.readouterr().err


def test_adding_a_development_set_to_a_finished_run_retrains_nothing(tiny_run, tmp_path, monkeypatch):
    """data.dev_sets is read by evaluation only: with --force a finished run scores every model on the
    new set and re-chooses the best student, and every stage is skipped (its record is untouched). The
    set is named by a path under ~, and an edit of the file is scored again."""
    import shutil

    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copy(DEV_SET, tmp_path / "typed.csv")
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    stage_files = sorted((copy / "stages").glob("*.json"))
    trained = {p.name: p.read_bytes() for p in stage_files if ".test" not in p.name and ".extra-" not in p.name}
    assert set(trained) == {f"{m}.json" for m in MODELS}
    args = ["run", "--config", str(copy / "config.yaml"), "--output", str(copy), "--quiet", "--force",
            "data.dev_sets={typed: ~/typed.csv}"]
    assert main(args) == 0
    assert {n: (copy / "stages" / n).read_bytes() for n in trained} == trained
    r = json.loads((copy / "results.json").read_text())
    assert all(m["dev_sets"]["typed"]["rows"] == 289 for m in r["models"])
    assert "development sets typed" in r["best_student_rule"]
    # the same file with its first row's label flipped (the same size): scored again, by content
    lines = (tmp_path / "typed.csv").read_text().splitlines(keepends=True)
    text, label = lines[1].rstrip("\n").rsplit(",", 1)
    lines[1] = f"{text},{1 - int(label)}\n"
    (tmp_path / "typed.csv").write_text("".join(lines))
    assert main(args) == 0
    again = {m["name"]: m["dev_sets"]["typed"]["confusion"] for m in json.loads((copy / "results.json").read_text())["models"]}
    assert again != {m["name"]: m["dev_sets"]["typed"]["confusion"] for m in r["models"]}


def test_predict_on_unfinished_run(tmp_path, capsys):
    assert main(["predict", "--run", str(tmp_path), "hello"]) == 2
    assert "not a finished run" in capsys.readouterr().err


def test_seeds_repeat_every_trainable_stage(tmp_path, tiny_config):
    out = tmp_path / "run"
    assert main(["run", "--config", str(tiny_config), "--output", str(out), "--quiet", "--seeds", "2",
                 "data.extra_tests={}", "distill.train.epochs=1"]) == 0
    r = json.loads((out / "results.json").read_text())
    for m in r["models"]:
        assert [x["seed"] for x in m["seeds"]] == [42, 43]
        assert (out / "models" / f"{m['name']}.seed43" / "model.safetensors").is_file()
        acc = [x["test"]["accuracy"] for x in m["seeds"]]
        s = m["seed_summary"]["test_accuracy"]
        assert s["n"] == 2 and abs(s["mean"] - sum(acc) / 2) < 1e-12
        assert abs(s["std"] - abs(acc[0] - acc[1]) / 2 ** 0.5) < 1e-12  # sample std of two values
        assert m["seeds"][0]["test"]["accuracy"] == m["test"]["accuracy"]  # seed 42 is the primary model
    # the second seed really trained anew (different initial head, different data order)
    a = json.loads((out / "stages" / "baseline.json").read_text())["train"]["epoch_losses"]
    b = json.loads((out / "stages" / "baseline.seed43.json").read_text())["train"]["epoch_losses"]
    assert a != b
    assert "## Across 2 seeds" in (out / "report.md").read_text()
    # the rule that chose the best student is recorded, and the report states it
    for m in r["models"]:  # each seed's model is scored on the development set, for the choice
        assert [set(x["dev_sets"]) for x in m["seeds"]] == [{"typed"}, {"typed"}]
        assert (out / "stages" / f"{m['name']}.seed43.extra-typed.json").is_file()
    for name, s in r["best_student_scores"].items():  # the mean over the seeds of each seed's figures
        rows = next(m for m in r["models"] if m["name"] == name)["seeds"]
        assert abs(s["typed"] - sum(x["dev_sets"]["typed"]["f1_macro"] for x in rows) / 2) < 1e-12
        assert abs(s["validation"] - sum(x["validation"]["f1_macro"] for x in rows) / 2) < 1e-12
    rule = "mean validation f1_macro and f1_macro on the development sets typed (their mean, equal weight) over 2 seeds"
    assert r["best_student_rule"] == rule and f"chosen on {rule}" in (out / "report.md").read_text()


def _evaluation(validation_pred, dev_preds):
    """An Evaluation whose probabilities put all weight on the given predicted labels."""
    import numpy as np

    from distillora.rundir import Evaluation

    one_hot = lambda pred: np.eye(2)[np.asarray(pred)]  # noqa: E731
    return Evaluation(fingerprint="", probabilities=np.zeros((0, 2)), validation_probabilities=one_hot(validation_pred),
                      params_total=1, params_trainable=1, num_layers=1, inference={},
                      extra={k: one_hot(v) for k, v in dev_preds.items()})


def test_selection_scores_by_hand():
    """Validation and each development set weigh equally, per seed, then the mean over seeds; teachers
    are not scored, and the test probabilities are not read (they are empty here)."""
    from types import SimpleNamespace

    import numpy as np

    from distillora.analysis import selection_scores
    from distillora.data import Split

    labels = [0, 0, 1, 1]
    splits = SimpleNamespace(info={"label_names": ["no", "yes"]}, validation=Split(["a"] * 4, np.array(labels)))
    dev = {"typed": Split(["b"] * 4, np.array(labels))}
    models = [SimpleNamespace(name="teacher", is_student=False), SimpleNamespace(name="s", is_student=True)]
    per_seed = {42: {"teacher": None, "s": _evaluation([0, 0, 1, 1], {"typed": [0, 1, 1, 1]})},   # 1.0, 0.75
                43: {"teacher": None, "s": _evaluation([0, 1, 1, 1], {"typed": [1, 1, 1, 1]})}}   # 0.75, 0.5
    got = selection_scores(models, per_seed, splits, dev, "accuracy")
    assert list(got) == ["s"]
    assert got["s"] == {"validation": 0.875, "typed": 0.625, "score": 0.75}  # (0.875 + 0.625) / 2
    f1 = selection_scores(models, {42: per_seed[42]}, splits, dev, "f1_macro")["s"]
    assert f1["validation"] == 1.0 and abs(f1["typed"] - (2 / 3 + 0.8) / 2) < 1e-12  # F1 of "no" 2/3, "yes" 0.8


def test_best_student_is_the_highest_score_and_the_rule_says_how():
    from distillora.study import _best_student

    scores = {"a": {"validation": 0.918, "dev": 0.94, "functional": 0.79, "score": 0.8827},
              "b": {"validation": 0.917, "dev": 0.965, "functional": 0.838, "score": 0.9067}}
    assert _best_student(scores, "f1_macro", ["dev", "functional"], 1) == (
        "b", "validation f1_macro and f1_macro on the development sets dev, functional (their mean, equal weight)")
    assert _best_student({"a": {"validation": 0.9, "score": 0.9}, "b": {"validation": 0.8, "score": 0.8}},
                         "f1_macro", [], 3) == ("a", "mean validation f1_macro over 3 seeds")
    assert _best_student({}, "f1_macro", [], 1) == (None, "validation f1_macro")


def test_report_of_a_run_from_before_the_rule_was_recorded_says_validation(tiny_run, tmp_path):
    """results.json written before `best_student_rule` existed (chosen on the primary seed): a rebuilt
    report must not claim the mean over seeds."""
    import shutil

    from distillora.config import load_config
    from distillora.report import write_report
    from distillora.rundir import RunDir

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    run = RunDir(copy)
    d = json.loads(run.results_file.read_text())
    assert d.pop("best_student_rule") == f"validation {d['selection_metric']}"  # one seed
    run.results_file.write_text(json.dumps(d))
    results = run.results()
    assert results.best_student_rule is None
    write_report(copy, results, load_config(run.config, []))
    text = (copy / "report.md").read_text()
    assert f"- Best student, chosen on validation {d['selection_metric']}: `{d['best_student']}`." in text


def test_kinds_are_recorded_and_runs_from_before_kinds_still_load(tiny_run, tmp_path):
    """results.json records each model's kind; a run written before kinds (main before issue 12: no
    `kind`, p(hate) only in stages/*.test.json) loads with the kinds its names and objectives imply, and
    a file this version cannot read is a UserError saying how to redo it."""
    import json
    import shutil

    from distillora.errors import UserError
    from distillora.predict import model_entries
    from distillora.rundir import RunDir, probability_columns

    raw = json.loads(RunDir(tiny_run).results_file.read_text())
    assert {m["name"]: m["kind"] for m in raw["models"]} == {
        "teacher": "teacher", "odd": "distilled", "even": "distilled", "lora": "lora", "baseline": "baseline"}
    old = RunDir(shutil.copytree(tiny_run, tmp_path / "old"))
    for m in raw["models"]:
        del m["kind"]
        m["objective"] = {"odd": "distillation: 0.5*CE + ...", "even": "distillation: 0.5*CE + ..."}.get(
            m["name"], m["objective"])
        f = old.marker(m["name"], ".test")
        rec = json.loads(f.read_text())
        p = probability_columns(rec)
        rec.pop("probabilities"), rec.pop("validation_probabilities")
        rec["probabilities_hate"] = p[:, 1].tolist()
        rec["validation_probabilities_hate"] = probability_columns(
            json.loads(RunDir(tiny_run).marker(m["name"], ".test").read_text()), "validation_probabilities")[:, 1].tolist()
        f.write_text(json.dumps(rec))
    old.results_file.write_text(json.dumps(raw))
    results = old.results()
    assert [m.kind for m in results.models] == ["teacher", "distilled", "distilled", "lora", "baseline"]
    assert [m["kind"] for m in model_entries(old.root)] == [m.kind for m in results.models]
    ev = old.evaluation("odd", json.loads(old.marker("odd").read_text())["fingerprint"])
    assert ev.probabilities.shape == (40, 2) and abs(ev.probabilities.sum(1) - 1).max() < 1e-5
    raw["models"][1]["objective"] = "something else"
    old.results_file.write_text(json.dumps(raw))
    with pytest.raises(UserError, match="distillora run --output"):
        old.results()
