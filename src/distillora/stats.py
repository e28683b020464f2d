"""Honest numbers: bootstrap confidence intervals, McNemar's exact test, calibration error.

All functions are pure (numpy in, floats out) and tested against hand-worked cases and scipy."""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import f1_score


def bootstrap_ci(labels: np.ndarray, preds: np.ndarray, metric: str = "accuracy", resamples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `metric` (accuracy, balanced_accuracy or f1_macro), resampling examples
    with replacement `resamples` times."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    rng = np.random.default_rng(seed)
    n = len(labels)
    idx = rng.integers(0, n, size=(resamples, n))
    if metric == "accuracy":
        values = (labels[idx] == preds[idx]).mean(axis=1)
    elif metric == "balanced_accuracy":
        values = balanced_accuracy(labels[idx], preds[idx])
    elif metric == "f1_macro":
        classes = list(range(max(2, int(labels.max()) + 1, int(preds.max()) + 1)))  # [0, 1] for a binary task
        values = np.array([f1_score(labels[i], preds[i], average="macro", labels=classes, zero_division=0)
                           for i in idx])
    else:
        raise ValueError(f"unknown metric {metric!r}")
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def paired_bootstrap_diff(a: np.ndarray, b: np.ndarray, resamples: int = 1000, seed: int = 0,
                          level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) - mean(b) for paired per-example scores (e.g. 0/1 pass
    of two models on the same cases): each resample draws the same example indices for both."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired scores need two equal-length non-empty vectors, got {a.shape} and {b.shape}")
    idx = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    values = (a - b)[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def balanced_accuracy(labels: np.ndarray, preds: np.ndarray) -> np.ndarray | float:
    """Mean per-class recall over the classes present in `labels`, along the last axis (so a (B, N)
    stack of resamples gives B values); as sklearn's balanced_accuracy_score for one row."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    correct = labels == preds
    recalls, present = 0.0, 0
    for c in np.unique(labels):
        m = labels == c
        n = m.sum(axis=-1)
        recalls = recalls + np.where(n > 0, (correct & m).sum(axis=-1) / np.maximum(n, 1), 0.0)
        present = present + (n > 0)
    out = recalls / np.maximum(present, 1)
    return float(out) if np.ndim(out) == 0 else out


def mcnemar_exact(labels: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> dict:
    """McNemar's exact test on paired predictions: b = A right and B wrong, c = A wrong and B right;
    under H0 b ~ Binomial(b + c, 1/2). Two-sided p-value (1.0 when there are no discordant pairs)."""
    labels, pred_a, pred_b = map(np.asarray, (labels, pred_a, pred_b))
    a_ok, b_ok = pred_a == labels, pred_b == labels
    b = int(np.sum(a_ok & ~b_ok))
    c = int(np.sum(~a_ok & b_ok))
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)
    return {"a_right_b_wrong": b, "a_wrong_b_right": c, "p_value": p}


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict:
    """Top-label expected calibration error: the confidence of the predicted class (argmax) against
    whether it is right, in equal-width bins over [1/C, 1] (the range of a top-label confidence among
    C classes: [0.5, 1] for a binary task), plus the reliability diagram's per-bin confidence, accuracy
    and count. `probs`: (n, C), or (n,) p(label 1) of a binary task."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels)
    if probs.ndim == 1:
        probs = np.stack([1 - probs, probs], axis=1)
    pred = probs.argmax(1)
    conf = probs[np.arange(len(probs)), pred]
    correct = (pred == labels).astype(float)
    edges = np.linspace(1 / probs.shape[1], 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece, table = 0.0, []
    for k in range(bins):
        m = which == k
        if m.any():
            gap = abs(correct[m].mean() - conf[m].mean())
            ece += m.mean() * gap
            table.append({"low": float(edges[k]), "high": float(edges[k + 1]), "count": int(m.sum()),
                          "confidence": float(conf[m].mean()), "accuracy": float(correct[m].mean())})
    return {"ece": float(ece), "bins": table}


def threshold_on_validation(probs_pos: np.ndarray, labels: np.ndarray) -> float:
    """The decision threshold on p(positive) maximising macro-F1 on validation (reported beside 0.5)."""
    best_t, best_f = 0.5, -1.0
    for t in np.linspace(0.05, 0.95, 91):
        f = f1_score(labels, (probs_pos > t).astype(int), average="macro", zero_division=0)
        if f > best_f + 1e-12:
            best_t, best_f = float(t), f
    return round(best_t, 2)
