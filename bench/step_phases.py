"""Where a training step's time goes, timed without the profiler: the project's own step (the Trainer's
loss under accelerate's bf16 autocast when bf16 is used, BitDropout as `fit` swaps it in on CPU, the
study's clipping, fused AdamW and scheduler) split into forward and loss, backward, clipping, optimizer
and scheduler, gradients dropped; each phase's wall time summed over the same batches, with the useful
FLOP rate of the forward (2NT) and backward (4NT) against this machine's matmul rate of the precision
used, measured in the same run. Names the CPU.

Why beside `profile_step.py`: under torch.profiler some ops ran many times slower than the same ops
timed in the same process without it (the 94 MB word-embedding gradient's zero-fill 124-166 ms against
2.6 ms; docs/performance.md, "Seventh session"), so the profiler's shares are a guide to which ops
run, not to what they cost.

usage: python bench/step_phases.py [--model mpnet-base] [--layers odd] [--steps 16] [--rows 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from distillora.hugepages import restart_with_huge_pages  # noqa: E402  (imports no torch)

if __name__ == "__main__":  # time as a run does (distillora.hugepages, "Benches")
    restart_with_huge_pages()

sys.path.insert(0, str(Path(__file__).resolve().parent))

PHASES = ("forward and loss", "backward", "clip", "optimizer and scheduler", "zero_grad")


def main() -> int:
    from side_by_side import add_step_args, runner, step, step_setup, trainer_for

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mpnet-base", help="a model directory or a bundle name (mpnet-base, minilm-l6)")
    ap.add_argument("--layers", default=None, help="a student built from these layers (odd, even, 1,3,5), "
                                                  "trained by distillation; without: the teacher's step")
    ap.add_argument("--warmup", type=int, default=3)
    add_step_args(ap)
    a = ap.parse_args()

    import torch

    from distillora.inference.timing import cpu_name
    from distillora.training import bit_dropout
    from study_wall import matmul_rate

    tok, model, enc, objective, desc = step_setup(a)
    with tempfile.TemporaryDirectory() as tmp, bit_dropout(model):
        trainer, wrapped, batches = runner(trainer_for(model, enc, tok, objective, a, Path(tmp)), model,
                                           a.warmup + a.steps)
        for b in batches[:a.warmup]:
            step(trainer, wrapped, b)
        seconds = dict.fromkeys(PHASES, 0.0)
        tokens = padded = 0
        for b in batches[a.warmup:]:
            b = dict(b)
            tokens += int(b["attention_mask"].sum())
            padded += b["attention_mask"].numel()
            t = [time.perf_counter()]
            # the pieces of `side_by_side.step` (the Trainer's training_step, then its loop's own work)
            with trainer.compute_loss_context_manager():
                loss = trainer.compute_loss(wrapped, trainer._prepare_inputs(b))
            t.append(time.perf_counter())
            trainer.accelerator.backward(loss)
            t.append(time.perf_counter())
            trainer._clip_grad_norm(wrapped)
            t.append(time.perf_counter())
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
            t.append(time.perf_counter())
            trainer.optimizer.zero_grad(set_to_none=True)
            t.append(time.perf_counter())
            for name, start, end in zip(PHASES, t, t[1:]):
                seconds[name] += end - start
        bf16 = trainer.args.bf16
    peak = matmul_rate(dtype=torch.bfloat16 if bf16 else torch.float32)
    # N: the weights a token's matrix products use (not the embeddings, which are looked up)
    n = sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name and p.requires_grad)
    total = sum(seconds.values())
    fwd, bwd = seconds["forward and loss"], seconds["backward"]
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; {desc}, {'bf16 autocast' if bf16 else 'fp32'}, "
          f"batch {a.batch_size}, {a.steps} steps after {a.warmup} warm-up steps, {tokens / a.steps:.0f} real tokens/step "
          f"({100 * tokens / padded:.0f}% of the padded batches)")
    print(f"{total / a.steps:.3f} s/step; useful 6NT {6 * n * tokens / total / 1e9:.0f} GFLOP/s; "
          f"{'bf16' if bf16 else 'fp32'} matmul peak (2048^2, this run) {peak / 1e9:.0f} GFLOP/s")
    print("| phase | ms/step | share | useful GFLOP/s of the phase |")
    print("|---|---|---|---|")
    for name, s in seconds.items():
        rate = {"forward and loss": 2 * n * tokens / fwd, "backward": 4 * n * tokens / bwd}.get(name)
        print(f"| {name} | {s / a.steps * 1e3:.0f} | {100 * s / total:.0f}% | {f'{rate / 1e9:.0f}' if rate else ''} |")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "step_phases.jsonl", "a") as f:
        f.write(json.dumps({"cpu": cpu_name(), "glibc_tunables": os.environ.get("GLIBC_TUNABLES"), "what": desc, "bf16": bf16, "steps": a.steps, "tokens": tokens,
                            "padded_tokens": padded, "ms_per_step": {k: 1e3 * v / a.steps for k, v in seconds.items()},
                            "peak_gflops": peak / 1e9, "date": time.strftime("%Y-%m-%d")}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
