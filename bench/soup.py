"""Model soups (Wortsman et al., ICML 2022) of teachers fine-tuned from the same pretrained weights and the
same head initialisation with different training seeds, scored on validation and on the development sets
of configs/dev/, never on the test split.

    for s in 42 43 44; do
        python bench/recipe.py --config configs/seed.yaml --name soup-$s --train-seed $s
    done
    python bench/soup.py --config configs/seed.yaml --name soup /tmp/distillora-recipe/soup-{42,43,44}/model

Prints (and appends to `--log`) one JSON line per scored model: each member; the uniform soup (every
member's weights averaged, no choice made); the greedy soup (members in order of validation accuracy,
each kept only if the average's validation accuracy does not fall: the paper's Algorithm 1, on our
validation carve, so its validation figure is optimistic: compare it on dev); and, for reference, the
ensemble that averages the members' probabilities (N forward passes per text, so not a model that the
study could serve at one model's cost). Validation and dev texts are normalised as the members were
(`data.as_saved`); `--set KEY=VALUE` gives the overrides the members were trained with (e.g. `seed=43`
moves the validation carve)."""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from distillora import pooling  # noqa: E402
from distillora.config import load_config  # noqa: E402
from distillora.data import as_saved, encode, load_splits  # noqa: E402
from distillora.evaluate import predict_proba  # noqa: E402
from distillora.inference.timing import cpu_name  # noqa: E402
from distillora.stages.teacher import uniform_soup  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe import REPO, dev_sets, split_scores  # noqa: E402


def check_members(paths: list[str], models: list[torch.nn.Module]) -> None:
    """Stop with a message naming the first member that cannot be averaged with the first one."""
    if len(models) < 2:
        raise SystemExit("a soup needs at least 2 members")
    ref = models[0]
    for path, m in zip(paths[1:], models[1:]):
        shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
        want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        if shapes != want:
            raise SystemExit(f"{path}: its weights' names or shapes differ from {paths[0]}'s")
        for attr in ("id2label", "distillora_normalize", "distillora_pooling"):
            if getattr(m.config, attr, None) != getattr(ref.config, attr, None):
                raise SystemExit(f"{path}: config {attr} differs from {paths[0]}'s")


def averaged(models: list[torch.nn.Module]) -> torch.nn.Module:
    """The members' uniform soup, as `teacher.soup` makes it, in a copy (the members stay as they are)."""
    return uniform_soup([copy.deepcopy(models[0]), *models[1:]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "seed.yaml"))
    ap.add_argument("--name", required=True)
    ap.add_argument("--log", default=str(REPO / "bench" / "results" / "recipe.jsonl"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override the members were trained with (repeatable)")
    ap.add_argument("members", nargs="+", help="saved member models (bench/recipe.py's <work>/<name>/model)")
    a = ap.parse_args()
    members = [pooling.apply_saved(AutoModelForSequenceClassification.from_pretrained(m).eval()) for m in a.members]
    check_members(a.members, members)
    cfg = load_config(a.config, a.set)
    data = as_saved(cfg.data, a.members[0])
    splits = load_splits(data, cfg.seed)
    tables = {"validation": splits.validation, **dev_sets(data)}
    tok = AutoTokenizer.from_pretrained(a.members[0])
    enc = {s: encode(t, tok, cfg.data.max_length) for s, t in tables.items()}

    def probs_of(model, splits_=tuple(tables)) -> dict:
        return {s: predict_proba(model, enc[s], tok)[0] for s in splits_}

    def emit(variant: str, probs: dict, **extra) -> dict:
        row = {"name": a.name, "config": Path(a.config).name, "soup": variant, **extra, "cpu": cpu_name()}
        for s, t in tables.items():
            row[s] = split_scores(probs[s], s, t)
        print(json.dumps(row))
        with open(a.log, "a") as f:
            f.write(json.dumps(row) + "\n")
        return row

    member_probs = [probs_of(m) for m in members]
    for p, path in zip(member_probs, a.members):
        emit("member", p, member=str(path))
    emit("uniform", probs_of(averaged(members)), members=a.members)

    def correct(probs: np.ndarray) -> int:
        return int((probs.argmax(1) == splits.validation.labels).sum())

    # greedy soup: best member first, then each in order of validation accuracy if the soup does not lose
    order = sorted(range(len(members)), key=lambda i: -correct(member_probs[i]["validation"]))
    chosen, best = [order[0]], correct(member_probs[order[0]]["validation"])
    for i in order[1:]:
        got = correct(probs_of(averaged([members[j] for j in chosen + [i]]), ("validation",))["validation"])
        if got >= best:
            chosen, best = chosen + [i], got
    emit("greedy", probs_of(averaged([members[j] for j in chosen])), members=[a.members[j] for j in chosen])
    emit("ensemble", {s: np.mean([p[s] for p in member_probs], 0) for s in tables}, members=a.members)


if __name__ == "__main__":
    main()
