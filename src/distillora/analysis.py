"""From stored probabilities to the numbers a user can trust: test metrics with bootstrap 95%
intervals, calibration, a validation-tuned threshold reported beside 0.5, per-category results,
extra test sets, paired significance tests, and the data audit."""

from __future__ import annotations

from itertools import combinations

import numpy as np
from sklearn.metrics import f1_score

from . import stats
from .audit import audit, findings
from .evaluate import selection_row, test_metrics


def add_to_models(models: list, evaluations: dict, splits, extra: dict, cfg, dev: dict | None = None) -> None:
    """Fill each ModelRecord's test, calibration, threshold, per-category, extra-test and development-set
    figures from its `Evaluation` in `evaluations` (by model name)."""
    labels = splits.test.labels
    names = splits.info["label_names"]
    for m in models:
        ev = evaluations[m.name]
        probs = ev.probabilities
        pred = probs.argmax(1)
        test = test_metrics(probs, labels, names)
        test["ci95"] = {k: list(stats.bootstrap_ci(labels, pred, k, cfg.bootstrap_resamples, seed=cfg.seed))
                        for k in ("accuracy", "balanced_accuracy", "f1_macro")}
        m.test = test
        m.calibration = {"test": stats.calibration(probs, labels)}
        val = ev.validation_probabilities
        m.calibration["validation_ece"] = stats.calibration(val, splits.validation.labels)["ece"]
        m.threshold = _threshold(probs, val, labels, splits.validation.labels)
        if splits.test.categories is not None:
            m.per_category = per_category(labels, pred, splits.test.categories, names)
        if extra:
            m.extra_tests = {name: _set_metrics(ev.extra[name], split, names, cfg) for name, split in extra.items()}
        if dev:
            m.dev_sets = {name: _set_metrics(ev.extra[name], split, names, cfg) for name, split in dev.items()}


def _set_metrics(p: np.ndarray, split, names: list[str], cfg) -> dict:
    """A labelled set's figures, as for the test split, with a bootstrap interval on accuracy."""
    r = test_metrics(p, split.labels, names)
    r["ci95"] = {"accuracy": list(stats.bootstrap_ci(split.labels, p.argmax(1), "accuracy",
                                                     cfg.bootstrap_resamples, seed=cfg.seed))}
    r["rows"] = len(split)
    return r


def selection_scores(models: list, per_seed: dict, splits, dev: dict, metric: str) -> dict:
    """Each student's figures for the best-student choice, from its stored probabilities (evaluation
    time, so every seed and every set is scored the same way): `metric` on validation and on each
    development set, and `score`, their mean with equal weight; with several seeds (`per_seed`: seed ->
    model name -> Evaluation) each figure is the mean over the seeds. Never the test split."""
    names = splits.info["label_names"]
    out = {}
    for m in models:
        if not m.is_student:
            continue
        rows = []
        for evs in per_seed.values():
            ev = evs[m.name]
            rows.append(selection_row({"validation": (ev.validation_probabilities, splits.validation.labels),
                                       **{d: (ev.extra[d], split.labels) for d, split in dev.items()}},
                                      metric, names))
        out[m.name] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    return out


def _threshold(probs: np.ndarray, val: np.ndarray, labels: np.ndarray, val_labels: np.ndarray) -> dict | None:
    """A decision threshold on p(label 1) chosen on validation, reported beside 0.5: binary tasks only
    (with more labels the verdict is the argmax, and no single threshold exists); None otherwise."""
    if probs.shape[1] != 2:
        return None
    t = stats.threshold_on_validation(val[:, 1], val_labels)
    at_t = (probs[:, 1] > t).astype(int)
    return {"value": t, "chosen_on": "validation (macro-F1)",
            "test_accuracy": float((at_t == labels).mean()),
            "test_f1_macro": float(f1_score(labels, at_t, average="macro", zero_division=0))}


def add_seeds(models: list, seeds: list[int], seed_records: dict, per_seed: dict, splits,
              dev: dict | None = None) -> None:
    """Per-seed validation, test and development-set figures of every model, with the mean and (sample)
    std of the validation and test ones."""
    labels, vlabels = splits.test.labels, splits.validation.labels
    names = splits.info["label_names"]
    for m in models:
        rows = []
        for seed in seeds:
            ev, rec = per_seed[seed][m.name], seed_records[seed][m.name]
            t = test_metrics(ev.probabilities, labels, names)
            v = test_metrics(ev.validation_probabilities, vlabels, names)
            rows.append({"seed": seed, "train_loss": rec["train"]["loss"],
                         "validation": {k: v[k] for k in ("accuracy", "balanced_accuracy", "f1_macro")},
                         "test": {"accuracy": t["accuracy"], "balanced_accuracy": t["balanced_accuracy"],
                                  "f1_macro": t["f1_macro"],
                                  "recall": {n: c["recall"] for n, c in t["per_class"].items()}}})
            if dev:
                rows[-1]["dev_sets"] = {}
                for name, split in dev.items():
                    d = test_metrics(ev.extra[name], split.labels, names)
                    rows[-1]["dev_sets"][name] = {k: d[k] for k in ("accuracy", "balanced_accuracy", "f1_macro")}
        m.seeds = rows
        summary = {}
        for split in ("validation", "test"):
            for k in ("accuracy", "balanced_accuracy", "f1_macro"):
                x = np.array([r[split][k] for r in rows])
                summary[f"{split}_{k}"] = {"mean": float(x.mean()), "std": float(x.std(ddof=1)), "n": len(x)}
        m.seed_summary = summary


def per_category(labels: np.ndarray, pred: np.ndarray, categories: list[str], label_names: list[str]) -> dict:
    """Accuracy and the recall of each label per category (rows with an empty category are grouped as
    `(none)`); a label's recall is None in a category without rows of that label."""
    out = {}
    cats = np.array([c if c else "(none)" for c in categories])
    for c in sorted(set(cats.tolist())):
        m = cats == c
        recall = {}
        for k, name in enumerate(label_names):
            rows = m & (labels == k)
            recall[name] = float((pred[rows] == k).mean()) if rows.any() else None
        out[c] = {"rows": int(m.sum()), "accuracy": float((pred[m] == labels[m]).mean()), "recall": recall}
    return out


def comparisons(models: list) -> list[tuple[str, str]]:
    """The pairs the report tests, by kind: every two distilled students, each student against the
    teacher, each LoRA student against each baseline."""
    of = lambda kind: [m.name for m in models if m.kind == kind]  # noqa: E731
    pairs = list(combinations(of("distilled"), 2))
    pairs += [(m.name, t) for t in of("teacher") for m in models if m.is_student]
    pairs += [(lo, b) for lo in of("lora") for b in of("baseline")]
    return pairs


def significance(models: list, evaluations: dict, labels: np.ndarray, alpha: float = 0.05) -> list[dict]:
    """McNemar's exact test on the test split for each pair of `comparisons`."""
    preds = {m.name: evaluations[m.name].probabilities.argmax(1) for m in models}
    acc = {m.name: m.test["accuracy"] for m in models}
    out = []
    for a, b in comparisons(models):
        r = stats.mcnemar_exact(labels, preds[a], preds[b])
        r.update({"a": a, "b": b, "accuracy_a": acc[a], "accuracy_b": acc[b], "alpha": alpha,
                  "significant": r["p_value"] < alpha})
        out.append(r)
    return out


def run_audit(splits, cfg, tokenizer) -> dict:
    a = audit({"train": (splits.train.texts, splits.train.labels),
               "validation": (splits.validation.texts, splits.validation.labels),
               "test": (splits.test.texts, splits.test.labels)}, cfg.data.label_names, splits.info, tokenizer)
    a["findings"] = findings(a, cfg.data.label_names)
    return a
