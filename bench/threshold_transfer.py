"""Would a decision threshold chosen on validation and the development sets carry to data it was not
chosen on? For each model of a finished run, from the probabilities the run stored (never the test
split's): the threshold on p(hate), 0.05 to 0.95 in steps of 0.01, that maximises the mean macro-F1 of
validation and every development set (ties: the one nearest 0.5), the one validation alone picks, and
each development set held out in turn (threshold chosen on validation and the other sets, then that
set's macro-F1 at 0.5 and at the chosen threshold). One JSON line per model.

The run's own decision stays the argmax (0.5 for two labels); this only asks whether building a
threshold into the models would be worth it (docs/results.md, fifteenth and nineteenth sessions).

usage: python bench/threshold_transfer.py RUN_DIR"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GRID = np.round(np.linspace(0.05, 0.95, 91), 2)


def f1_curve(p_hate: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Macro-F1 at each threshold of GRID (hate when p(hate) > threshold)."""
    from sklearn.metrics import f1_score

    return np.array([f1_score(labels, (p_hate > t).astype(int), average="macro", zero_division=0)
                     for t in GRID])


def pick(curves: list[np.ndarray]) -> float:
    """The threshold maximising the mean of `curves`; of tied ones, the nearest to 0.5."""
    mean = np.mean(curves, axis=0)
    tied = GRID[mean >= mean.max() - 1e-12]
    return float(tied[np.argmin(abs(tied - 0.5))])


def transfer(sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """`sets`: name -> (p(hate), labels), "validation" among them. The in-sample choice and, for each
    set but validation, the choice made without it and what it does to that set."""
    curves = {k: f1_curve(p, y) for k, (p, y) in sets.items()}
    at = {t: i for i, t in enumerate(GRID)}
    best = pick(list(curves.values()))
    row = {"threshold": best, "threshold_validation_alone": pick([curves["validation"]]),
           "score_at_0.5": round(float(np.mean([c[at[0.5]] for c in curves.values()])), 4),
           "score_at_threshold": round(float(np.mean([c[at[best]] for c in curves.values()])), 4),
           "held_out": {}}
    for held in curves:
        if held == "validation":
            continue
        t = pick([c for k, c in curves.items() if k != held])
        row["held_out"][held] = {"threshold": t, "f1_at_0.5": round(float(curves[held][at[0.5]]), 4),
                                 "f1_at_threshold": round(float(curves[held][at[t]]), 4)}
    return row


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    from distillora.config import load_config
    from distillora.data import as_saved, load_splits, load_table

    run = Path(sys.argv[1])
    cfg = load_config(run / "config.yaml", [])
    models = sorted(p.name[: -len(".test.json")] for p in (run / "stages").glob("*.test.json"))
    if not models:
        sys.exit(f"{run}/stages holds no evaluated model (*.test.json): is it a finished run's directory?")
    data = as_saved(cfg.data, run / "models" / models[0])
    # the run's own development sets (data.dev_sets), as it scored them
    tables = {"validation": load_splits(data, cfg.seed).validation,
              **{name: load_table(path, data) for name, path in cfg.data.dev_sets.items()}}

    def hate(path: Path, key: str) -> np.ndarray:
        return np.asarray(json.loads(path.read_text())[key])[:, 1]

    for m in models:
        probs = {"validation": hate(run / "stages" / f"{m}.test.json", "validation_probabilities"),
                 **{k: hate(run / "stages" / f"{m}.extra-{k}.json", "probabilities") for k in tables if k != "validation"}}
        sets = {k: (probs[k], np.asarray(tables[k].labels)) for k in tables}
        print(json.dumps({"model": m, **transfer(sets)}), flush=True)


if __name__ == "__main__":
    main()
