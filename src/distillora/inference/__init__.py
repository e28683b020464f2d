"""Inference backends behind one interface (`Backend`): torch fp32, bf16 and int8-dynamic copies
rebuilt from a model directory, and onnxruntime copies (fp32, int8 dynamic, int8 static) stored by
`distillora export`. Every backend normalises texts with the model's saved normaliser, tokenises as
training did and answers class probabilities; `measure` times any of them the same way.

    backend = load(model_dir, "bf16")                     # torch copies need only the model directory
    backend = load(model_dir, "onnx-fp32", copy_dir=dir)  # onnx copies are files export wrote
    backend = load_served(run_dir, name, model_dir)       # what export chose, else fp32
    backend.probabilities(["some text"], max_length)      # [[p0, p1, ...]]
    backend.predict_encoded(encoded_split, 32)            # (probabilities (N, C), examples/s)

This package knows model directories and copies, never the rest of a run: `predict` and `export` build
on it, not the other way round."""

from __future__ import annotations

from pathlib import Path

from . import onnx_backend, torch_backend
from .base import Backend, tokenize
from .onnx_backend import OnnxBackend
from .served import copy_dir, served_method as _served_method, stage_fingerprint
from .timing import measure
from .torch_backend import TorchBackend

TORCH_METHODS = torch_backend.METHODS  # fp32, int8-dynamic, bf16
ONNX_METHODS = onnx_backend.METHODS  # onnx-fp32, onnx-int8-dynamic, onnx-int8-static
ALL_METHODS = TORCH_METHODS + ONNX_METHODS

__all__ = ["ALL_METHODS", "Backend", "ONNX_METHODS", "OnnxBackend", "TORCH_METHODS", "TorchBackend", "copy_dir",
           "load", "load_served", "measure", "served_method", "stage_fingerprint", "tokenize"]


def load(model_dir: str | Path, method: str = "fp32", copy_dir: str | Path | None = None) -> Backend:
    """The `method` copy of the model saved at `model_dir`. Torch copies are rebuilt from its weights
    (fp32, with a warning, where this machine cannot build them); onnx copies are read from `copy_dir`.
    Raises UserError for damaged weights or copies, ValueError for an unknown method."""
    if method in TORCH_METHODS:
        return TorchBackend.load(model_dir, method)
    if method in ONNX_METHODS:
        if copy_dir is None:
            raise ValueError(f"{method} is a stored copy: give its copy_dir")
        return OnnxBackend.load(copy_dir)
    raise ValueError(f"unknown inference method {method!r}; known: {', '.join(ALL_METHODS)}")


def served_method(run_dir: str | Path, name: str) -> str:
    """The method exports.json says to serve model `name` with (fp32 when there is none, the model was
    retrained since, or the method is unknown here)."""
    return _served_method(run_dir, name, ALL_METHODS)


def load_served(run_dir: str | Path, name: str, model_dir: str | Path) -> Backend:
    """Model `name` of a run as it is served: the copy `distillora export` chose, else fp32."""
    method = served_method(run_dir, name)
    return load(model_dir, method, copy_dir(run_dir, name, method) if method in ONNX_METHODS else None)
