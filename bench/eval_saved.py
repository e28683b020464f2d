"""Test accuracy, with the study's own 95% bootstrap interval (`stats.bootstrap_ci`, the run's
`bootstrap_resamples` and seed), of the models saved so far in a run, finished or not, each read once,
through the project's fp32 inference backend (the saved normaliser included). Used to compare an
fp32-trained seed teacher with the bf16-trained one when the fp32 run could not finish
(docs/performance.md).

usage: python bench/eval_saved.py RUN_DIR [MODEL ...]"""
import json
import sys
from pathlib import Path

import numpy as np

from distillora import stats
from distillora.config import load_config
from distillora.data import as_saved, load_splits
from distillora.inference import load
from distillora.rundir import RunDir

run = Path(sys.argv[1])
names = sys.argv[2:]
cfg = load_config(run / "config.yaml")
test = load_splits(as_saved(cfg.data, RunDir(run).model_dir("teacher")), cfg.seed).test
for d in sorted((run / "models").iterdir()):
    if (names and d.name not in names) or not (d / "config.json").exists():
        continue
    pred = np.asarray(load(d, "fp32").probabilities(list(test.texts), cfg.data.max_length)).argmax(1)
    lo, hi = stats.bootstrap_ci(test.labels, pred, "accuracy", cfg.bootstrap_resamples, seed=cfg.seed)
    print(json.dumps({"model": d.name, "test_accuracy": round(float((pred == test.labels).mean()), 4),
                      "ci95": [round(lo, 4), round(hi, 4)]}))
