"""Measure a teacher recipe on validation and on the development sets of configs/dev/, never on
the test split: how the defaults of configs/ were chosen.

    python bench/recipe.py --config configs/seed.yaml --name lr2e-5 teacher.train.learning_rate=2e-5
    python bench/recipe.py --config configs/seed.yaml --name lpft --linear-probe-epochs 1
    python bench/recipe.py --config configs/seed.yaml --name base --wise 1,0.8,0.6   # WiSE-FT alphas
    python bench/recipe.py --config configs/quick.yaml --name swa --average-from 0.33,0.67
    python bench/recipe.py --config configs/quick.yaml --name first --pooling first

Each call fine-tunes one teacher with the run's own code (same data, carve, tokenisation, Trainer);
`teacher.soup` and `teacher.restarts` of the config are not applied (one teacher: a member, with
`--train-seed`; soups: bench/soup.py; restarts' evidence: bench/restart_transfer.py on these rows),
then scores it on validation and on the development sets of configs/dev/ (WiSE-FT: for every alpha, the
fine-tuned body interpolated with the pretrained one). `--average-from F,...`: also score, for each
F, the uniform average of the trainable weights taken after every step from fraction F of the run
(tail weight averaging, as SWA / SWAD), beside the model `fit` returns from the same run (the row's train_seconds then include the averaging).
`--pooling
first|mean|auto`: what the head reads, shorthand for teacher.pooling (distillora.pooling; the row's
`pooling` is the resolved one). One JSON line per scored model goes to `--log` (default
bench/results/recipe.jsonl)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from distillora.hugepages import restart_with_huge_pages  # noqa: E402  (imports no torch)

if __name__ == "__main__":  # time as a run does (distillora.hugepages, "Benches")
    restart_with_huge_pages()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, recall_score  # noqa: E402
from transformers import AutoTokenizer, TrainerCallback  # noqa: E402

from distillora import bundles, normalize  # noqa: E402
from distillora.config import fingerprint, load_config, to_dict  # noqa: E402
from distillora.data import encode, load_splits, load_table  # noqa: E402
from distillora.inference.timing import cpu_name  # noqa: E402
from distillora.evaluate import predict_proba  # noqa: E402
from distillora.fileio import sha256  # noqa: E402
from distillora.stages import StageEnv  # noqa: E402
from distillora.stages.teacher import (  # noqa: E402
    fit_inputs as teacher_fit_inputs, head_pooling, linear_probe, load_pretrained, wise_ft)
from distillora.training import bias_logprobs, group_factors, with_group_weights  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEV = REPO / "configs" / "dev" / "short_sentences.csv"
FUNCTIONAL = REPO / "configs" / "dev" / "functional_sentences.csv"
IMPLICIT = REPO / "configs" / "dev" / "implicit_sentences.csv"
# name -> (file, the column scored per category: each row's functionality or kind; None: none)
DEV_SETS = {"dev": (DEV, None), "functional": (FUNCTIONAL, "functionality"), "implicit": (IMPLICIT, "kind")}


def dev_sets(data) -> dict:
    """The development sets of DEV_SETS by name (configs/dev/README.md), read with the data settings
    `data`, each with its own category column."""
    return {name: load_table(path, dataclasses.replace(data, category_column=column))
            for name, (path, column) in DEV_SETS.items()}


def split_scores(probs: np.ndarray, name: str, table) -> dict:
    """`scores` of one scored table: validation with its target-group recall, a development set with
    categories (functional, implicit) with the accuracy per category (and their minimum), `dev` plain."""
    if name == "validation" or table.categories is None:
        return scores(probs, table.labels, table.categories if name == "validation" else None)
    out = scores(probs, table.labels)
    pred, y, groups = probs.argmax(1), np.asarray(table.labels), np.asarray(table.categories, dtype=object)
    out["functionality_accuracy"] = {g: round(float((pred[groups == g] == y[groups == g]).mean()), 4)
                                     for g in dict.fromkeys(table.categories)}
    out["functionality_accuracy_min"] = min(out["functionality_accuracy"].values())
    return out


class TailAverage(TrainerCallback):
    """Uniform running mean (fp32) of the trainable weights after every optimizer step past `start` x
    the run's steps."""

    def __init__(self, start: float):
        self.start, self.n, self.mean = start, 0, {}

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step <= self.start * state.max_steps:
            return
        self.n += 1
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad:
                    if name in self.mean:
                        self.mean[name].add_(p.float() - self.mean[name], alpha=1.0 / self.n)
                    else:
                        self.mean[name] = p.detach().float().clone()

    def applied(self, model):
        """A copy of `model` holding the averaged weights."""
        import copy

        out = copy.deepcopy(model)
        params = dict(out.named_parameters())
        with torch.no_grad():
            for name, w in self.mean.items():
                params[name].copy_(w)
        return out


def scores(probs: np.ndarray, labels: np.ndarray, categories: list[str] | None = None) -> dict:
    """Accuracy, balanced accuracy, macro F1, each label's recall (which way a model errs); with
    `categories`, also the recall of label 1 in each non-empty category, their mean and their minimum
    (group_weights' target: no group left behind)."""
    pred = probs.argmax(1)
    out = {"accuracy": round(float(accuracy_score(labels, pred)), 4),
           "balanced_accuracy": round(float(balanced_accuracy_score(labels, pred)), 4),
           "f1_macro": round(float(f1_score(labels, pred, average="macro")), 4),
           "recall": [round(float(r), 4) for r in recall_score(labels, pred, average=None,
                                                                 labels=range(probs.shape[1]), zero_division=0)]}
    if categories is not None:
        hate = np.asarray(labels) == 1
        cats = np.asarray(categories, dtype=object)
        rows = {c: (cats == c) & hate for c in sorted(set(categories) - {""})}
        rec = {c: round(float((pred[r] == 1).mean()), 4) for c, r in rows.items() if r.any()}
        out["category_recall"] = rec
        out["category_recall_mean"] = round(float(np.mean(list(rec.values()))), 4) if rec else None
        out["category_recall_min"] = min(rec.values()) if rec else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "seed.yaml"))
    ap.add_argument("--name", required=True)
    ap.add_argument("--work", default="/tmp/distillora-recipe")
    ap.add_argument("--log", default=str(REPO / "bench" / "results" / "recipe.jsonl"))
    ap.add_argument("--wise", default="1", help="comma-separated WiSE-FT alphas to score (1 = the fine-tuned model)")
    ap.add_argument("--linear-probe-epochs", type=float, default=0.0,
                    help="LP-FT: train only the new head first (shorthand for teacher.linear_probe_epochs=N)")
    ap.add_argument("--average-from", default="", help="comma-separated start fractions of tail weight averages to score")
    ap.add_argument("--pooling", default=None, choices=["auto", "first", "mean"],
                    help="what the head reads (shorthand for teacher.pooling=...; default: the config's)")
    ap.add_argument("--train-seed", type=int, default=None,
                    help="the training seed (data order, dropout) only; the validation carve and the head's "
                         "initialisation stay those of the config's seed (members of a soup: bench/soup.py)")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    starts = [float(x) for x in a.average_from.split(",") if x]
    if any(not 0 <= f < 1 for f in starts):
        ap.error(f"--average-from {a.average_from}: each start fraction must be in [0, 1)")

    # --linear-probe-epochs: the shorthand for the stage's own setting (the logged overrides stay as given)
    cfg = load_config(a.config, a.overrides + ([f"teacher.linear_probe_epochs={a.linear_probe_epochs}"]
                                               if a.linear_probe_epochs else [])
                      + ([f"teacher.pooling={a.pooling}"] if a.pooling else []))
    if cfg.teacher.soup > 1 or cfg.teacher.restarts > 1:
        print(f"recipe: trains one teacher; the config's teacher.soup = {cfg.teacher.soup} and teacher.restarts = "
              f"{cfg.teacher.restarts} are not applied (members: --train-seed)", file=sys.stderr)
    splits = load_splits(cfg.data, cfg.seed)
    devs = dev_sets(cfg.data)
    source = bundles.resolve(cfg.teacher.source)
    tok = AutoTokenizer.from_pretrained(source)
    enc = {n: encode(getattr(splits, n), tok, cfg.data.max_length) for n in ("train", "validation")}
    enc.update({n: encode(t, tok, cfg.data.max_length) for n, t in devs.items()})
    enc["train"] = with_group_weights(enc["train"], group_factors(splits.train, cfg))
    work = Path(a.work) / a.name
    train_cfg = cfg if a.train_seed is None else dataclasses.replace(cfg, seed=a.train_seed)
    env = StageEnv(train_cfg, tok, enc["train"], enc["validation"], work, quiet=True, extra_rows=splits.extra_rows,
                   teacher_bias=bias_logprobs(splits.train, cfg))
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    pooling = head_pooling(cfg, source)
    model, new = load_pretrained(source, cfg.data.label_names, pooling=pooling, new_weights=True)
    averages = [TailAverage(f) for f in starts]
    normalize.attach(model.config, normalize.resolve(cfg.data.normalize))
    # what the model's result depends on: a run resumed under the same name with other options (or
    # another preset, or an edited extra training file) would mix two recipes (and an average would
    # cover only the steps after the resume)
    fp = "|".join([a.name, pooling, a.average_from, str(cfg.teacher.linear_probe_epochs), *a.overrides]
                  + ([f"train_seed={a.train_seed}"] if a.train_seed is not None else [])
                  + [fingerprint(to_dict(cfg), [sha256(Path(p)) for p in cfg.data.extra_train])])
    if cfg.teacher.linear_probe_epochs:  # LP-FT, as the teacher stage does it (under the same fingerprint)
        model, _ = linear_probe(env, model, new, fp, "teacher")
    model, stats = env.fit(model, cfg.teacher.train, "teacher", fp, callbacks=tuple(averages),
                           **teacher_fit_inputs(env, cfg.teacher.train))
    seconds = time.perf_counter() - t0
    if averages and stats["resumed_from"]:
        raise SystemExit(f"{work}: resumed from {stats['resumed_from']}; tail averages need the whole run "
                         f"(remove {work} or use another --name)")
    for avg in averages:
        if avg.n == 0:
            raise SystemExit(f"--average-from {avg.start}: no step past that fraction of the run was averaged")
    model.save_pretrained(str(work / "model"))  # for bench/student_recipe.py --teacher (its pooling recorded)
    tok.save_pretrained(str(work / "model"))
    alphas = [float(x) for x in a.wise.split(",")]
    pretrained = load_pretrained(source, cfg.data.label_names) if any(x < 1 for x in alphas) else None
    Path(a.log).parent.mkdir(parents=True, exist_ok=True)
    # one model copy at a time: each is built when it is scored
    scored = [({"wise_alpha": alpha}, lambda alpha=alpha: wise_ft(model, pretrained, alpha) if alpha < 1 else model)
              for alpha in alphas]
    scored += [({"average_from": avg.start, "averaged_steps": avg.n}, lambda avg=avg: avg.applied(model))
               for avg in averages]
    for variant, build in scored:
        m = build()
        row = {"name": a.name, "config": Path(a.config).name, "overrides": a.overrides, "train_seed": a.train_seed,
               **variant, "pooling": pooling, "linear_probe_epochs": cfg.teacher.linear_probe_epochs,
               "train_seconds": round(seconds, 1), "best_checkpoint": stats["best_checkpoint"], "cpu": cpu_name(),
               "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}
        for split, table in {"validation": splits.validation, **devs}.items():
            row[split] = split_scores(predict_proba(m, enc[split], tok)[0], split, table)
        print(json.dumps(row))
        with open(a.log, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
