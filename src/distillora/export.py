"""`distillora export`: optimised inference copies of every model of a run, each re-measured on the
validation and test splits, and the choice of what to serve.

Candidates (the choice between them is made by measurement on this machine, never assumed):
- `int8-dynamic`: torch.ao dynamic quantisation of the Linear layers (int8 weights, activations
  quantised per batch). Fast everywhere, but it can cost accuracy on models with outlier activations.
- `bf16`: weights and activations in bfloat16. On CPUs with native bf16 matrix units (AMX, AVX512-BF16)
  it is several times faster than fp32 at near-fp32 accuracy. Its Linear weights are pre-packed once
  into oneDNN's blocked layout (see `PackedLinear`) where oneDNN supports bf16; elsewhere the copy runs
  on plain bf16 kernels, measures slow and is not chosen.

Every copy is deterministic given the fp32 weights, so it is stored as its recipe (`exports.json`) over
the run's own safetensors and rebuilt in about a second at load: no pickle file is written or read.
(LoRA is already merged in `models/lora`.)"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from . import integrity
from .data import Encoded, encode
from .evaluate import predict_proba, test_metrics
from .rundir import ExportEntry, RunDir
from .predict import finished_run, max_length, model_entries, probabilities

log = logging.getLogger(__name__)
MAX_ACCURACY_DROP = 0.005  # 0.5 accuracy points
METHODS = ("int8-dynamic", "bf16")
LATENCY_SENTENCES = 100  # single-sentence latency is the median over this many test sentences


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch 2.13 warns that quantized tensor creation is deprecated
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


class PackedLinear(torch.nn.Module):
    """A frozen bf16 Linear whose weight is reordered once into oneDNN's blocked layout.

    Why not plain `nn.Linear`: eager bf16 `addmm` reorders the weight on every call, which at one
    sentence (about 20 rows) costs as much as the product itself; measured here on 768x3072, 255 us
    eager vs 162 us pre-packed. Why not `torch.compile` (whose CPU `freezing` pass does this same
    packing and also fuses the element-wise ops): it needs a C++ compiler where the model is served
    and about 30 s per model and input rank at start-up. The two ops are the ones inductor emits for
    that pass; `pack_linears` leaves the model as it is where they are missing."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach()
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(w, None), persistent=False)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


def _can_pack() -> bool:
    """oneDNN can pack and run bf16 weights here (it refuses on CPUs without AVX512-BW/VL/DQ or
    AVX-NE-CONVERT, for example AMD Zen 2/3 and most desktop Intel chips)."""
    try:
        return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
                and hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pack_linears(model: torch.nn.Module) -> torch.nn.Module:
    """Swap plain Linear layers for `PackedLinear` where oneDNN supports it; elsewhere leave the bf16
    model as it is (slower, and the export measurement then says so). Linear weights shared with
    another module (tied) stay as they are."""
    if not _can_pack():
        return model
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear and counts.get(id(child.weight), 0) == 1:
                setattr(module, name, PackedLinear(child))
    return model


def to_bf16(model: torch.nn.Module) -> torch.nn.Module:
    """A bf16 copy (the fp32 model is left as it is)."""
    import copy

    with warnings.catch_warnings():  # deepcopy reads a property transformers 5 marks deprecated
        warnings.simplefilter("ignore", FutureWarning)
        dup = copy.deepcopy(model)
    return pack_linears(dup.to(torch.bfloat16).eval())


def convert(model: torch.nn.Module, method: str) -> torch.nn.Module:
    if method == "fp32":
        return model
    if method == "int8-dynamic":
        return quantize_int8(model)
    if method == "bf16":
        return to_bf16(model)
    raise ValueError(f"unknown export method {method!r}; known: fp32, {', '.join(METHODS)}")


def load_for_inference(path: str | Path, method: str = "fp32") -> torch.nn.Module:
    """The model at `path` as `method` builds it; fp32 (with a warning) if this machine cannot build
    that copy, e.g. a run exported on a bf16-capable CPU and served on another. Raises UserError when
    the weights differ from those recorded at training or cannot be read (see `integrity`)."""
    integrity.check_loadable(path)
    integrity.verify(path)
    model = AutoModelForSequenceClassification.from_pretrained(str(path), use_safetensors=True).eval()
    try:
        return convert(model, method)
    except (RuntimeError, NotImplementedError) as e:
        log.warning("%s: cannot build its %s copy on this machine (%s); serving fp32", path, method, e)
        return model


def _stage_fingerprint(run_dir: Path, name: str) -> str | None:
    return RunDir(run_dir).stage_fingerprint(name)


def served_method(run_dir: str | Path, name: str) -> str:
    """The method `predict` and the web app use for model `name`: the export that passed for the model
    as it is now on disk (same stage fingerprint), else fp32."""
    entry = RunDir(run_dir).exports().models.get(name)
    if entry is None or entry.fingerprint != _stage_fingerprint(Path(run_dir), name):
        return "fp32"  # none, or the model was retrained after this export was measured
    serve = entry.serve
    return serve if serve in ("fp32", *METHODS) else "fp32"


def _splits(run_dir: Path):
    """The run's validation and test splits, rebuilt from its own config (same loader, seed and carve)."""
    from .config import load_config
    from .data import load_splits

    cfg = load_config(RunDir(run_dir).config)
    splits = load_splits(cfg.data, cfg.seed)
    return splits.validation, splits.test


def _measure(model, enc: dict, tokenizer, texts: list[str], limit: int) -> tuple[dict, dict]:
    """({split: probabilities}, speed): the test pass, after a warm-up, gives both the test
    probabilities and the batch-32 throughput; single-sentence p50 latency is timed with tokenising
    included, as `predict` and the web app run it."""
    predict_proba(model, Encoded(enc["test"].items[:64]), tokenizer, 32)  # warm-up
    probs, speed = {}, {}
    probs["test"], thr = predict_proba(model, enc["test"], tokenizer, 32)
    probs["validation"] = predict_proba(model, enc["validation"], tokenizer, 32)[0]
    for t in texts[:10]:
        probabilities(model, tokenizer, [t], limit)
    lat = []
    for t in texts:
        t0 = time.perf_counter()
        probabilities(model, tokenizer, [t], limit)
        lat.append(time.perf_counter() - t0)
    return probs, {"examples_per_s_b32": round(thr, 1), "p50_ms_b1": round(1000 * float(np.median(lat)), 2)}


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
    out.methods = {"int8-dynamic": "torch.ao quantize_dynamic, Linear layers, int8 weights and activations",
                   "bf16": "bfloat16 weights and activations, Linear weights pre-packed for oneDNN"}
    out.max_accuracy_drop, out.threads, out.latency_sentences = \
        MAX_ACCURACY_DROP, torch.get_num_threads(), LATENCY_SENTENCES
    limit = max_length(run_dir)
    labels = {"validation": validation.labels, "test": test.labels}
    for m in model_entries(run_dir, results):  # sweep students too
        name = m["name"]
        if models and name not in models:
            continue
        mdir = run.model_dir(name)
        tok = AutoTokenizer.from_pretrained(str(mdir))
        enc = {s: encode(split, tok, limit) for s, split in (("validation", validation), ("test", test))}
        texts = test.texts[:LATENCY_SENTENCES]
        fp32 = load_for_inference(mdir)
        ref, speed = _measure(fp32, enc, tok, texts, limit)
        entry = {"fingerprint": _stage_fingerprint(run_dir, name),
                 "fp32_accuracy": {s: test_metrics(ref[s], labels[s])["accuracy"] for s in labels},
                 "speed": {"fp32": speed}, "candidates": {}}
        for method in methods:
            t0 = time.perf_counter()
            try:
                copy_ = convert(fp32, method)  # every conversion copies; fp32 stays as it is
                c = {"build_seconds": round(time.perf_counter() - t0, 2)}
                probs, entry["speed"][method] = _measure(copy_, enc, tok, texts, limit)
            except (RuntimeError, NotImplementedError) as e:  # a kernel this CPU lacks
                entry["candidates"][method] = {"error": str(e).splitlines()[0][:300], "passed": False}
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
