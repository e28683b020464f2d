"""`distillora export`: an optimised inference copy of every model of a run, each re-measured on the
test split, and the choice of what to serve.

The optimisation is dynamic int8 quantisation of the Linear layers (torch.ao): weights int8, activations
quantised per batch. It is deterministic given the fp32 weights, so the exported copy is stored as its
recipe (`exports.json`) over the run's own safetensors and rebuilt in under a second at load: no pickle
file is ever written or read. (LoRA is already merged in `models/lora`.)"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from .data import encode
from .evaluate import predict_proba, test_metrics
from .fileio import read_json, write_json
from .predict import finished_run, max_length

log = logging.getLogger(__name__)
MAX_ACCURACY_DROP = 0.005  # 0.5 accuracy points


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch 2.13 warns that quantized tensor creation is deprecated
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def load_for_inference(path: str | Path, method: str = "fp32") -> torch.nn.Module:
    model = AutoModelForSequenceClassification.from_pretrained(str(path), use_safetensors=True).eval()
    return quantize_int8(model) if method == "int8-dynamic" else model


def _stage_fingerprint(run_dir: Path, name: str) -> str | None:
    f = Path(run_dir) / "stages" / f"{name}.json"
    return read_json(f).get("fingerprint") if f.exists() else None


def served_method(run_dir: str | Path, name: str) -> str:
    """The method `predict` and the web app use for model `name`: the export that passed for the model
    as it is now on disk (same stage fingerprint), else fp32."""
    f = Path(run_dir) / "exports.json"
    if not f.exists():
        return "fp32"
    entry = read_json(f).get("models", {}).get(name, {})
    if entry.get("fingerprint") != _stage_fingerprint(Path(run_dir), name):
        return "fp32"  # the model was retrained after this export was measured
    return entry.get("serve", "fp32")


def _splits(run_dir: Path):
    """The run's validation and test splits, rebuilt from its own config (same loader, seed and carve)."""
    from .config import load_config
    from .data import load_splits

    cfg = load_config(run_dir / "config.yaml")
    splits = load_splits(cfg.data, cfg.seed)
    return splits.validation, splits.test


def _throughput(model, encoded, tokenizer, batch_size: int) -> float:
    predict_proba(model, encoded, tokenizer, batch_size)  # warm-up
    return predict_proba(model, encoded, tokenizer, batch_size)[1]


def export_run(run_dir: str | Path, models: list[str] | None = None) -> dict:
    """Measure the int8 copy of each model against its fp32 original on validation and test. It is
    served only if it loses at most 0.5 accuracy points on both (the test figure can only veto, never
    select) and is faster at batch 32. Entries of other models already in exports.json are kept."""
    run_dir = Path(run_dir)
    results = finished_run(run_dir)
    validation, test = _splits(run_dir)
    path = run_dir / "exports.json"
    out = read_json(path) if path.exists() else {}
    out.update({"method": "int8-dynamic (torch.ao quantize_dynamic, Linear layers)",
                "max_accuracy_drop": MAX_ACCURACY_DROP, "threads": torch.get_num_threads()})
    out.setdefault("models", {})
    limit = max_length(run_dir)
    for m in results["models"]:
        name = m["name"]
        if models and name not in models:
            continue
        mdir = run_dir / m["path"]
        tok = AutoTokenizer.from_pretrained(str(mdir))
        fp32 = load_for_inference(mdir)
        t0 = time.perf_counter()
        int8 = quantize_int8(fp32)  # quantize_dynamic copies; fp32 stays as it is
        build_s = time.perf_counter() - t0
        entry = {"fingerprint": _stage_fingerprint(run_dir, name)}
        for split_name, split in (("validation", validation), ("test", test)):
            enc = encode(split, tok, limit)
            p32, _ = predict_proba(fp32, enc, tok)
            p8, _ = predict_proba(int8, enc, tok)
            a32, a8 = test_metrics(p32, split.labels)["accuracy"], test_metrics(p8, split.labels)["accuracy"]
            entry[split_name] = {"fp32_accuracy": a32, "int8_accuracy": a8, "drop": round(a32 - a8, 4),
                                 "max_abs_prob_diff": float(np.abs(p32 - p8).max())}
        enc = encode(test, tok, limit)
        thr32, thr8 = _throughput(fp32, enc, tok, 32), _throughput(int8, enc, tok, 32)
        entry["examples_per_s_b32"] = {"fp32": round(thr32, 1), "int8-dynamic": round(thr8, 1)}
        entry["speedup"] = round(thr8 / thr32, 2)
        entry["build_seconds"] = round(build_s, 2)
        worst = max(entry["validation"]["drop"], entry["test"]["drop"])
        entry["passed"] = worst <= MAX_ACCURACY_DROP
        faster = thr8 > thr32
        entry["serve"] = "int8-dynamic" if entry["passed"] and faster else "fp32"
        entry["reason"] = ("passed and faster" if entry["passed"] and faster else
                           f"loses {100 * worst:.1f} accuracy points (limit {100 * MAX_ACCURACY_DROP:.1f})"
                           if not entry["passed"] else "not faster than fp32")
        out["models"][name] = entry
        log.info("export %s: %s", name, entry["reason"])
    write_json(path, out)
    return out
