"""SIGKILL in the middle of a stage, then the same command again: the run finishes, finished stages
are reused, the interrupted stage resumes from its last checkpoint, and the results equal those of an
uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

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
