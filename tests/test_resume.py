"""SIGKILL in the middle of a stage, then the same command again: the run finishes, finished stages
are reused, the interrupted stage resumes from its last checkpoint, and the results equal those of an
uninterrupted run.

The kill-moment tests (issue 11) kill a real `distillora` process at a precise moment: a small driver
(`KILLER`) wraps one function so that its n-th call sends SIGKILL to its own process before doing
anything, then runs the CLI. What is on disk afterwards is exactly what a kill at that moment leaves."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from conftest import REPO


def _config(tmp_path, teacher, data):
    train = {"epochs": 3, "batch_size": 8, "logging_steps": 2}
    cfg = {"name": "resume", "data": {"source": str(data), "validation_fraction": 0.25, "max_length": 32},
           "teacher": {"source": str(teacher), "train": train}, "distill": {"train": train},
           "lora": {"r": 4, "alpha": 8, "train": train}, "baseline": {"train": train}}
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


def _cmd(cfg, out):
    return [sys.executable, "-m", "distillora", "run", "--config", str(cfg), "--output", str(out), "--quiet"]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def test_kill_mid_stage_and_resume(tmp_path, tiny_teacher_dir, small_data):
    cfg = _config(tmp_path, tiny_teacher_dir, small_data)
    ref, out = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_cmd(cfg, ref), cwd=REPO, env=ENV, check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(_cmd(cfg, out), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoints" / "odd"
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpt.is_dir() and any(ckpt.glob("checkpoint-*/trainer_state.json"))):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "stages" / "teacher.json").exists() and not (out / "stages" / "odd.json").exists()
    assert not (out / "results.json").exists()  # a killed run never looks finished
    teacher_mtime = (out / "models" / "teacher" / "model.safetensors").stat().st_mtime_ns

    again = subprocess.run(_cmd(cfg, out), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "stage teacher: finished earlier, skipped" in again.stderr
    assert (out / "models" / "teacher" / "model.safetensors").stat().st_mtime_ns == teacher_mtime
    odd = json.loads((out / "stages" / "odd.json").read_text())
    assert odd["train"]["resumed_from"] and odd["train"]["resumed_from"].startswith("checkpoint-")

    a = {m["name"]: m for m in json.loads((ref / "results.json").read_text())["models"]}
    b = {m["name"]: m for m in json.loads((out / "results.json").read_text())["models"]}
    assert a.keys() == b.keys()
    for name in a:
        assert a[name]["train"]["steps"] == b[name]["train"]["steps"]
        # the Trainer restores model, optimiser, scheduler and RNG states: same numbers up to float noise
        assert abs(a[name]["test"]["loss"] - b[name]["test"]["loss"]) < 1e-4, name
        assert a[name]["test"]["confusion"] == b[name]["test"]["confusion"], name
        assert abs(a[name]["validation"]["f1_macro"] - b[name]["validation"]["f1_macro"]) < 1e-9, name
    rows = [json.loads(x) for x in (out / "logs" / "odd.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "learning_rate" in r]  # training log lines
    assert steps == sorted(set(steps))  # resumed steps are not logged twice


KILLER = """
import importlib, os, signal, sys
spec, nth, match = sys.argv[1], int(sys.argv[2]), sys.argv[3]
module, _, qual = spec.partition(":")
owner = importlib.import_module(module)
*path, name = qual.split(".")
for p in path:
    owner = getattr(owner, p)
original, calls = getattr(owner, name), [0]
def wrapper(*a, **k):
    if match in " ".join(map(str, a)):
        calls[0] += 1
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return original(*a, **k)
setattr(owner, name, wrapper)
from distillora.cli import main
sys.exit(main(sys.argv[4:]))
"""


def _killed(spec: str, nth: int, args: list[str], match: str = "") -> None:
    """Run `distillora ARGS`, SIGKILLed at the `nth` call of `spec` ("module:Qual.name") whose
    arguments contain `match`; fail unless it was killed there."""
    proc = subprocess.run([sys.executable, "-c", KILLER, spec, str(nth), match, *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


def _small_config(root, teacher):
    """Two epochs, a teacher and one distilled student: every kill moment below is in these."""
    data = root / "data"
    if not data.is_dir():
        from conftest import SHARED_DATA

        data.mkdir(parents=True)
        train = pd.read_csv(SHARED_DATA / "train.csv", keep_default_na=False)
        test = pd.read_csv(SHARED_DATA / "test.csv", keep_default_na=False)
        pd.concat([train[train.label == 0].head(42), train[train.label == 1].head(18)]).to_csv(data / "train.csv", index=False)
        pd.concat([test[test.label == 0].head(15), test[test.label == 1].head(15)]).to_csv(data / "test.csv", index=False)
    train = {"epochs": 2, "batch_size": 8, "logging_steps": 2}
    cfg = {"name": "kill", "bootstrap_resamples": 100,
           "data": {"source": str(data), "validation_fraction": 0.25, "max_length": 32},
           "teacher": {"source": str(teacher), "train": train},
           "distill": {"students": {"odd": "odd"}, "train": train},
           "lora": {"enabled": False}, "baseline": {"enabled": False}}
    p = root / "kill.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_teacher_dir):
    """An uninterrupted run of the small config: (config path, run directory)."""
    root = tmp_path_factory.mktemp("kill-reference")
    cfg = _small_config(root, tiny_teacher_dir)
    subprocess.run(_cmd(cfg, root / "run"), cwd=REPO, env=ENV, check=True, capture_output=True, timeout=600)
    return cfg, root / "run"


def _rerun_equals_reference(cfg, out, ref):
    again = subprocess.run(_cmd(cfg, out), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    a = {m["name"]: m for m in json.loads((ref / "results.json").read_text())["models"]}
    b = {m["name"]: m for m in json.loads((out / "results.json").read_text())["models"]}
    assert a.keys() == b.keys() == {"teacher", "odd"}
    for name in a:
        ta, tb = a[name]["train"], b[name]["train"]
        assert ta["steps"] == tb["steps"], name
        assert tb["loss"] is not None and abs(ta["loss"] - tb["loss"]) < 1e-4, (name, ta, tb)
        assert len(ta["epoch_losses"]) == len(tb["epoch_losses"]) == 2, (name, ta, tb)
        assert max(abs(x - y) for x, y in zip(ta["epoch_losses"], tb["epoch_losses"])) < 1e-4, name
        assert abs(a[name]["test"]["loss"] - b[name]["test"]["loss"]) < 1e-4, name
        assert a[name]["test"]["confusion"] == b[name]["test"]["confusion"], name
    assert not list(out.rglob(".*.tmp")) and not list(out.rglob(".*.old"))  # nothing half-written is left
    return again.stderr


def test_kill_during_checkpoint_write(tmp_path, reference):
    """Killed inside the Trainer's write of the teacher's second checkpoint, after its weights and
    before its optimiser, scheduler, RNG and trainer state (issue 11 A): the rerun drops that
    checkpoint, resumes from the first one and ends with the uninterrupted run's numbers."""
    cfg, ref = reference
    out = tmp_path / "run"
    _killed("transformers.trainer:Trainer._save_optimizer_and_scheduler", 2, _cmd(cfg, out)[3:])
    ckpts = sorted((out / "checkpoints" / "teacher").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(ckpts) == 2 and (ckpts[-1] / "config.json").exists() and not (ckpts[-1] / "optimizer.pt").exists()
    err = _rerun_equals_reference(cfg, out, ref)
    assert f"{ckpts[-1]}: incomplete" in err
    teacher = json.loads((out / "stages" / "teacher.json").read_text())["train"]
    assert teacher["resumed_from"] == ckpts[0].name


def test_kill_after_last_checkpoint(tmp_path, reference):
    """Killed after the teacher's last checkpoint was written, before the best epoch was loaded and the
    model saved (issue 11 F): the rerun resumes with nothing left to train and still reports every
    epoch's loss, from the checkpoint's trainer state."""
    cfg, ref = reference
    out = tmp_path / "run"
    _killed("transformers.trainer:Trainer._load_best_model", 1, _cmd(cfg, out)[3:])
    assert not (out / "stages" / "teacher.json").exists()
    _rerun_equals_reference(cfg, out, ref)
    teacher = json.loads((out / "stages" / "teacher.json").read_text())["train"]
    assert teacher["resumed_from"] is not None


def test_kill_during_model_directory_save(tmp_path, reference):
    """Killed while the teacher's model directory is written (weights and tokenizer are in its
    temporary directory, not yet renamed into place; issue 11 E): the rerun removes the temporary
    directory and finishes equal to the uninterrupted run."""
    cfg, ref = reference
    out = tmp_path / "run"
    _killed("distillora.integrity:record", 1, _cmd(cfg, out)[3:])
    (tmp,) = (out / "models").glob(".teacher.*.tmp")
    assert (tmp / "model.safetensors").exists() and not (out / "models" / "teacher").exists()
    err = _rerun_equals_reference(cfg, out, ref)
    assert f"removed {tmp}" in err and not tmp.exists()


def test_kill_during_export(tmp_path, reference):
    """Killed while `distillora export` renames exports.json into place: no exports.json (the run
    still serves fp32), the temporary file is removed by the next export, whose accuracies equal those
    of an export that was never interrupted."""
    import shutil

    from distillora.export import served_method

    cfg, ref = reference
    out = tmp_path / "run"
    shutil.copytree(ref, out)
    export = ["-m", "distillora", "export", "--methods", "int8-dynamic", "bf16", "onnx-fp32", "--run"]  # one onnx
    # copy is enough here (the int8 ones take more time, not other files)
    subprocess.run([sys.executable, *export, str(ref)], cwd=REPO, env=ENV, check=True, capture_output=True, timeout=600)
    _killed("os:replace", 1, [*export[2:], str(out)], match="exports.json")
    assert not (out / "exports.json").exists() and list(out.glob(".exports.json.*.tmp"))
    assert served_method(out, "odd") == "fp32"
    again = subprocess.run([sys.executable, *export, str(out)], cwd=REPO, env=ENV, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert not list(out.glob(".exports.json.*.tmp"))
    a = json.loads((ref / "exports.json").read_text())["models"]
    b = json.loads((out / "exports.json").read_text())["models"]
    assert a.keys() == b.keys()
    for name in a:
        assert a[name]["fp32_accuracy"] == b[name]["fp32_accuracy"]
        for method, c in a[name]["candidates"].items():
            assert c.get("validation") == b[name]["candidates"][method].get("validation"), (name, method)
            assert c.get("test") == b[name]["candidates"][method].get("test"), (name, method)
