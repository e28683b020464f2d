"""Inference speed of every model of a finished run, fp32 and every export candidate (int8-dynamic,
bf16; the onnx copies `distillora export` wrote, where they exist), side by side in one process: batch 1 (single-sentence latency) and batch 32 (throughput), p50/p95, ratios to the fp32
teacher. Sentences are the run's test split in its original order; warm-up before timing.

usage: python bench/inference.py --run runs/quick [--sentences 200] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from distillora import inference  # noqa: E402
from distillora.export import METHODS, _splits  # noqa: E402
from distillora.predict import finished_run, max_length  # noqa: E402


def measure(backend, texts, batch_size, limit) -> dict:
    def run(batch):  # the normalise-tokenise-forward path `predict` and the web app use
        backend.probabilities(batch, limit)

    for i in range(3):
        run(texts[i * batch_size:(i + 1) * batch_size] or texts[:batch_size])
    lat = []
    start = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        t0 = time.perf_counter()
        run(texts[i:i + batch_size])
        lat.append((time.perf_counter() - t0) * 1000)
    total = time.perf_counter() - start
    return {"p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "examples_per_s": len(texts) / total}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--sentences", type=int, default=320)
    ap.add_argument("--models", nargs="*", help="only these models (the fp32 teacher is always measured: ratios need it)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    a = ap.parse_args()
    run = Path(a.run)
    results = finished_run(run)
    _, test = _splits(run)
    texts = test.texts[: a.sentences]
    limit = max_length(run)
    rows = []
    for m in results["models"]:
        if a.models and m["name"] not in a.models and m["name"] != "teacher":
            continue
        wanted = ("fp32", *METHODS) if not a.models or m["name"] in a.models else ("fp32",)
        for method in wanted:
            copy_dir = inference.copy_dir(run, m["name"], method)
            if method in inference.ONNX_METHODS and not copy_dir.is_dir():
                continue  # not exported: `distillora export --run RUN` writes the onnx copies
            backend = inference.load(run / m["path"], method, copy_dir)
            row = {"model": m["name"], "method": backend.method, "params": m["params_total"]}
            for bs in (1, 32):
                row[f"b{bs}"] = measure(backend, texts, bs, limit)
            rows.append(row)
            del backend
    base = next(r for r in rows if r["model"] == "teacher" and r["method"] == "fp32")
    print(f"| model | method | b1 p50 ms | b1 p95 ms | b32 p50 ms | b32 ex/s | b1 speed-up | b32 speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        r["ratio_b1"] = base["b1"]["p50_ms"] / r["b1"]["p50_ms"]
        r["ratio_b32"] = r["b32"]["examples_per_s"] / base["b32"]["examples_per_s"]
        print(f"| {r['model']} | {r['method']} | {r['b1']['p50_ms']:.1f} | {r['b1']['p95_ms']:.1f} | "
              f"{r['b32']['p50_ms']:.1f} | {r['b32']['examples_per_s']:.0f} | {r['ratio_b1']:.2f}x | {r['ratio_b32']:.2f}x |")
    print(f"\n{len(texts)} test sentences, {torch.get_num_threads()} threads; speed-ups are against the fp32 teacher.")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inference.json").write_text(json.dumps({"run": str(run), "threads": torch.get_num_threads(),
                                                    "sentences": len(texts), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
