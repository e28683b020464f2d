"""`teacher.restarts: N`: N teachers fine-tuned with training seeds seed, seed+1000, ... from one head
initialisation; the one with the highest selection score (validation and the development sets, the rule
that chooses the best student) is kept."""

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from distillora.config import load_config, stable_section, to_dict
from distillora.errors import UserError
from distillora.evaluate import selection_row
from distillora.stages import teacher as teacher_stage

from conftest import interrupt_in_member_2, load_bench, teacher_env

DEV_SET = Path(__file__).resolve().parents[1] / "configs" / "dev" / "short_sentences.csv"


def test_selection_row_is_the_mean_of_the_metric_on_each_set_by_hand():
    val = (np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]), np.array([0, 1, 1, 1]))
    dev = (np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([0, 0]))
    row = selection_row({"validation": val, "typed": dev}, "f1_macro")
    # validation predicts 0,1,0,1 against 0,1,1,1: class 0 F1 2/3, class 1 F1 0.8
    assert row["validation"] == pytest.approx((2 / 3 + 0.8) / 2)
    # dev predicts 1,0 against 0,0: class 0 F1 2/3; class 1 has no true and one predicted row, F1 0
    assert row["typed"] == pytest.approx(f1_score([0, 0], [1, 0], average="macro", zero_division=0))
    assert row["score"] == pytest.approx((row["validation"] + row["typed"]) / 2)


def test_restarts_setting_is_validated_and_one_teacher_keeps_existing_fingerprints():
    with pytest.raises(UserError, match="teacher.restarts = 0"):
        load_config(None, ["teacher.restarts=0"])
    with pytest.raises(UserError, match="choose one"):
        load_config(None, ["teacher.restarts=2", "teacher.soup=2"])
    with pytest.raises(UserError, match="teacher.wise_alpha = 0.8: choose one"):
        load_config(None, ["teacher.restarts=2", "teacher.wise_alpha=0.8"])
    with pytest.raises(UserError, match="data.dev_sets.score: that name is taken by the selection score"):
        load_config(None, ["data.dev_sets={score: x.csv}"])
    assert "restarts" not in stable_section(to_dict(load_config(None, [])), "teacher")
    assert stable_section(to_dict(load_config(None, ["teacher.restarts=3"])), "teacher")["restarts"] == 3


def _fingerprint_inputs(overrides):
    cfg = load_config(None, overrides)
    return teacher_stage.plan(cfg, to_dict(cfg), 4)[0].fingerprint_inputs


def test_restarts_fingerprint_the_development_sets_by_content(tmp_path):
    dev = tmp_path / "typed.csv"
    dev.write_text("tweet,label\nthey are lovely,0\nthey are vermin,1\n")
    plain, chosen = [f"data.dev_sets={{typed: {dev}}}"], [f"data.dev_sets={{typed: {dev}}}", "teacher.restarts=2"]
    before = (_fingerprint_inputs(plain), _fingerprint_inputs(chosen))
    dev.write_text("tweet,label\nthey are lovely,0\nthey are pests,1\n")
    # one teacher never reads the development sets while it trains: an edit re-evaluates, it does not retrain
    assert _fingerprint_inputs(plain) == before[0]
    assert not any(isinstance(x, tuple) and x and x[0] == "restart_dev_sets" for x in before[0])
    # restarts choose on them: an edited set may choose another teacher
    assert _fingerprint_inputs(chosen) != before[1]


def _env(tmp_path, name, tokenizer, data, overrides):
    return teacher_env(tmp_path, name, tokenizer, data, overrides, dev_sets={"typed": DEV_SET})


def test_the_kept_restart_is_the_member_with_the_highest_selection_score(tmp_path, minilm_tokenizer,
                                                                         tiny_teacher_dir, small_data):
    def train(name, overrides):
        env = _env(tmp_path, name, minilm_tokenizer, small_data, overrides)
        return env, *teacher_stage.train(env, str(tiny_teacher_dir), "fp-" + name)

    learn = ["teacher.train.learning_rate=2e-3", "teacher.train.epochs=3"]  # so the tiny members differ
    _, one, one_stats = train("one", learn)
    env, kept, stats = train("restarts", [*learn, "teacher.restarts=3"])
    rows = stats["restarts"]
    assert [r["seed"] for r in rows] == [42, 1042, 2042]
    assert [r["log_key"] for r in rows] == ["teacher", "teacher.member2", "teacher.member3"]
    assert rows[0]["validation"] == one_stats["validation"]  # member 1 is the one-teacher run
    scores = [r["selection"]["score"] for r in rows]
    assert len(set(scores)) > 1  # the members differ, so the choice below is a real one
    best = int(np.argmax(scores))
    assert [r["kept"] for r in rows] == [i == best for i in range(3)]
    assert stats["log_key"] == rows[best]["log_key"]
    # the kept model is the one that scored so, scored again from scratch on validation and the dev set
    again = teacher_stage.selection(env, kept)
    assert set(again) == {"validation", "typed", "score"}
    assert again == pytest.approx(rows[best]["selection"])
    assert stats["seconds"] == pytest.approx(sum(r["seconds"] for r in rows), abs=0.01)
    assert stats["steps"] == sum(r["steps"] for r in rows)


def test_the_returned_teacher_is_the_best_scored_member_and_the_others_are_freed(tmp_path, minilm_tokenizer,
                                                                                  tiny_teacher_dir, small_data,
                                                                                  monkeypatch):
    """Scores scripted with the best in the middle: a stage that returned the last member trained, or the
    first, would fail; no member that is not the best so far outlives the loading of the next one."""
    import gc
    import weakref

    from distillora.stages.base import StageEnv as Env

    scores, members, refs, alive_at_load = iter([0.5, 0.9, 0.7]), [], [], []
    monkeypatch.setattr(teacher_stage, "selection", lambda env, model: {"validation": (s := next(scores)), "score": s})
    real_fit = Env.fit

    def fit(self, model, *a, **k):
        gc.collect()
        alive_at_load.append(sum(r() is not None for r in refs))  # members still held as this one starts
        model, stats = real_fit(self, model, *a, **k)
        members.append({n: w.detach().clone() for n, w in model.named_parameters()})
        refs.append(weakref.ref(model))
        return model, stats

    monkeypatch.setattr(Env, "fit", fit)
    env = _env(tmp_path, "scripted", minilm_tokenizer, small_data,
               ["teacher.restarts=3", "teacher.train.learning_rate=2e-3"])
    kept, stats = teacher_stage.train(env, str(tiny_teacher_dir), "fp-scripted")
    assert [r["kept"] for r in stats["restarts"]] == [False, True, False]
    assert stats["log_key"] == "teacher.member2"
    assert not all(torch.equal(members[0][n], members[1][n]) for n in members[0])  # the members differ
    for name, w in kept.named_parameters():
        assert torch.equal(w, members[1][name]), name
    # member 2 loads beside member 1 (the best so far); member 3 beside member 2 only (member 1 freed)
    assert alive_at_load == [0, 1, 1]


def test_restarts_killed_between_members_resume_to_the_same_teacher(tmp_path, minilm_tokenizer, tiny_teacher_dir,
                                                                    small_data, monkeypatch):
    def train(name):
        return teacher_stage.train(_env(tmp_path, name, minilm_tokenizer, small_data,
                                        ["teacher.restarts=2", "teacher.train.learning_rate=2e-3"]),
                                   str(tiny_teacher_dir), "fp")

    whole, whole_stats = train("whole")
    interrupt_in_member_2(monkeypatch, lambda: train("killed"))
    resumed, stats = train("killed")
    rows = stats["restarts"]
    assert rows[0]["resumed_from"] is not None and rows[1]["resumed_from"] is None
    assert [r["kept"] for r in rows] == [r["kept"] for r in whole_stats["restarts"]]
    assert [r["selection"] for r in rows] == [r["selection"] for r in whole_stats["restarts"]]
    for (name, w), (_, r) in zip(whole.named_parameters(), resumed.named_parameters()):
        assert torch.equal(w, r), name


def test_a_tie_keeps_the_earlier_restart(tmp_path, minilm_tokenizer, tiny_teacher_dir, small_data, monkeypatch):
    monkeypatch.setattr(teacher_stage, "selection", lambda env, model: {"validation": 0.5, "score": 0.5})
    env = _env(tmp_path, "tie", minilm_tokenizer, small_data, ["teacher.restarts=2"])
    _, stats = teacher_stage.train(env, str(tiny_teacher_dir), "fp-tie")
    assert [r["kept"] for r in stats["restarts"]] == [True, False] and stats["log_key"] == "teacher"


def test_a_study_with_restarts_records_them_reports_the_choice_and_cleans_checkpoints(tmp_path, tiny_teacher_dir,
                                                                                       small_data):
    from distillora.fileio import read_json
    from distillora.rundir import RunDir
    from distillora.study import run_study

    cfg = load_config(None, [
        f"data.source={small_data}", "data.validation_fraction=0.25", "data.max_length=32",
        f"data.dev_sets={{typed: {DEV_SET}}}",
        f"teacher.source={tiny_teacher_dir}", "teacher.restarts=2", "teacher.train.epochs=1",
        "teacher.train.precision=fp32", "distill.train.epochs=1",
        "lora.train.epochs=1", "baseline.train.epochs=1", "lora.r=4", "lora.alpha=8", "check.suites=[]",
        "distill.students={odd: [1, 3]}"])
    out = run_study(cfg, tmp_path / "run", quiet=True)
    rec = read_json(RunDir(out).marker("teacher"))
    rows = rec["train"]["restarts"]
    assert [m["seed"] for m in rows] == [42, 1042] and sum(m["kept"] for m in rows) == 1
    assert not RunDir(out).checkpoints_dir.exists()
    results = RunDir(out).results()
    teacher = results.by_name()["teacher"]
    assert teacher.objective.endswith("the best of 2 such teachers on the selection score")
    assert teacher.train["restarts"] == rows and teacher.train["log_key"] == rec["train"]["log_key"]
    kept = [m for m in rows if m["kept"]][0]
    # the kept member's selection figures are those the study's evaluation computes for the teacher
    assert kept["selection"]["typed"] == pytest.approx(teacher.dev_sets["typed"]["f1_macro"])
    assert kept["selection"]["validation"] == pytest.approx(teacher.validation["f1_macro"])
    report = (out / "report.md").read_text()
    assert f"each scored on validation and typed" in report
    assert f"the one with training seed {kept['seed']} was kept" in report
    assert (RunDir(out).log(kept["log_key"])).is_file()


def test_the_loss_plot_reads_the_kept_restarts_log(tmp_path, monkeypatch):
    """The report's loss curve of a teacher chosen among restarts is the kept member's, under its own key."""
    from distillora import report
    from distillora.fileio import write_text
    from distillora.rundir import RunDir

    run = RunDir(tmp_path)
    run.log("teacher").parent.mkdir(parents=True, exist_ok=True)
    write_text(run.log("teacher"), '{"epoch": 1, "loss": 9.0}\n')
    write_text(run.log("teacher.member2"), '{"epoch": 1, "loss": 0.25}\n')
    plotted = []
    monkeypatch.setattr(report.plt.Axes, "plot", lambda self, x, y, **k: plotted.append((k.get("label"), list(y))))
    monkeypatch.setattr(report, "save_figure", lambda fig, out, name: name)

    class Stop(Exception):
        pass

    real_subplots = report.plt.subplots
    calls = []

    def subplots(*a, **k):  # the loss plot is the first figure; stop after it
        if calls:
            raise Stop
        calls.append(1)
        return real_subplots(*a, **k)

    monkeypatch.setattr(report.plt, "subplots", subplots)
    results = {"models": [{"name": "teacher", "train": {"log_key": "teacher.member2"}}],
               "dataset": {"label_names": ["not_hate", "hate"]}}
    with pytest.raises(Stop):
        report._plots(tmp_path, results)
    assert plotted == [("teacher", [0.25])]


def test_the_transfer_bench_compares_the_chosen_member_with_the_subset_mean_on_the_held_out_signal():
    bench = load_bench("restart_transfer")
    row = lambda v, d, f: {"validation": {"f1_macro": v}, "dev": {"f1_macro": d}, "functional": {"f1_macro": f}}
    a, b = row(0.9, 0.9, 0.7), row(0.8, 0.8, 0.9)
    # held out functional: a is chosen (0.9 > 0.8), 0.7 against the mean 0.8: -10 points; held out
    # validation: chosen on dev and functional, a 0.8 against b 0.85, b: 0.8 against 0.85, -5; held out
    # dev: a 0.8 against b 0.85, b: 0.8 against 0.85, -5
    assert bench.transfer([a, b], 2, "f1_macro") == pytest.approx([-5.0, -5.0, -10.0])
    # grouping: one row per training seed of one recipe; soups, other variants and other configs apart
    rec = lambda name, seed=None, **k: {"name": name, "config": "seed.yaml", "overrides": [], "train_seed": seed,
                                        "wise_alpha": 1.0, **a, **k}
    rows = [rec("s42"), rec("s42-again", 42), rec("s43", 43), rec("wise", wise_alpha=0.8), rec("soup", soup="uniform"),
            {**rec("q", 43), "config": "quick.yaml"}]
    groups = bench.groups_of(rows, False, lambda config: 42)
    assert sorted([r["name"] for r in g] for g in groups.values()) == [["q"], ["s42", "s43"], ["wise"]]
