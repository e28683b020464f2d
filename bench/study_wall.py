"""Whole-study benchmark: runs a preset end to end in a child process and reports its wall time,
peak memory (max RSS of the child), and achieved training FLOP/s against this machine's fp32 matmul
rate measured in the same invocation.

Useful FLOPs count only real (non-padding) tokens T: a full fine-tuning step costs 6*P*T (forward
2PT, backward 4PT) where P is the parameters in transformer layers and head (embedding lookups are not
matrix work); a LoRA step about 4*P*T (no weight gradients for frozen layers); with
`train.freeze_lower_layers: k` of L layers, 2PT + 4PT*(L-k)/L (no backward below layer k); a forward
pass (teacher cache, validation, test) 2*P*T. Attention score products are left out (tweets are
short: under 5%). The rate is printed twice: over the whole wall time (evaluation, checks, report
and loading included) and over the stages' training seconds alone, each against the matmul peak of
the precision the study trained in, measured in the same invocation (before and after; the higher).

usage: python bench/study_wall.py --config configs/seed.yaml [--output /tmp/bench-seed] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from distillora.inference.timing import cpu_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def matmul_rate(n: int = 2048, repeats: int = 10, dtype=torch.float32) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def layer_params(model_dir: Path) -> int:
    """Parameters outside the embeddings (the matrix work per token)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        for k in f.keys():
            if "embeddings" not in k:
                total += int(torch.Size(f.get_slice(k).get_shape()).numel())
    return total


def useful_flops(run: Path) -> dict:
    from transformers import AutoTokenizer

    from distillora.config import load_config
    from distillora.data import encode, load_splits

    from distillora.fileio import read_json
    from distillora.rundir import RunDir

    rd = RunDir(run)
    cfg = load_config(rd.config)
    results = rd.results()
    splits = load_splits(cfg.data, cfg.seed)
    tok = AutoTokenizer.from_pretrained(str(rd.model_dir("teacher")))
    tokens = {s: sum(encode(getattr(splits, s), tok, cfg.data.max_length).lengths())
              for s in ("train", "validation", "test")}
    sections = {"teacher": cfg.teacher.train, "distilled": cfg.distill.train, "baseline": cfg.baseline.train,
                "lora": cfg.lora.train}
    flops, parts, train_flops, train_seconds = 0.0, {}, 0.0, 0.0
    for m in results["models"]:
        p = layer_params(rd.model_dir(m["name"]))
        kind = m["kind"]  # RunDir infers it for runs written before kinds were recorded
        tc = sections.get(kind, cfg.distill.train)  # sweep students train as the distilled ones
        epochs = len(m["train"].get("epoch_losses") or [1])  # epochs actually trained
        depth = m["num_layers"]
        # backward: 4PT through the layers that learn; LoRA's frozen layers pass input gradients only
        # (2PT); frozen lower layers (train.freeze_lower_layers) take no backward at all
        above = max(depth - tc.freeze_lower_layers, 0) / depth
        per_token = 4 if kind == "lora" else 2 + 4 * above
        # a teacher soup (teacher.soup) or restarts (teacher.restarts) train, and validate each epoch, every
        # member (the restarts' fp32 scoring passes on validation and the development sets are not counted)
        tr = read_json(rd.marker(m["name"]))["train"]
        members = len(tr.get("soup") or tr.get("restarts") or [None])
        train = per_token * p * tokens["train"] * epochs * members
        f = train + 2 * p * (tokens["validation"] * (epochs * members + 1) + tokens["test"])
        probe = tr.get("linear_probe")
        if probe:  # teacher.linear_probe_epochs, once: a forward pass only (the body is frozen), and its
            # validation passes; the epochs it ran, from its steps (it may stop early)
            lp_epochs = probe["steps"] / (tr["steps"] / (epochs * members))
            train_probe = 2 * p * tokens["train"] * lp_epochs
            train += train_probe
            f += train_probe + 2 * p * tokens["validation"] * math.ceil(lp_epochs)
        if m["name"] == "teacher":
            f += 2 * p * tokens["train"]  # the cached teacher outputs for distillation
        parts[m["name"]] = f
        flops += f
        train_flops += train
        train_seconds += float(m["train"].get("seconds") or 0.0)
    return {"tokens": tokens, "per_model": parts, "total": flops, "training": train_flops,
            "training_seconds": train_seconds}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(REPO / "configs" / "seed.yaml"))
    ap.add_argument("--output", default="/tmp/distillora-bench-study")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    peak_rate = matmul_rate()
    peak_bf16 = matmul_rate(dtype=torch.bfloat16)
    shutil.rmtree(a.output, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "distillora", "run", "--config", a.config, "--output", a.output,
                           "--quiet", *a.overrides], cwd=REPO)
    wall = time.perf_counter() - start
    if proc.returncode:
        print(f"study failed with exit code {proc.returncode}", file=sys.stderr)
        return proc.returncode
    peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    peak_rate_after = matmul_rate()
    peak_bf16_after = matmul_rate(dtype=torch.bfloat16)
    f = useful_flops(Path(a.output))
    rate = f["total"] / wall
    # the rate is judged against the peak of the precision the study trained in (results.json records it)
    from distillora.rundir import RunDir

    models = RunDir(a.output).results().models
    used = {m["train"].get("precision", "fp32") for m in models}
    precision = "bf16" if used == {"bf16"} else "fp32" if used <= {"fp32"} else "mixed"
    peaks = {"fp32": max(peak_rate, peak_rate_after), "bf16": max(peak_bf16, peak_bf16_after)}
    peak = peaks["bf16" if precision == "bf16" else "fp32"]
    result = {"config": a.config, "overrides": a.overrides, "wall_seconds": wall, "peak_rss_bytes": peak_rss,
              "cpu": cpu_name(), "threads": torch.get_num_threads(), "precision": precision,
              "matmul_flops_per_s": {"fp32": {"before": peak_rate, "after": peak_rate_after},
                                     "bf16": {"before": peak_bf16, "after": peak_bf16_after}},
              "useful_flops": f, "achieved_flops_per_s": rate, "fraction_of_matmul_peak": rate / peak}
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads; trained in {precision}")
    train_rate = f["training"] / f["training_seconds"] if f["training_seconds"] else 0.0
    result["training_flops_per_s"] = train_rate
    result["training_fraction_of_matmul_peak"] = train_rate / peak
    print(f"| preset | wall | peak memory | useful FLOP | achieved FLOP/s (whole study) | during training only "
          f"| {precision} matmul FLOP/s | share (whole / training) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {Path(a.config).stem} | {wall / 60:.1f} min | {peak_rss / 2**30:.2f} GiB | {f['total']:.2e} | "
          f"{rate / 1e9:.1f} G | {train_rate / 1e9:.1f} G | {peak / 1e9:.1f} G | "
          f"{100 * rate / peak:.0f}% / {100 * train_rate / peak:.0f}% |")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"study_{Path(a.config).stem}.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
