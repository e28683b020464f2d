"""How well each selection signal agreed with the test split over a run's models, after the fact.

    python bench/dev_scores.py RUN > SCORES.jsonl
    python bench/signal_agreement.py RUN:SCORES.jsonl [RUN2:SCORES2.jsonl ...]

Reads the JSON lines of `bench/dev_scores.py` (validation and the development sets of every saved model
of a run, seeds included) and the test figures that the run already wrote to its results.json. It never
scores a model on the test split, and nothing here chooses anything: it describes, over the models given,
the Pearson correlation of each signal's macro-F1 with test accuracy, and of each signal's hate recall
(the last label's) with the test split's. Used in docs/results.md (eighteenth session) to describe the
development sets as instruments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def test_figures(run: Path) -> dict[str, tuple[float, float]]:
    """model directory name (`odd`, `odd.seed43`) -> (test accuracy, test recall of the last label)."""
    res = json.loads((run / "results.json").read_text())
    out = {}
    for m in res["models"]:
        seeds = m.get("seeds") or [{"seed": None, "test": m["test"]}]
        for i, s in enumerate(seeds):
            name = m["name"] if i == 0 else f"{m['name']}.seed{s['seed']}"
            out[name] = (s["test"]["accuracy"], list(s["test"]["recall"].values())[-1])
    return out


def agreement(pairs: list[tuple[dict, tuple[float, float]]]) -> dict[str, dict[str, float]]:
    """Per signal, r(macro-F1, test accuracy) and r(hate recall, test hate recall) over the (scores, test) pairs."""
    signals = [k for k in pairs[0][0] if isinstance(pairs[0][0][k], dict) and "f1_macro" in pairs[0][0][k]]
    acc = np.array([t[0] for _, t in pairs])
    rec = np.array([t[1] for _, t in pairs])
    out = {}
    for sig in signals:
        f1 = np.array([s[sig]["f1_macro"] for s, _ in pairs])
        hate = np.array([s[sig]["recall"][-1] for s, _ in pairs])
        out[sig] = {"f1_vs_accuracy": float(np.corrcoef(f1, acc)[0, 1]),
                    "hate_recall_vs_test_hate_recall": float(np.corrcoef(hate, rec)[0, 1])}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="RUN:SCORES", help="a run directory and a dev_scores.py output file")
    a = ap.parse_args(argv)
    pairs = []
    for spec in a.runs:
        run, _, scores = spec.partition(":")
        if not scores or not (Path(run) / "results.json").is_file() or not Path(scores).is_file():
            sys.exit(f"{spec}: give RUN:SCORES, a finished run directory and the file bench/dev_scores.py wrote for it")
        tests = test_figures(Path(run))
        for line in Path(scores).read_text().splitlines():
            row = json.loads(line)
            if row["model"] in tests:
                pairs.append((row, tests[row["model"]]))
    if len(pairs) < 3:
        sys.exit(f"{len(pairs)} models matched a test figure; a correlation needs at least 3")
    print(f"{len(pairs)} models")
    for sig, r in agreement(pairs).items():
        print(f"  {sig:12s} r(F1, test accuracy) {r['f1_vs_accuracy']:+.2f}   "
              f"r(hate recall, test hate recall) {r['hate_recall_vs_test_hate_recall']:+.2f}")


if __name__ == "__main__":
    main()
