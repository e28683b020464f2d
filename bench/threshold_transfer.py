"""Would a decision threshold chosen on validation and the development sets carry to data it was not
chosen on? For each model of a finished run, from the probabilities the run stored (never the test
split's): the threshold on p(hate), 0.05 to 0.95 in steps of 0.01, that maximises the mean macro-F1 of
validation and every development set (ties: the one nearest 0.5; the report's validation threshold,
`stats.threshold_on_validation`, keeps the lowest of tied ones, so its figure can differ from the
"validation alone" one here), the one validation alone picks, and
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


def stored_sets(root: Path) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """model -> `transfer`'s sets, from the run directory `root`: the stored validation probabilities and
    those of every development set the run names, each checked against the stage's fingerprint and the
    set file's content (as the study keys them), so a file edited since the run is refused, not misread."""
    from distillora.config import fingerprint, load_config
    from distillora.data import as_saved, load_extra, load_splits
    from distillora.errors import UserError
    from distillora.fileio import sha256
    from distillora.rundir import RunDir

    run = RunDir(root)
    if not run.config.is_file():
        raise UserError(f"{run.config}: not found; give the directory of a finished `distillora run`")
    cfg = load_config(run.config, [])
    if not cfg.data.dev_sets:
        raise UserError(f"{run.config}: data.dev_sets is empty; with validation alone there is no set to hold out")
    models = sorted(p.name[: -len(".test.json")] for p in (run.root / "stages").glob("*.test.json"))
    if not models:
        raise UserError(f"{run.root}/stages holds no evaluated model (*.test.json); give a finished run's directory")
    data = as_saved(cfg.data, run.model_dir(models[0]))
    splits = load_splits(data, cfg.seed)
    names = splits.info["label_names"]
    if len(names) != 2:
        raise UserError(f"{run.config}: {len(names)} labels; a threshold on one probability exists for two labels "
                        f"only (with more the decision is the argmax)")
    # the run's own development sets, read as it read them
    tables = {"validation": splits.validation,
              **{k: load_extra(f"data.dev_sets.{k}", path, data, names) for k, path in cfg.data.dev_sets.items()}}
    again = f"run `distillora run --config {run.config} --output {run.root}` again (it re-scores without retraining)"
    out = {}
    for m in models:
        stage_fp = run.stage_fingerprint(m)
        ev = run.evaluation(m, stage_fp) if stage_fp else None
        if ev is None:
            raise UserError(f"{run.root}/stages/{m}.test.json: no validation probabilities of the model as trained; {again}")
        probs = {"validation": ev.validation_probabilities}
        for k, path in cfg.data.dev_sets.items():
            probs[k] = run.extra_probabilities(m, k, fingerprint(stage_fp, sha256(Path(path).expanduser())))
            if probs[k] is None:
                raise UserError(f"{run.root}/stages/{m}.extra-{k}.json: missing, or scored on another version of "
                                f"{path}; {again}")
        out[m] = {k: (probs[k][:, 1], np.asarray(tables[k].labels)) for k in tables}
    return out


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    from distillora.errors import UserError

    try:
        sets = stored_sets(Path(sys.argv[1]))
    except UserError as e:
        sys.exit(f"error: {e}")
    for m, model_sets in sets.items():
        print(json.dumps({"model": m, **transfer(model_sets)}), flush=True)


if __name__ == "__main__":
    main()
