"""Measure a teacher recipe on validation and on the development set of short sentences, never on
the test split: how the defaults of configs/ were chosen.

    python bench/recipe.py --config configs/seed.yaml --name lr2e-5 teacher.train.learning_rate=2e-5
    python bench/recipe.py --config configs/seed.yaml --name lpft --linear-probe-epochs 1
    python bench/recipe.py --config configs/seed.yaml --name base --wise 1,0.8,0.6   # WiSE-FT alphas

Each call fine-tunes one teacher with the run's own code (same data, carve, tokenisation, Trainer),
then scores it on validation and on configs/dev/short_sentences.csv (WiSE-FT: for every alpha, the
fine-tuned body interpolated with the pretrained one). One JSON line per scored model goes to
`--log` (default bench/results/recipe.jsonl)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from distillora import bundles, normalize  # noqa: E402
from distillora.config import load_config  # noqa: E402
from distillora.data import encode, load_splits, load_table  # noqa: E402
from distillora.inference.timing import cpu_name  # noqa: E402
from distillora.evaluate import predict_proba  # noqa: E402
from distillora.stages import StageEnv  # noqa: E402
from distillora.stages.teacher import load_pretrained, wise_ft  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEV = REPO / "configs" / "dev" / "short_sentences.csv"


def scores(probs: np.ndarray, labels: np.ndarray) -> dict:
    pred = probs.argmax(1)
    return {"accuracy": round(float(accuracy_score(labels, pred)), 4),
            "balanced_accuracy": round(float(balanced_accuracy_score(labels, pred)), 4),
            "f1_macro": round(float(f1_score(labels, pred, average="macro")), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "seed.yaml"))
    ap.add_argument("--name", required=True)
    ap.add_argument("--work", default="/tmp/distillora-recipe")
    ap.add_argument("--log", default=str(REPO / "bench" / "results" / "recipe.jsonl"))
    ap.add_argument("--wise", default="1", help="comma-separated WiSE-FT alphas to score (1 = the fine-tuned model)")
    ap.add_argument("--linear-probe-epochs", type=float, default=0.0, help="LP-FT: train only the head first")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()

    cfg = load_config(a.config, a.overrides)
    splits = load_splits(cfg.data, cfg.seed)
    dev = load_table(DEV, cfg.data)
    source = bundles.resolve(cfg.teacher.source)
    tok = AutoTokenizer.from_pretrained(source)
    enc = {n: encode(getattr(splits, n), tok, cfg.data.max_length) for n in ("train", "validation")}
    enc["dev"] = encode(dev, tok, cfg.data.max_length)
    work = Path(a.work) / a.name
    env = StageEnv(cfg, tok, enc["train"], enc["validation"], work, quiet=True)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = load_pretrained(source, cfg.data.label_names)
    normalize.attach(model.config, normalize.resolve(cfg.data.normalize))
    if a.linear_probe_epochs:
        import dataclasses

        body = [p for n, p in model.named_parameters() if not n.startswith("classifier")]
        for p in body:
            p.requires_grad_(False)
        lp = dataclasses.replace(cfg.teacher.train, epochs=a.linear_probe_epochs, learning_rate=1e-3)
        model, _ = env.fit(model, lp, "lp", "lp-" + a.name)
        for p in body:
            p.requires_grad_(True)
    model, stats = env.fit(model, cfg.teacher.train, "teacher", a.name)
    seconds = time.perf_counter() - t0
    model.save_pretrained(str(work / "model"))  # for bench/lora_recipe.py --teacher
    tok.save_pretrained(str(work / "model"))
    pretrained = load_pretrained(source, cfg.data.label_names)
    Path(a.log).parent.mkdir(parents=True, exist_ok=True)
    for alpha in [float(x) for x in a.wise.split(",")]:
        m = wise_ft(model, pretrained, alpha) if alpha < 1 else model
        row = {"name": a.name, "config": Path(a.config).name, "overrides": a.overrides, "wise_alpha": alpha,
               "linear_probe_epochs": a.linear_probe_epochs, "train_seconds": round(seconds, 1),
               "best_checkpoint": stats["best_checkpoint"], "cpu": cpu_name()}
        for split in ("validation", "dev"):
            probs, _ = predict_proba(m, enc[split], tok)
            labels = (splits.validation if split == "validation" else dev).labels
            row[split] = scores(probs, labels)
        print(json.dumps(row))
        with open(a.log, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
