"""Test-split metrics, probabilities, throughput, parameter counts and size on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score

from .data import Encoded
from .inference import TorchBackend
from .inference.base import EVAL_BATCH


def predict_proba(model, encoded: Encoded, tokenizer, batch_size: int = EVAL_BATCH) -> tuple[np.ndarray, float]:
    """Class probabilities (N, C) of a torch model in the original order, and examples/s of the pass
    (`inference.Backend.predict_encoded`: length-sorted batches, so padding stays small)."""
    return TorchBackend(model, tokenizer).predict_encoded(encoded, batch_size)


def test_metrics(probs: np.ndarray, labels: np.ndarray, label_names: list[str] | None = None) -> dict:
    """Metrics of class probabilities `probs` (n, C) against `labels` (n,) int, for any C >= 2.

    Per-class figures are keyed by label name (`label_names`, default "0".."C-1"). `roc_auc`: for
    C = 2 the AUC of p(label 1); for C > 2 the mean of the one-vs-rest AUCs of the classes for which
    one is defined (the class and some other class occur in `labels`), each also under
    `per_class[name]["roc_auc"]` (None where undefined). `confusion[i][j]`: rows of true class i
    predicted as j."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels)
    n_classes = probs.shape[1]
    names = list(label_names) if label_names is not None else [str(i) for i in range(n_classes)]
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} label names for {n_classes} probability columns")
    pred = probs.argmax(-1)
    classes = list(range(n_classes))
    p, r, f, support = precision_recall_fscore_support(labels, pred, labels=classes, zero_division=0)
    aucs = [float(roc_auc_score(labels == c, probs[:, c])) if 0 < np.sum(labels == c) < len(labels) else None
            for c in classes]
    if n_classes == 2:
        both = len(set(labels.tolist())) == 2
        roc_auc = float(roc_auc_score(labels, probs[:, 1])) if both else None
    else:
        defined = [a for a in aucs if a is not None]
        roc_auc = float(np.mean(defined)) if defined else None
    return {
        "accuracy": float(accuracy_score(labels, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
        "f1_macro": float(f1_score(labels, pred, average="macro", zero_division=0)),
        "roc_auc": roc_auc,
        # mean cross-entropy of the true class (sklearn's log_loss warns on float rounding of the sums)
        "loss": float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)).mean()),
        "confusion": confusion_matrix(labels, pred, labels=classes).tolist(),
        "per_class": {name: {"precision": float(p[c]), "recall": float(r[c]), "f1": float(f[c]),
                             "support": int(support[c]), "roc_auc": aucs[c]} for c, name in enumerate(names)},
    }


def selection_row(sets: dict[str, tuple[np.ndarray, np.ndarray]], metric: str,
                  label_names: list[str] | None = None) -> dict:
    """{set name: `metric` of its probabilities against its labels, ..., "score": the mean of those figures
    with equal weight}, for `sets` = {name: (probs (n, C), labels (n,))}: validation and the development
    sets (data.dev_sets), never the test split. The one figure that chooses the best student
    (`analysis.selection_scores`) and, under teacher.restarts, the teacher."""
    row = {name: test_metrics(probs, labels, label_names)[metric] for name, (probs, labels) in sets.items()}
    row["score"] = float(np.mean(list(row.values())))
    return row


def count_params(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def size_on_disk(path: Path, exclude: tuple[str, ...] = ("adapter",)) -> int:
    """Bytes of the weight files of a saved model directory (top level, not the adapter copy)."""
    return sum(f.stat().st_size for f in Path(path).iterdir()
               if f.is_file() and f.suffix in (".safetensors", ".bin") and f.name not in exclude)
