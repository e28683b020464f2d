"""Validation and development-set figures of a run's saved models (never the test split): accuracy,
balanced accuracy and each label's recall at the argmax, through the evaluation's own fp32 path
(`evaluate.predict_proba` on the text normalised and tokenised as in training). The development set
is configs/dev/short_sentences.csv (see configs/dev/README.md).

usage: python bench/dev_scores.py RUN_DIR [MODEL ...]"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score  # noqa: E402

from distillora.config import load_config  # noqa: E402
from distillora.data import as_saved, encode, load_splits, load_table  # noqa: E402
from distillora.evaluate import predict_proba  # noqa: E402
from distillora.rundir import RunDir  # noqa: E402
from distillora.stages import load_model  # noqa: E402

DEV = Path(__file__).resolve().parents[1] / "configs" / "dev" / "short_sentences.csv"


def main() -> None:
    run, names = Path(sys.argv[1]), sys.argv[2:]
    cfg = load_config(run / "config.yaml", [])
    data = as_saved(cfg.data, RunDir(run).model_dir("teacher"))  # the texts as the run's models saw them
    tables = {"validation": load_splits(data, cfg.seed).validation, "dev": load_table(DEV, data)}
    from transformers import AutoTokenizer

    for d in sorted((run / "models").iterdir()):
        if (names and d.name not in names) or not (d / "config.json").exists():
            continue
        model, tok = load_model(d).eval(), AutoTokenizer.from_pretrained(str(d))
        row = {"model": d.name}
        for split, table in tables.items():
            pred = predict_proba(model, encode(table, tok, cfg.data.max_length), tok)[0].argmax(1)
            y = np.asarray(table.labels)
            row[split] = {"accuracy": round(float(accuracy_score(y, pred)), 4),
                          "balanced_accuracy": round(float(balanced_accuracy_score(y, pred)), 4),
                          "recall": {n: round(float(r), 4) for n, r in zip(
                              cfg.data.label_names, recall_score(y, pred, average=None,
                                                                 labels=range(len(cfg.data.label_names))))}}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
