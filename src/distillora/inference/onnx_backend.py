"""onnxruntime copies of a saved model: `onnx-fp32` (torch.onnx.export), `onnx-int8-dynamic` and
`onnx-int8-static` (onnxruntime.quantization on the fp32 graph).

A copy is a directory that plain onnxruntime can use without distillora:
    model.onnx            inputs (int64, dynamic batch and sequence axes): see `inputs` below;
                          output `logits` (float32, batch x num_labels)
    tokenizer files       the model's own tokenizer (`AutoTokenizer.from_pretrained(dir)`)
    distillora_onnx.json  method, inputs, output, max_length, label_names, `distillora_normalize`
                          (the normaliser's steps, see `distillora.normalize`), sha256 of model.onnx
Texts go through the saved normaliser, are tokenised with truncation at `max_length`, and the softmax
of `logits` gives the class probabilities.

Why the torch.export-based exporter (`dynamo=True`, torch's default since 2.9): the TorchScript one is
deprecated, and tracing bakes Python branches on shapes into the graph. It takes a few seconds per model."""

from __future__ import annotations

import inspect
import logging
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_errors
from transformers import AutoTokenizer

from ..errors import UserError
from ..fileio import read_json, sha256, write_json
from ..normalize import CONFIG_KEY, Normalizer
from .base import Backend, tokenize

log = logging.getLogger(__name__)
METHODS = ("onnx-fp32", "onnx-int8-dynamic", "onnx-int8-static")
MODEL_FILE = "model.onnx"
META_FILE = "distillora_onnx.json"
# What building or running a copy raises when the exporter or onnxruntime cannot handle the model
# (onnxruntime's own errors derive from Exception only; the exporter's from RuntimeError).
ERRORS = (RuntimeError, NotImplementedError, _ort_errors.Fail, _ort_errors.InvalidArgument, _ort_errors.InvalidGraph,
          _ort_errors.NotImplemented, _ort_errors.RuntimeException)
CALIBRATION_TEXTS = 256  # validation texts that calibrate the static int8 copy's activation ranges


def input_names(model: torch.nn.Module, tokenizer) -> list[str]:
    """The tokenizer's outputs the model's forward takes (BERT: ids, mask, token types; MPNet: no types)."""
    params = inspect.signature(model.forward).parameters
    return [n for n in tokenizer.model_input_names if n in params]


@contextmanager
def _quiet():
    """The exporter prints its progress and logs that torchvision's ops are skipped, and
    onnxruntime.quantization logs on the root logger about every tensor it leaves in float (the
    boolean masks); none of it is news to a user of `export`. Errors still show."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_fp32(model: torch.nn.Module, tokenizer, path: Path) -> list[str]:
    """Write the fp32 graph of `model` to `path` (one file, weights inside) with dynamic batch and
    sequence axes; return its input names."""
    names = input_names(model, tokenizer)
    example = dict(tokenizer(["an example sentence", "two"], padding=True, return_tensors="pt"))
    example = {n: example[n] if n in example else torch.zeros_like(example["input_ids"]) for n in names}
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with _quiet(), torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(model.eval(), (), str(path), kwargs=example, input_names=names, output_names=["logits"],
                          dynamic_shapes={n: {0: batch, 1: seq} for n in names}, dynamo=True, external_data=False,
                          verbose=False)
    return names


class _Calibration:
    """onnxruntime.quantization's CalibrationDataReader over tokenised validation batches."""

    def __init__(self, batches: list[dict]):
        self._it = iter(batches)

    def get_next(self):
        return next(self._it, None)


def quantize(src: Path, dst: Path, method: str, calibration: list[dict] | None = None) -> None:
    """Write the int8 copy of the fp32 graph `src` to `dst`. `onnx-int8-dynamic`: int8 weights, uint8
    activations quantised per batch at run time. `onnx-int8-static`: activation ranges fixed from
    `calibration` (batches of {input name: int64 array}), MatMul/Gemm quantised in QDQ form; uint8
    activations with int8 weights is the pairing onnxruntime's x86 kernels are fastest on."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    with _quiet():
        if method == "onnx-int8-dynamic":
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        elif method == "onnx-int8-static":
            if not calibration:
                raise ValueError("onnx-int8-static needs calibration batches")
            quantize_static(str(src), str(dst), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["MatMul", "Gemm"], calibrate_method=CalibrationMethod.MinMax)
        else:
            raise ValueError(f"unknown int8 onnx method {method!r}")


def calibration_batches(tokenizer, normalizer: Normalizer, texts: list[str], names: list[str], max_length: int,
                        batch_size: int = 16) -> list[dict]:
    """Up to CALIBRATION_TEXTS texts tokenised exactly as at inference, as {input name: int64 array}."""
    texts = texts[:CALIBRATION_TEXTS]
    out = []
    for i in range(0, len(texts), batch_size):
        b = tokenize(tokenizer, normalizer, texts[i:i + batch_size], max_length)
        out.append({n: _input(b, n) for n in names})
    return out


def _input(batch: dict, name: str) -> np.ndarray:
    if name in batch:
        return batch[name].numpy().astype(np.int64)
    return np.zeros_like(batch["input_ids"].numpy(), dtype=np.int64)  # token types a tokenizer omits


def build(model: torch.nn.Module, tokenizer, out_dir: Path, method: str, *, max_length: int,
          label_names: list[str] | None = None, calibration_texts: list[str] | None = None,
          fp32_onnx: Path | None = None) -> Path:
    """Write the `method` copy of the fp32 `model` into `out_dir` (see the module docstring). For the
    int8 methods the fp32 graph is `fp32_onnx` when given (an `onnx-fp32` copy already built), else it
    is exported to a temporary file first."""
    if method not in METHODS:
        raise ValueError(f"unknown onnx method {method!r}; known: {', '.join(METHODS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    normalizer = Normalizer(getattr(model.config, CONFIG_KEY, None) or [])
    names = input_names(model, tokenizer)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        if method == "onnx-fp32":
            export_fp32(model, tokenizer, out_dir / MODEL_FILE)
        else:
            src = fp32_onnx
            if src is None:
                src = Path(tmp) / MODEL_FILE
                export_fp32(model, tokenizer, src)
            calib = None
            if method == "onnx-int8-static":
                calib = calibration_batches(tokenizer, normalizer, calibration_texts or [], names, max_length)
            quantize(Path(src), out_dir / MODEL_FILE, method, calib)
    tokenizer.save_pretrained(str(out_dir))
    write_json(out_dir / META_FILE, {
        "format": 1, "method": method, "inputs": names, "output": "logits", "max_length": max_length,
        "num_labels": model.config.num_labels, "label_names": label_names,
        CONFIG_KEY: normalizer.steps, "sha256": sha256(out_dir / MODEL_FILE)})
    return out_dir


class OnnxBackend(Backend):
    """An onnxruntime session over a copy written by `build`."""

    def __init__(self, session, tokenizer, meta: dict):
        self.session, self.tokenizer, self.meta = session, tokenizer, meta
        self.method = meta["method"]
        self.normalizer = Normalizer(meta.get(CONFIG_KEY) or [])
        self.num_labels = int(meta["num_labels"])
        self.inputs = [i.name for i in session.get_inputs()]

    @classmethod
    def load(cls, copy_dir: str | Path, threads: int | None = None) -> "OnnxBackend":
        """Raises UserError when the copy is missing, damaged or not the file its record names."""
        copy_dir = Path(copy_dir)
        meta_file, model_file = copy_dir / META_FILE, copy_dir / MODEL_FILE
        redo = "export it again: `distillora export --run RUN`"
        if not meta_file.is_file() or not model_file.is_file():
            raise UserError(f"{copy_dir}: no onnx copy here ({META_FILE} and {MODEL_FILE}); {redo}")
        meta = read_json(meta_file)
        if sha256(model_file) != meta.get("sha256"):
            raise UserError(f"{model_file}: not the file its export wrote (sha256 differs); {redo}")
        opts = ort.SessionOptions()
        # the same thread count torch uses, so the export's comparison with the torch copies is fair
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(model_file), opts, providers=["CPUExecutionProvider"])
        return cls(session, AutoTokenizer.from_pretrained(str(copy_dir)), meta)

    def _proba(self, batch: dict) -> np.ndarray:
        logits = self.session.run(["logits"], {n: _input(batch, n) for n in self.inputs})[0].astype(np.float64)
        z = np.exp(logits - logits.max(-1, keepdims=True))
        return z / z.sum(-1, keepdims=True)

