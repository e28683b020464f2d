"""Does choosing a teacher among fine-tuning restarts on some signals carry to a signal it was not chosen
on? The evidence behind `teacher.restarts` (docs/results.md, seventeenth session).

Reads the JSON lines that `bench/recipe.py --log` appends (one per teacher, with validation, dev and
functional figures), groups the teachers that share a config, overrides and validation carve but differ
in their training seed (`--train-seed`, or `seed=` in the overrides when `--by-seed` says the carve
moves with it too), and for every subset of k members and every signal held out in turn: the member
with the best mean of the other signals is chosen, and its held-out figure is compared with the
subset's mean. Prints one line per group and k, and the totals. Never reads a test figure (the recipe
bench has none).

    python bench/restart_transfer.py /tmp/distillora-recipe/seed.jsonl ... [--metric f1_macro] [--k 2 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
from collections import defaultdict

import numpy as np

# The signals its evidence was measured on (the recipe rows of the fifteenth to seventeenth sessions).
# Rows logged since the eighteenth also carry `implicit`, the third development set that the presets'
# selection score now averages too; this bench has not been re-run with it.
SIGNALS = ("validation", "dev", "functional")


# what makes two recipe rows the same recipe besides config and overrides (bench/recipe.py's variants)
VARIANT_FIELDS = ("wise_alpha", "average_from", "pooling", "linear_probe_epochs")


def group_key(row: dict, by_seed: bool) -> tuple:
    overrides = [o for o in row.get("overrides") or [] if not (by_seed and re.match(r"seed=\d+$", o))]
    return (row.get("config"), tuple(overrides), *(row.get(f) for f in VARIANT_FIELDS))


def training_seed(row: dict) -> int | None:
    """The seed a recipe row's teacher trained with: --train-seed, else seed= in the overrides, else the
    config's (None: the same for every row of a config)."""
    if row.get("train_seed") is not None:
        return row["train_seed"]
    seeds = [int(o.split("=", 1)[1]) for o in row.get("overrides") or [] if re.match(r"seed=\d+$", o)]
    return seeds[-1] if seeds else None


def groups_of(rows: list[dict], by_seed: bool, config_seed=lambda config: None) -> dict[tuple, list[dict]]:
    """Recipe rows grouped into restarts: the same recipe, one row per training seed (the first row of a
    seed logged twice). Rows of bench/soup.py (a `soup` field) are not restarts and are left out.
    `config_seed(config name)`: the seed of a row that names none."""
    out: dict[tuple, dict] = defaultdict(dict)
    for row in rows:
        if "soup" in row or not all(s in row for s in SIGNALS):
            continue
        seed = training_seed(row)
        out[group_key(row, by_seed)].setdefault(config_seed(row.get("config")) if seed is None else seed, row)
    return {k: list(v.values()) for k, v in out.items()}


def transfer(rows: list[dict], k: int, metric: str) -> list[float]:
    """Held-out gain (points) of the chosen member over the subset's mean, for each k-subset and held-out signal."""
    gains = []
    for subset in itertools.combinations(rows, k):
        for held in SIGNALS:
            used = [s for s in SIGNALS if s != held]
            chosen = max(subset, key=lambda r: np.mean([r[s][metric] for s in used]))  # ties: the earlier
            gains.append(100 * (chosen[held][metric] - np.mean([r[held][metric] for r in subset])))
    return gains


def config_seed(config: str | None) -> int | None:
    """The `seed` of configs/<config> (a recipe row without --train-seed or seed= trained with it)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / (config or "")
    if not config or not path.is_file():
        return None
    import yaml

    return (yaml.safe_load(path.read_text()) or {}).get("seed", 42)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+")
    ap.add_argument("--metric", default="f1_macro")
    ap.add_argument("--k", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--by-seed", action="store_true",
                    help="also group rows whose overrides differ only in seed=N (training seed and carve)")
    a = ap.parse_args()
    rows = [json.loads(line) for path in a.logs for line in open(path) if line.strip()]
    groups = groups_of(rows, a.by_seed, config_seed)
    for k in a.k:
        total = []
        for key, rows in groups.items():
            if len(rows) < k:
                continue
            g = transfer(rows, k, a.metric)
            total += g
            print(f"k={k} {key[0]} {list(key[1])} members {[r['name'] for r in rows]}: mean {np.mean(g):+.2f} "
                  f"points, {sum(x > 0 for x in g)} of {len(g)} higher")
        if total:
            print(f"k={k} all: mean {np.mean(total):+.2f} points over {len(total)} comparisons, "
                  f"{sum(x > 0 for x in total)} higher, {sum(x < 0 for x in total)} lower")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
