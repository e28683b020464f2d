"""Test-split metrics, probabilities, throughput, parameter counts and size on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score

from .data import Encoded
from .inference import TorchBackend


def predict_proba(model, encoded: Encoded, tokenizer, batch_size: int = 128) -> tuple[np.ndarray, float]:
    """Class probabilities (N, C) of a torch model in the original order, and examples/s of the pass
    (`inference.Backend.predict_encoded`: length-sorted batches, so padding stays small)."""
    return TorchBackend(model, tokenizer).predict_encoded(encoded, batch_size)


def test_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    pred = probs.argmax(-1)
    p, r, f, _ = precision_recall_fscore_support(labels, pred, labels=[1], zero_division=0)
    both = len(set(labels.tolist())) == 2
    return {
        "accuracy": float(accuracy_score(labels, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
        "f1_macro": float(f1_score(labels, pred, average="macro", zero_division=0)),
        "precision_hate": float(p[0]),
        "recall_hate": float(r[0]),
        "f1_hate": float(f[0]),
        "roc_auc": float(roc_auc_score(labels, probs[:, 1])) if both else None,
        # mean cross-entropy of the true class (sklearn's log_loss warns on float rounding of the sums)
        "loss": float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)).mean()),
        "confusion": confusion_matrix(labels, pred, labels=[0, 1]).tolist(),
    }


def count_params(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def size_on_disk(path: Path, exclude: tuple[str, ...] = ("adapter",)) -> int:
    """Bytes of the weight files of a saved model directory (top level, not the adapter copy)."""
    return sum(f.stat().st_size for f in Path(path).iterdir()
               if f.is_file() and f.suffix in (".safetensors", ".bin") and f.name not in exclude)
