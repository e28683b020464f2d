"""`accelerate launch` with 2 CPU processes (gloo) runs the study data-parallel and matches the
single-process result, dense (teacher, LoRA) and sparse (distilled, baseline) word-embedding updates alike."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml
from transformers import BertConfig, BertForSequenceClassification

from distillora.rundir import RunDir, probability_columns

from conftest import REPO, TINY

ACCELERATE = Path(sys.executable).with_name("accelerate")


def _study(tmp_path, minilm_tokenizer, shared_data) -> Path:
    # no dropout anywhere, so the two runs differ only by floating-point reduction order
    teacher = BertForSequenceClassification(BertConfig(vocab_size=minilm_tokenizer.vocab_size, num_hidden_layers=4,
                                                       num_labels=2, hidden_dropout_prob=0.0,
                                                       attention_probs_dropout_prob=0.0, **TINY))
    teacher.save_pretrained(tmp_path / "teacher")
    minilm_tokenizer.save_pretrained(tmp_path / "teacher")
    tr = pd.read_csv(shared_data / "train.csv", keep_default_na=False)
    te = pd.read_csv(shared_data / "test.csv", keep_default_na=False)
    pd.concat([tr[tr.label == 0].head(112), tr[tr.label == 1].head(48)]).to_csv(tmp_path / "train.csv", index=False)
    pd.concat([te[te.label == 0].head(20), te[te.label == 1].head(20)]).to_csv(tmp_path / "test.csv", index=False)
    # fp32, so the comparison measures the data-parallel split and reduction order, not bf16 rounding
    train = {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3, "precision": "fp32"}
    # the students take sparse word-embedding gradients (`*.train.sparse_word_embeddings`): DDP all-reduces those too
    sparse = {**train, "sparse_word_embeddings": True}
    cfg = {"name": "dist", "data": {"train_file": str(tmp_path / "train.csv"), "test_file": str(tmp_path / "test.csv"),
                                    "validation_fraction": 0.25, "max_length": 32},
           "teacher": {"source": str(tmp_path / "teacher"), "train": train}, "distill": {"train": sparse},
           "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "train": train}, "baseline": {"train": sparse},
           "check": {"suites": []}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _run(cmd, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_process_run_matches_single_process(tmp_path, minilm_tokenizer, shared_data):
    cfg = _study(tmp_path, minilm_tokenizer, shared_data)
    args = ["-m", "distillora", "run", "--config", str(cfg), "--quiet", "--output"]
    _run([sys.executable, *args, str(tmp_path / "single")], REPO)
    ddp = _run([str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", *args, str(tmp_path / "ddp")], REPO)
    assert ddp.stderr.count("stage teacher: fine-tuning") == 2  # both processes trained
    single = json.loads((tmp_path / "single" / "results.json").read_text())
    multi = json.loads((tmp_path / "ddp" / "results.json").read_text())
    for a, b in zip(single["models"], multi["models"]):
        assert a["name"] == b["name"] and a["train"]["steps"] == b["train"]["steps"]
        # the epoch's mean training loss is gathered from both processes' halves of each batch; seen
        # here to differ by up to 0.011 (cause not isolated), while the final models agree far more closely
        assert abs(a["train"]["loss"] - b["train"]["loss"]) < 0.03, a["name"]
        assert abs(a["test"]["loss"] - b["test"]["loss"]) < 1e-3, a["name"]
        assert a["test"]["confusion"] == b["test"]["confusion"], a["name"]
    probs = {}
    for run in ("single", "ddp"):
        probs[run] = probability_columns(json.loads(RunDir(tmp_path / run).marker("even", ".test").read_text()))[:, 1]
    assert max(abs(x - y) for x, y in zip(probs["single"], probs["ddp"])) < 2e-3  # seen: 4e-4
