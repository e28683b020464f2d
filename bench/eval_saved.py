"""Test accuracy (with a 95% bootstrap CI, 1000 resamples) of the models saved so far in a run,
finished or not, each read once, through the project's fp32 inference backend (the saved normaliser
included). Used to compare an fp32-trained seed teacher with the bf16-trained one when the fp32 run
could not finish (docs/performance.md).

usage: python bench/eval_saved.py RUN_DIR [MODEL ...]"""
import json, sys
from pathlib import Path
import numpy as np
from distillora.config import load_config
from distillora.data import load_splits
from distillora.inference import load

run = Path(sys.argv[1])
cfg = load_config(run / "config.yaml")
test = load_splits(cfg.data, cfg.seed).test
labels = np.asarray(test.labels)
rng = np.random.default_rng(0)
idx = rng.integers(0, len(labels), (1000, len(labels)))
names = sys.argv[2:]
for d in sorted((run / "models").iterdir()):
    if names and d.name not in names:
        continue
    if not (d / "config.json").exists():
        continue
    b = load(d, "fp32")
    p = np.asarray(b.probabilities(list(test.texts), cfg.data.max_length))
    right = (p.argmax(1) == labels)
    ci = np.percentile(right[idx].mean(1), [2.5, 97.5])
    print(json.dumps({"model": d.name, "test_accuracy": round(float(right.mean()), 4),
                      "ci95": [round(float(ci[0]), 4), round(float(ci[1]), 4)]}))
