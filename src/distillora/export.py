"""`distillora export`: optimised inference copies of every model of a run, each re-measured on the
validation and test splits, and the choice of what to serve.

Candidates (the choice between them is made by measurement on this machine, never assumed; what each
one is: `distillora.inference`):
- `int8-dynamic`, `bf16`: torch copies, deterministic given the fp32 weights, so they are stored as
  their recipe (`exports.json`) over the run's own safetensors and rebuilt in about a second at load:
  no pickle file is written or read.
- `onnx-fp32`, `onnx-int8-dynamic`, `onnx-int8-static`: onnxruntime graphs, written under
  `exports/<model>/<method>/` with the tokenizer and the normaliser's settings beside them, so plain
  onnxruntime can use them; the static copy is calibrated on validation texts.
(LoRA is already merged in `models/lora`.)"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from . import inference
from .data import encode
from .evaluate import test_metrics
from .fileio import write_dir
from .inference import ONNX_METHODS, TorchBackend, onnx_backend, torch_backend
from .predict import finished_run, max_length, model_entries
from .rundir import ExportEntry, RunDir

log = logging.getLogger(__name__)
MAX_ACCURACY_DROP = 0.005  # 0.5 accuracy points
METHODS = ("int8-dynamic", "bf16", *ONNX_METHODS)  # the candidates, each against the fp32 original
LATENCY_SENTENCES = 100  # single-sentence latency is the median over this many test sentences
DESCRIPTIONS = {
    "int8-dynamic": "torch.ao quantize_dynamic, Linear layers, int8 weights and activations",
    "bf16": "bfloat16 weights and activations, Linear weights pre-packed for oneDNN",
    "onnx-fp32": "torch.onnx.export (dynamo) graph run by onnxruntime, fp32",
    "onnx-int8-dynamic": "onnxruntime.quantization quantize_dynamic: int8 weights, uint8 activations per batch",
    "onnx-int8-static": "onnxruntime.quantization quantize_static (QDQ, MatMul/Gemm): int8 weights, uint8 "
                        f"activations with ranges calibrated on {onnx_backend.CALIBRATION_TEXTS} validation texts",
}


def served_method(run_dir: str | Path, name: str) -> str:
    """See `inference.served_method` (kept here: export writes what it reads)."""
    return inference.served_method(run_dir, name)


def _splits(run_dir: Path):
    """The run's validation and test splits, rebuilt from its own config (same loader, seed and carve)
    with the normalisation saved with its teacher (`data.as_saved`)."""
    from .config import load_config
    from .data import as_saved, load_splits

    run = RunDir(run_dir)
    cfg = load_config(run.config)
    splits = load_splits(as_saved(cfg.data, run.model_dir("teacher")), cfg.seed)
    return splits.validation, splits.test


def _build(fp32: TorchBackend, method: str, dest: Path, limit: int, label_names, calibration_texts,
           fp32_onnx: Path | None) -> inference.Backend:
    """The `method` copy of the fp32 backend: torch copies in memory; onnx copies written atomically to
    `dest` and loaded from there, as serving loads them. The int8 onnx copies quantise `fp32_onnx`, the
    graph this export already wrote for `onnx-fp32`, when there is one."""
    if method not in ONNX_METHODS:
        return TorchBackend(torch_backend.convert(fp32.model, method), fp32.tokenizer, method)
    write_dir(dest, lambda tmp: onnx_backend.build(fp32.model, fp32.tokenizer, tmp, method, max_length=limit,
                                                   label_names=label_names, calibration_texts=calibration_texts,
                                                   fp32_onnx=fp32_onnx))
    return inference.OnnxBackend.load(dest)


def _choose(entry: dict) -> tuple[str, str]:
    """Serve the candidate with the lowest single-sentence latency among those that pass the accuracy
    gate and are faster than fp32 at both batch 1 and batch 32; else fp32. Returns (method, reason)."""
    base = entry["speed"]["fp32"]
    ok, why = [], []
    for method in METHODS:
        c = entry["candidates"].get(method)
        if c is None:
            continue
        if "error" in c:
            why.append(f"{method} cannot run on this machine ({c['error']})")
            continue
        s = entry["speed"][method]
        if not c["passed"]:
            why.append(f"{method} loses {100 * c['worst_drop']:.1f} accuracy points (limit {100 * MAX_ACCURACY_DROP:.1f})")
        elif s["p50_ms_b1"] >= base["p50_ms_b1"] or s["examples_per_s_b32"] <= base["examples_per_s_b32"]:
            why.append(f"{method} is not faster than fp32 at batch 1 and 32")
        else:
            ok.append(method)
    if not ok:
        return "fp32", "; ".join(why)
    best = min(ok, key=lambda m: entry["speed"][m]["p50_ms_b1"])
    s = entry["speed"][best]
    return best, (f"passed; {s['p50_ms_b1']:.1f} ms vs {base['p50_ms_b1']:.1f} ms per sentence, "
                  f"{s['examples_per_s_b32'] / base['examples_per_s_b32']:.2f}x fp32 throughput")


def export_run(run_dir: str | Path, models: list[str] | None = None, methods: tuple[str, ...] = METHODS) -> dict:
    """`_export_run` holding the run directory's lock (a run redoing stages there refuses it, and it
    refuses a running one); what a killed export left half-written is removed first."""
    from .fileio import remove_stale_temporaries
    from .runlock import RunLock

    finished_run(run_dir)  # not a run: say so before creating a lock file there
    with RunLock(Path(run_dir), "export"):
        for p in remove_stale_temporaries(Path(run_dir)):
            log.info("removed %s, left by an interrupted write", p)
        return _export_run(run_dir, models, methods)


def _export_run(run_dir: str | Path, models: list[str] | None = None, methods: tuple[str, ...] = METHODS) -> dict:
    """Measure each candidate copy of each model against its fp32 original on validation and test. A
    copy is eligible only if it loses at most 0.5 accuracy points on both (the test figure can only
    veto, never select) and is faster; `_choose` picks among the eligible. Entries of other models
    already in exports.json are kept."""
    run_dir = Path(run_dir)
    results = finished_run(run_dir)
    validation, test = _splits(run_dir)
    run = RunDir(run_dir)
    out = run.exports()
    out.methods = DESCRIPTIONS
    out.max_accuracy_drop, out.threads, out.latency_sentences = \
        MAX_ACCURACY_DROP, torch.get_num_threads(), LATENCY_SENTENCES
    limit = max_length(run_dir)
    labels = {"validation": validation.labels, "test": test.labels}
    label_names = results.get("dataset", {}).get("label_names")
    for m in model_entries(run_dir, results):  # sweep students too
        name = m["name"]
        if models and name not in models:
            continue
        mdir = run.model_dir(name)
        tok = AutoTokenizer.from_pretrained(str(mdir))
        enc = {s: encode(split, tok, limit) for s, split in (("validation", validation), ("test", test))}
        texts = test.texts[:LATENCY_SENTENCES]
        fp32 = TorchBackend(torch_backend.load_fp32(mdir), tok)
        ref, speed = inference.measure(fp32, enc, texts, limit)
        entry = {"fingerprint": inference.stage_fingerprint(run_dir, name),
                 "fp32_accuracy": {s: test_metrics(ref[s], labels[s])["accuracy"] for s in labels},
                 "speed": {"fp32": speed}, "candidates": {}}
        fp32_onnx = None  # the onnx-fp32 graph written by this export, which the int8 copies quantise
        for method in methods:
            t0 = time.perf_counter()
            dest = inference.copy_dir(run_dir, name, method)
            try:
                copy_ = _build(fp32, method, dest, limit, label_names, validation.texts, fp32_onnx)
                c = {"build_seconds": round(time.perf_counter() - t0, 2)}
                if method in ONNX_METHODS:
                    c["path"] = dest.relative_to(run_dir).as_posix()
                if method == "onnx-fp32":
                    fp32_onnx = dest / onnx_backend.MODEL_FILE
                probs, entry["speed"][method] = inference.measure(copy_, enc, texts, limit)
            except onnx_backend.ERRORS as e:  # a kernel this CPU lacks, an op the exporter or onnxruntime
                # cannot handle: the copy is recorded as failed with the reason, and the table and choice say so
                log.warning("export %s %s failed: %s", name, method, e)
                first = (str(e).strip().splitlines() or [""])[0][:300]
                entry["candidates"][method] = {"error": f"{type(e).__name__}: {first}", "passed": False}
                continue
            for s in labels:
                acc = test_metrics(probs[s], labels[s])["accuracy"]
                c[s] = {"accuracy": acc, "drop": round(entry["fp32_accuracy"][s] - acc, 4),
                        "max_abs_prob_diff": float(np.abs(ref[s] - probs[s]).max())}
            c["worst_drop"] = max(c["validation"]["drop"], c["test"]["drop"])
            c["passed"] = c["worst_drop"] <= MAX_ACCURACY_DROP
            entry["candidates"][method] = c
            del copy_
        entry["serve"], entry["reason"] = _choose(entry)
        out.models[name] = ExportEntry.from_dict(entry)
        log.info("export %s: %s (%s)", name, entry["serve"], entry["reason"])
    run.write_exports(out)
    return out.to_dict()
