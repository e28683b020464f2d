"""Validation and development-set figures of saved models (never the test split): accuracy, balanced
accuracy, each label's recall at the argmax and, on the functional set, the accuracy per
functionality, through the evaluation's own fp32 path (`evaluate.predict_proba` on the text
normalised and tokenised as in training). The development sets are those of configs/dev/ (see
configs/dev/README.md).

usage: python bench/dev_scores.py RUN_DIR [MODEL ...]
       python bench/dev_scores.py --config configs/seed.yaml MODEL_DIR ...   (models bench/recipe.py saved)"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from distillora.config import load_config  # noqa: E402
from distillora.data import as_saved, encode, load_splits  # noqa: E402
from distillora.evaluate import predict_proba  # noqa: E402
from distillora.stages import load_model  # noqa: E402
from recipe import dev_sets, split_scores  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="score the model directories given (the data settings of this config) "
                                     "instead of a run's models")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="with --config: an override the models were trained with (repeatable; e.g. seed=43, "
                         "whose validation carve differs)")
    ap.add_argument("paths", nargs="+", help="RUN_DIR [MODEL ...], or model directories with --config")
    a = ap.parse_args()
    if a.config:
        cfg, dirs = load_config(a.config, a.set), [Path(p) for p in a.paths]
    else:
        run, names = Path(a.paths[0]), a.paths[1:]
        cfg = load_config(run / "config.yaml", a.set)
        dirs = [d for d in sorted((run / "models").iterdir())
                if (not names or d.name in names) and (d / "config.json").exists()]
        missing = set(names) - {d.name for d in dirs}
        if missing:
            ap.error(f"{run}/models has no saved model {sorted(missing)}")
    from transformers import AutoTokenizer

    tables = None
    for d in dirs:
        if tables is None:  # the texts as the (first) model saw them
            data = as_saved(cfg.data, d)
            tables = {"validation": load_splits(data, cfg.seed).validation, **dev_sets(data)}
        model, tok = load_model(d).eval(), AutoTokenizer.from_pretrained(str(d))
        row = {"model": str(d) if a.config else d.name}
        for split, table in tables.items():
            row[split] = split_scores(predict_proba(model, encode(table, tok, cfg.data.max_length), tok)[0],
                                      split, table)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
