"""How the memory allocator's page faults slow a CPU training step, and what removes them: the
project's own step (the Trainer with the stage's objective, bf16 autocast as accelerate wraps it, fused
AdamW, clipping) timed in child processes that differ only in their environment, the variants taking
turns round by round (the order reversed every other round), so a machine whose speed drifts slows
every variant alike. Prints seconds per step, minor page faults per step, and the median over rounds
of each variant's speed-up over the first; names the CPU, writes JSON.

Why separate processes: the allocator's settings are read once, when a process starts (glibc's
tunables) or at torch's first allocation (`THP_MEM_ALLOC_ENABLE`).

Variants:
  default   the process as `distillora run` starts it without any setting
  torch-thp THP_MEM_ALLOC_ENABLE=1: torch's CPU allocator aligns allocations of 2 MiB and more to
            2 MiB and asks the kernel for transparent huge pages (madvise), so a fresh 94 MB gradient
            faults 47 times instead of 23,000
  glibc-thp GLIBC_TUNABLES=glibc.malloc.hugetlb=1: glibc's malloc does the same for all its memory
  glibc-keep the same, and blocks up to 32 MiB (glibc's ceiling) come from the heap, which is never
            given back to the kernel (mmap_threshold, trim_threshold), so they fault only once
  glibc-heap the same with no block at all from its own mmap (mmap_max=0): the 94 MB word-embedding
            gradient and every other large block are reused from the heap instead of being mapped,
            faulted in and unmapped again each step
  heap      glibc-heap without huge pages

usage: python bench/allocator.py [--model mpnet-base] [--layers odd] [--rounds 4] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from distillora.hugepages import HUGE_PAGES, KEEP_HEAP, TUNABLES, tunables  # no torch: importable before any variant

VARIANTS = {
    "default": {},
    "torch-thp": {"THP_MEM_ALLOC_ENABLE": "1"},
    "glibc-thp": {"GLIBC_TUNABLES": tunables(HUGE_PAGES)},
    "glibc-keep": {"GLIBC_TUNABLES": tunables({**HUGE_PAGES, "glibc.malloc.mmap_threshold": str(32 << 20),
                                                "glibc.malloc.trim_threshold":
                                                    KEEP_HEAP["glibc.malloc.trim_threshold"]})},
    "glibc-heap": {"GLIBC_TUNABLES": TUNABLES},  # what `distillora` re-starts with (distillora.hugepages)
    "heap": {"GLIBC_TUNABLES": tunables(KEEP_HEAP)},
}
SETTINGS = ("THP_MEM_ALLOC_ENABLE", "GLIBC_TUNABLES")


def child(a) -> None:
    """Time `a.steps` steps after `a.steps` warm-up steps; print one JSON line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import tempfile

    from distillora.training import bit_dropout
    from side_by_side import runner, step, step_setup, trainer_for

    tok, model, enc, objective, _ = step_setup(a)
    with tempfile.TemporaryDirectory() as tmp, bit_dropout(model):
        trainer, wrapped, batches = runner(trainer_for(model, enc, tok, objective, a, Path(tmp)), model,
                                           2 * a.steps)
        for b in batches[:a.steps]:  # warm-up
            step(trainer, wrapped, b)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        for b in batches[a.steps:]:
            step(trainer, wrapped, b)
        seconds = (time.perf_counter() - start) / a.steps
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / a.steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB
    print(json.dumps({"s_per_step": seconds, "faults_per_step": faults, "bf16": trainer.args.bf16,
                      "peak_gib": peak}))


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from side_by_side import add_step_args

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mpnet-base", help="a model directory or a bundle name (mpnet-base, minilm-l6)")
    ap.add_argument("--layers", default=None, help="a student built from these layers (odd, even, 1,3,5), "
                                                  "trained by distillation; without: the teacher's step")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, the first is the reference")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    add_step_args(ap)
    a = ap.parse_args()
    if a.child:
        child(a)
        return 0

    from distillora.inference.timing import cpu_name

    names = a.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    argv = [sys.executable, __file__, "--child", "--model", a.model, "--steps", str(a.steps), "--rows",
            str(a.rows), "--batch-size", str(a.batch_size), "--precision", a.precision]
    argv += ["--layers", a.layers] if a.layers else []
    base_env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    times = {n: [] for n in names}
    faults = {n: [] for n in names}
    peaks = {n: [] for n in names}
    bf16 = None
    for rnd in range(a.rounds):
        for name in (names if rnd % 2 == 0 else names[::-1]):
            out = subprocess.run(argv, env={**base_env, **VARIANTS[name]}, capture_output=True, text=True)
            if out.returncode:
                sys.stderr.write(out.stderr[-3000:])
                return out.returncode
            r = json.loads(out.stdout.strip().splitlines()[-1])
            times[name].append(r["s_per_step"])
            faults[name].append(r["faults_per_step"])
            peaks[name].append(r.get("peak_gib", float("nan")))
            bf16 = r["bf16"]
            print(f"round {rnd + 1} {name}: {r['s_per_step']:.3f} s/step, {r['faults_per_step']:.0f} faults/step, "
                  f"peak {peaks[name][-1]:.2f} GiB",
                  flush=True)
    ref = names[0]
    what = f"{'student ' + a.layers + ' of ' if a.layers else 'teacher '}{a.model}"
    print(f"\nCPU: {cpu_name()}, {os.cpu_count()} cores; {what}, {'bf16 autocast' if bf16 else 'fp32'}, "
          f"batch {a.batch_size}, {a.rounds} rounds of {a.steps} steps, one process per variant and round")
    print("| variant | s/step per round | median s/step | faults/step (median) | peak RSS (max) | speed-up over "
          f"{ref} (median of per-round ratios) |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for n in names:
        ratios = [r / t for r, t in zip(times[ref], times[n])]
        summary[n] = {"s_per_step": times[n], "faults_per_step": faults[n], "peak_gib": peaks[n],
                      "speedup_median": statistics.median(ratios)}
        print(f"| {n} | {', '.join(f'{t:.3f}' for t in times[n])} | {statistics.median(times[n]):.3f} | "
              f"{statistics.median(faults[n]):.0f} | {max(peaks[n]):.2f} GiB | {statistics.median(ratios):.2f}x |")
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "allocator.jsonl", "a") as f:
        f.write(json.dumps({"cpu": cpu_name(), "what": what, "bf16": bf16, "rounds": a.rounds, "steps": a.steps,
                            "variants": summary, "date": time.strftime("%Y-%m-%d")}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
