"""Variants of one CPU training step timed side by side in one process, on the project's own step
(the Trainer with the stage's objective, its collator, length-grouped batches, bf16 autocast as
accelerate wraps it, fused AdamW, clipping, scheduler), the copies of the model taking turns round by
round on the same batches. Prints seconds per step, the warm-up round's seconds, the speed-up over the
first variant; names the CPU, writes JSON.

  --compare dropout: torch's `nn.Dropout` (`bernoulli_`, each element's mask drawn separately) against
                     `training.BitDropout` (four 16-bit draws per 64-bit random number; what `fit` uses on CPU)
  --compare compile: eager against `torch.compile(model, dynamic=True)` (the whole model, forward and
                     backward) and against regional compilation (each encoder layer compiled, the
                     repeated block compiled once), all with BitDropout. The warm-up round holds the
                     compilation.

usage: python bench/step_variants.py [--compare dropout|compile] [--model mpnet-base] [--layers odd] [--rounds 4] [--steps 6]
  without --layers: the teacher's step (cross-entropy on the full model `--model`)
  with --layers: a student built from `--model`'s layers, trained by distillation on cached outputs
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from distillora.hugepages import restart_with_huge_pages  # noqa: E402  (imports no torch)

if __name__ == "__main__":  # time as a run does (distillora.hugepages, "Benches")
    restart_with_huge_pages()

import torch  # noqa: E402

from distillora.inference.timing import cpu_name  # noqa: E402
from side_by_side import add_step_args, alternate, runner, step_setup, trainer_for  # noqa: E402

VARIANTS = {"dropout": ("torch", "bit"), "compile": ("eager", "compiled", "regional")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--compare", default="dropout", choices=list(VARIANTS))
    ap.add_argument("--model", default="mpnet-base", help="a model directory or a bundle name (mpnet-base, minilm-l6)")
    ap.add_argument("--layers", default=None, help="build a student from these layers (odd, even, 1,3,5)")
    add_step_args(ap)
    a = ap.parse_args()

    from distillora.training import bit_dropout

    tok, base, enc, objective, what = step_setup(a)
    need = a.steps * (a.rounds + 1)
    runners, tmp, stack = {}, tempfile.TemporaryDirectory(), ExitStack()
    modes = VARIANTS[a.compare]
    swapped = 0  # dropout modules BitDropout replaced (0 when only torch's dropout runs)
    for mode in modes:
        m = copy.deepcopy(base)
        trainer = trainer_for(m, enc, tok, objective, a, Path(tmp.name) / mode)
        if mode != "torch":
            swapped = stack.enter_context(bit_dropout(m))
        trainer, stepped, batches = runner(trainer, m, need)
        if mode == "compiled":
            stepped = torch.compile(stepped, dynamic=True)
        elif mode == "regional":  # in place; every layer shares the one compiled block
            for block in m.base_model.encoder.layer:
                block.compile(dynamic=True)
        runners[mode] = (trainer, stepped, batches)

    times, warmup = alternate(runners, a.rounds, a.steps)
    stack.close()
    tmp.cleanup()

    med = {m: statistics.median(v) for m, v in times.items()}
    first = modes[0]
    # the variants of one round ran back to back on the same batches, so the speed-up is the median
    # of the per-round ratios (a machine whose speed drifts between rounds moves both sides of a ratio)
    ratio = {m: statistics.median(f / t for f, t in zip(times[first], times[m])) for m in modes}
    precision = "bf16" if runners[first][0].args.bf16 else "fp32"
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} torch threads; {what}; batch {a.batch_size}; {precision}; "
          f"{swapped} dropout modules; {a.rounds} alternating rounds of {a.steps} steps per variant")
    print(f"| {a.compare} | s/step (median of rounds) | rounds | warm-up round (s) | speed-up over {first} "
          f"(median of per-round ratios) |")
    print("|---|---|---|---|---|")
    for m in modes:
        print(f"| {m} | {med[m]:.3f} | {', '.join(f'{t:.3f}' for t in times[m])} | {warmup[m]:.1f} | "
              f"{ratio[m]:.2f}x |")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{a.compare}_step" + (f"_{a.layers.replace(',', '-')}" if a.layers else "_teacher")
    (out / f"{name}.json").write_text(json.dumps({
        "cpu": cpu_name(), "glibc_tunables": os.environ.get("GLIBC_TUNABLES"), "threads": torch.get_num_threads(), "compare": a.compare, "model": a.model,
        "layers": a.layers, "batch_size": a.batch_size, "precision": precision, "rounds": a.rounds,
        "steps": a.steps, "dropout_modules": swapped, "seconds_per_step": times, "warmup_seconds": warmup,
        "median": med, "speedup_median_of_round_ratios": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
