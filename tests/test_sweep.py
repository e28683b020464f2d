"""`distillora sweep`: the strategies' layer lists, de-duplication, the Pareto front, bad input, a sweep
on a tiny run (resumed after SIGKILL, stopped by its budget, served), and its 2-process split."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from distillora.cli import main
from distillora.sweep import STRATEGIES, pareto, plan, parse_layer_lists, smallest_within, strategy_layers

# Worked by hand from each strategy's docstring.
EXPECTED = {
    12: {
        "odd": {2: [1, 7], 3: [1, 5, 9], 4: [1, 3, 7, 9], 6: [1, 3, 5, 7, 9, 11]},
        "even": {2: [6, 12], 3: [4, 8, 12], 4: [4, 6, 10, 12], 6: [2, 4, 6, 8, 10, 12]},
        "bottom": {2: [1, 2], 3: [1, 2, 3], 4: [1, 2, 3, 4], 6: [1, 2, 3, 4, 5, 6]},
        "top": {2: [11, 12], 3: [10, 11, 12], 4: [9, 10, 11, 12], 6: [7, 8, 9, 10, 11, 12]},
        "spread": {2: [6, 12], 3: [4, 8, 12], 4: [3, 6, 9, 12], 6: [2, 4, 6, 8, 10, 12]},
        # DistilBERT's own 12 -> 6 choice, [0, 2, 4, 7, 9, 11] 0-based
        "distilbert": {2: [1, 12], 3: [1, 4, 12], 4: [1, 4, 9, 12], 6: [1, 3, 5, 8, 10, 12]},
    },
    6: {
        "odd": {2: [1, 3], 3: [1, 3, 5], 4: [1, 2, 3, 5], 6: [1, 2, 3, 4, 5, 6]},
        "even": {2: [4, 6], 3: [2, 4, 6], 4: [2, 4, 5, 6], 6: [1, 2, 3, 4, 5, 6]},
        "bottom": {2: [1, 2], 3: [1, 2, 3], 4: [1, 2, 3, 4], 6: [1, 2, 3, 4, 5, 6]},
        "top": {2: [5, 6], 3: [4, 5, 6], 4: [3, 4, 5, 6], 6: [1, 2, 3, 4, 5, 6]},
        "spread": {2: [3, 6], 3: [2, 4, 6], 4: [2, 3, 5, 6], 6: [1, 2, 3, 4, 5, 6]},
        "distilbert": {2: [1, 6], 3: [1, 2, 6], 4: [1, 2, 5, 6], 6: [1, 2, 3, 4, 5, 6]},
    },
}


@pytest.mark.parametrize("teacher_depth", [12, 6])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_layer_lists(teacher_depth, strategy):
    for d, layers in EXPECTED[teacher_depth][strategy].items():
        assert strategy_layers(strategy, teacher_depth, d) == layers, (strategy, teacher_depth, d)


def test_every_strategy_is_defined_for_every_depth():
    for t in range(1, 13):
        for d in range(1, t + 1):
            for s in STRATEGIES:
                layers = strategy_layers(s, t, d)
                assert len(layers) == d and len(set(layers)) == d and layers == sorted(layers)
                assert 1 <= layers[0] and layers[-1] <= t
    assert strategy_layers("odd", 12, 12) == strategy_layers("top", 12, 12) == list(range(1, 13))


def test_strategy_errors():
    with pytest.raises(ValueError, match="unknown strategy 'middle'"):
        strategy_layers("middle", 12, 3)
    with pytest.raises(ValueError, match="outside 1..6"):
        strategy_layers("odd", 6, 7)


def test_identical_layer_lists_are_one_candidate():
    cands = plan(12, [6, 3], ["even", "spread", "odd"], [[1, 3, 5, 7, 9, 11], [2, 5]])
    names = {c.name: c.strategies for c in cands}
    # 12 -> 6: even == spread == [2, 4, ..., 12]; 12 -> 3: even == spread == [4, 8, 12]; custom == odd
    assert names == {"sweep-2-5": ["custom"], "sweep-4-8-12": ["even", "spread"], "sweep-1-5-9": ["odd"],
                     "sweep-2-4-6-8-10-12": ["even", "spread"], "sweep-1-3-5-7-9-11": ["odd", "custom"]}
    assert [len(c.layers) for c in cands] == [2, 3, 3, 6, 6]  # shallowest first
    assert len({tuple(c.layers) for c in plan(12, [2, 3, 4, 6], STRATEGIES)}) == len(plan(12, [2, 3, 4, 6], STRATEGIES))


def test_parse_layer_lists():
    assert parse_layer_lists("1,2,3; 4,8,12", 12) == [[1, 2, 3], [4, 8, 12]]
    for bad, msg in (("1,2,x", "not a comma-separated"), ("1,13", "out of range"), ("2,2", "more than once"),
                     (";", "no layer list")):
        with pytest.raises(ValueError, match=msg):
            parse_layer_lists(bad, 12)


def test_pareto_on_hand_made_points():
    # (cost, value): lower cost and higher value are better
    pts = [(1.0, 0.70), (2.0, 0.80), (2.0, 0.75), (3.0, 0.80), (4.0, 0.90), (0.5, 0.60), (5.0, 0.85), (4.0, 0.90)]
    # (2, .75) loses to (2, .80); (3, .80) to (2, .80); (5, .85) to (4, .90); the two (4, .90) tie and both stay
    assert pareto(pts) == [0, 1, 4, 5, 7]
    assert pareto([]) == [] and pareto([(1.0, 0.5)]) == [0]


def test_smallest_within_one_point():
    s = [{"name": n, "params_total": p, "validation": {"accuracy": a}, "latency": {"fp32_b1_p50_ms": ms}}
         for n, p, a, ms in (("a", 10, 0.80, 1.0), ("b", 20, 0.895, 2.0), ("c", 20, 0.90, 1.5), ("d", 30, 0.95, 3.0))]
    assert smallest_within(s, 0.90)["name"] == "c"  # b and c are as small; c is faster
    assert smallest_within(s, 0.96)["name"] == "d"
    assert smallest_within(s, 0.99) is None


# ----------------------------------------------------------------------------- on a tiny run

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture()
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the finished tiny run (4-layer teacher), which the sweep may write into."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


def _sweep(run, *args, **kw):
    return subprocess.run([sys.executable, "-m", "distillora", "sweep", "--run", str(run), "--quiet",
                           "--timing-rounds", "1", *args],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600, **kw)


def test_bad_input_is_a_message_and_exit_2(tiny_run, tmp_path, capsys):
    unfinished = tmp_path / "half"
    unfinished.mkdir()
    cases = [
        ([str(tmp_path / "nope")], "no such directory"),
        ([str(unfinished)], "not a finished run"),
        ([str(tiny_run), "--strategies", "odd,middle"], "unknown 'middle'"),
        ([str(tiny_run), "--depths", "2,5"], "5 is outside 1..4"),
        ([str(tiny_run), "--depths", "two"], "'two' is not a whole number"),
        ([str(tiny_run), "--layers", "1,2;3,x"], "not a comma-separated list"),
        ([str(tiny_run), "--layers", "1,7"], "out of range"),
        ([str(tiny_run), "--max-minutes", "0"], "positive number of minutes"),
        ([str(tiny_run), "--timing-rounds", "0"], "give at least 1"),
    ]
    for args, msg in cases:
        assert main(["sweep", "--run", *args]) == 2, args
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err, (args, err)
    assert not (tiny_run / "sweep.json").exists()


def test_a_teacher_trained_under_settings_read_differently_today_is_refused(run_copy, capsys):
    """E.g. a run made before a normaliser preset gained a step: its stored teacher fingerprint is not
    the one today's code computes from its config.yaml, and sweeping it would mix two normalisations."""
    marker = run_copy / "stages" / "teacher.json"
    rec = json.loads(marker.read_text())
    marker.write_text(json.dumps({**rec, "fingerprint": "0" * 16}))
    assert main(["sweep", "--run", str(run_copy), "--depths", "1"]) == 2
    err = capsys.readouterr().err
    assert "re-run `distillora run --output" in err and "Traceback" not in err
    assert not (run_copy / "sweep.json").exists()


def test_sweep_budget_serving_and_report(run_copy):
    from distillora.predict import load_model, model_entries
    from distillora.sweep import run_sweep

    rec = run_sweep(run_copy, depths="1,2", strategies="bottom,top,spread", layers="2,4", quiet=True,
                    timing_rounds=1)
    # bottom/top/spread on 4 layers: [1], [4], [1,2], [3,4], [2,4]; spread 1 == top 1, spread 2 == custom [2,4]
    assert [(s["name"], s["strategies"]) for s in rec["students"]] == [
        ("sweep-1", ["bottom"]), ("sweep-4", ["top", "spread"]), ("sweep-1-2", ["bottom"]),
        ("sweep-3-4", ["top"]), ("sweep-2-4", ["spread", "custom"])]
    # [2, 4] is the study's `even` student, distilled from the same teacher with the same recipe: copied
    assert json.loads((run_copy / "stages" / "sweep-2-4.json").read_text())["reused_from"] == "even"
    assert ((run_copy / "models" / "sweep-2-4" / "model.safetensors").read_bytes()
            == (run_copy / "models" / "even" / "model.safetensors").read_bytes())
    on_disk = json.loads((run_copy / "sweep.json").read_text())
    assert on_disk["smallest_within_1_point"] == rec["smallest_within_1_point"]
    for s in on_disk["students"]:
        assert (run_copy / s["path"] / "model.safetensors").is_file()
        assert s["num_layers"] == len(s["teacher_layers"])
        for split in ("validation", "test"):
            lo, hi = s[split]["ci95"]["balanced_accuracy"]
            assert lo <= s[split]["balanced_accuracy"] <= hi
        assert s["latency"]["served_as"] == "fp32" and s["latency"]["fp32_b1_p50_ms"] > 0
    studs = on_disk["students"]
    for axis, cost in (("params", lambda s: s["params_total"]), ("latency", lambda s: s["latency"]["fp32_b1_p50_ms"])):
        front = pareto([(cost(s), s["validation"]["accuracy"]) for s in studs])  # on validation, never test
        assert front and [s["pareto"][axis] for s in studs] == [i in front for i in range(len(studs))]
    assert (run_copy / "sweep" / "teacher_outputs.pt").is_file()
    report = (run_copy / "report.md").read_text()
    assert "## Layer sweep" in report and "plots/sweep.png" in report and (run_copy / "plots" / "sweep.png").is_file()
    assert "Layer sweep: which layers" in (run_copy / "report.html").read_text()

    # served like the study's models
    assert [m["name"] for m in model_entries(run_copy)][-5:] == [s["name"] for s in rec["students"]]
    name, backend = load_model(run_copy, "sweep-3-4")
    model = backend.model
    assert name == "sweep-3-4" and model.config.num_hidden_layers == 2
    assert model.config.distillora_teacher_layers == [3, 4]
    from distillora.serve import create_app

    client = create_app(run_copy).test_client()
    listed = {m["name"]: m for m in client.get("/api/models").get_json()["models"]}
    assert listed["sweep-1"]["kind"] == "sweep" and listed["teacher"]["kind"] == "teacher"
    got = client.post("/api/predict", json={"text": "hello there", "models": ["sweep-2-4"]}).get_json()
    assert got["predictions"][0]["results"][0]["model"] == "sweep-2-4"
    assert "sweep-1-2" in client.get("/").get_data(as_text=True)

    # a finished sweep is not trained again; a budget already spent starts no new student
    stamp = (run_copy / "stages" / "sweep-1.json").read_text()
    again = run_sweep(run_copy, depths="1,2", strategies="bottom,top", layers="1,2,3", max_minutes=1e-9, quiet=True,
                      timing_rounds=1)
    assert (run_copy / "stages" / "sweep-1.json").read_text() == stamp
    assert [s["name"] for s in again["students"]] == ["sweep-1", "sweep-4", "sweep-1-2", "sweep-3-4"]
    assert again["not_trained"] == [{"name": "sweep-1-2-3", "teacher_layers": [1, 2, 3], "strategies": ["custom"],
                                     "reason": "not started: --max-minutes reached"}]
    assert not (run_copy / "models" / "sweep-1-2-3").exists()
    assert "not started: --max-minutes reached" in (run_copy / "report.md").read_text()


def test_kill_mid_student_and_resume(run_copy):
    cfg_file = run_copy / "config.yaml"
    cfg = yaml.safe_load(cfg_file.read_text())
    cfg["distill"]["train"].update({"epochs": 3, "batch_size": 8})  # several checkpoints per student
    cfg_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    args = ["--depths", "1,2", "--strategies", "bottom,top"]
    proc = subprocess.Popen([sys.executable, "-m", "distillora", "sweep", "--run", str(run_copy), "--quiet",
                             "--timing-rounds", "1", *args],
                            cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    interrupted, deadline = None, time.time() + 400
    while interrupted is None and time.time() < deadline and proc.poll() is None:
        if (run_copy / "stages" / "sweep-1.json").exists():
            for ckpt in (run_copy / "checkpoints").glob("sweep-*/checkpoint-*/trainer_state.json"):
                name = ckpt.parent.parent.name
                if not (run_copy / "stages" / f"{name}.json").exists():
                    interrupted = name
                    break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert interrupted, "no student was caught mid-training"
    assert not (run_copy / "stages" / f"{interrupted}.json").exists() and not (run_copy / "sweep.json").exists()
    first = (run_copy / "models" / "sweep-1" / "model.safetensors").stat().st_mtime_ns

    again = _sweep(run_copy, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage sweep-1: finished earlier, skipped" in again.stderr
    assert "teacher outputs read from" in again.stderr  # cached by the killed invocation, not recomputed
    assert (run_copy / "models" / "sweep-1" / "model.safetensors").stat().st_mtime_ns == first
    rec = json.loads((run_copy / "stages" / f"{interrupted}.json").read_text())
    assert rec["train"]["resumed_from"].startswith("checkpoint-")
    done = json.loads((run_copy / "sweep.json").read_text())
    assert [s["name"] for s in done["students"]] == ["sweep-1", "sweep-4", "sweep-1-2", "sweep-3-4"]
    assert done["not_trained"] == []
    assert "sweep-3-4" in again.stdout and "smallest student within 1 point" in again.stdout


def test_two_processes_split_the_students(run_copy):
    accelerate = Path(sys.executable).with_name("accelerate")
    proc = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "distillora", "sweep",
                           "--run", str(run_copy), "--quiet", "--timing-rounds", "1", "--depths", "1,2",
                           "--strategies", "bottom,top"],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = ["sweep-1", "sweep-4", "sweep-1-2", "sweep-3-4"]
    for n in names:  # each student trained once, by one process
        assert proc.stderr.count(f"sweep student {n} (") == 1, n
    shares = [json.loads((run_copy / "sweep" / "processes" / f"{i}.json").read_text())["finished"] for i in (0, 1)]
    assert shares == [["sweep-1", "sweep-1-2"], ["sweep-4", "sweep-3-4"]]  # round-robin by index
    done = json.loads((run_copy / "sweep.json").read_text())
    assert done["processes"] == 2 and [s["name"] for s in done["students"]] == names
    assert proc.stdout.count("written: ") == 1  # only the main process reports and writes
