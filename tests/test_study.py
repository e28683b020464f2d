"""A tiny end-to-end `distillora run`: every artefact, the results.json schema, resuming, refusal of
a changed config, bad data, and `predict`."""

import json
import os

import pytest
import yaml
from transformers import AutoModelForSequenceClassification

from distillora.cli import main

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
                 "extra_tests": {"shouting": str(tmp_path / "shifted.csv")}},
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
    assert r["best_student"] in MODELS[1:]
    for m in r["models"]:  # the extra test set, reported like the test split
        e = m["extra_tests"]["shouting"]
        assert e["rows"] == 10 and sum(map(sum, e["confusion"])) == 10 and "ci95" in e
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
    assert r["best_student_rule"] == f"mean validation {r['selection_metric']} over 2 seeds"
    assert f"chosen on mean validation {r['selection_metric']} over 2 seeds" in (out / "report.md").read_text()


def test_best_student_over_seeds_uses_mean_validation():
    """One seed's validation can favour a student that the mean over seeds does not: the mean decides."""
    from distillora.rundir import ModelRecord
    from distillora.study import _best_student

    def rec(name, kind, primary, mean):
        return ModelRecord(name=name, kind=kind, num_layers=1, teacher_layers=[1], objective="", params_total=1,
                           params_trainable=1, train={}, validation={"f1_macro": primary}, test={}, inference={},
                           size_bytes=1, seed_summary=None if mean is None else
                           {"validation_f1_macro": {"mean": mean, "std": 0.0, "n": 3}})

    models = [rec("teacher", "teacher", 0.99, 0.99), rec("a", "distilled", 0.93, 0.90), rec("b", "baseline", 0.92, 0.91)]
    assert _best_student(models, "f1_macro") == ("b", "mean validation f1_macro over 3 seeds")
    single = [rec("teacher", "teacher", 0.99, None), rec("a", "distilled", 0.93, None), rec("b", "baseline", 0.92, None)]
    assert _best_student(single, "f1_macro") == ("a", "validation f1_macro")


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
