"""Where a training step's time goes: runs a few steps of the project's own pipeline (the Trainer with
the Distillation objective, or the teacher's cross-entropy with `--layers teacher`, its collator,
length-grouped batches, optimizer, and bf16 autocast as accelerate wraps the forward) under torch.profiler
and prints the share of self CPU time per kind of work, with the matmul kernels' own FLOP rate against
this machine's matmul rate of the precision used, measured in the same run.

usage: python bench/profile_step.py [--teacher runs/seed/models/teacher] [--layers odd|teacher] [--steps 12]
                                    [--rows 1024] [--precision auto] [--dropout bit|torch] [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from study_wall import matmul_rate  # noqa: E402

# First match wins: the op's name (aten:: or a torch.autograd backward node) → kind of work.
KINDS = [
    ("matmul", r"aten::(addmm|mm|bmm|matmul|linear|_addmm_activation|baddbmm)$"),
    ("optimizer", r"(adam|Optimizer|_foreach|_fused)"),
    ("attention", r"(softmax|_softmax|scaled_dot_product|_efficient_attention|_flash_attention)"),
    ("layernorm", r"layer_norm"),
    ("gelu", r"gelu"),
    ("dropout", r"(dropout|bernoulli|native_dropout)"),
    ("embedding", r"(embedding|index_select|index_add|scatter|gather)"),
    ("copy/layout", r"aten::(copy_|to|_to_copy|contiguous|clone|cat|stack|t|transpose|view|reshape|permute|"
                    r"expand|as_strided|empty|empty_like|zeros|zero_|fill_|ones|new_zeros|slice|select|unsqueeze)$"),
    ("elementwise", r"aten::(add|add_|mul|mul_|div|div_|sub|rsub|sum|mean|pow|sqrt|exp|log|where|masked_fill|"
                    r"tanh|neg|abs|clamp|max|min|argmax|cumsum|ne|eq|gt|lt|ge|le|sign|log_softmax|"
                    r"_log_softmax|nll_loss|.*_backward)"),
]


def kind(name: str) -> str:
    for k, pat in KINDS:
        if re.search(pat, name):
            return k
    return "other"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default=str(REPO / "runs" / "seed" / "models" / "teacher"),
                    help="a fine-tuned teacher directory (the seed run's) or a bundle name such as mpnet-base")
    ap.add_argument("--layers", default="odd", help="the student's layers (odd, even, 1,3,5), or `teacher` for the "
                                                     "teacher's own cross-entropy step on the full model")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--dropout", default="bit", choices=["bit", "torch"],
                    help="bit: training.BitDropout, as fit uses on CPU; torch: nn.Dropout")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--compile", action="store_true",
                    help="also time the same steps with torch.compile (inductor fuses the element-wise work); "
                         "prints compile seconds and step time, without the profiler")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    a = ap.parse_args()

    from transformers import AutoTokenizer

    from distillora.bundles import resolve
    from distillora.config import DataConfig, DistillConfig, TrainConfig
    from distillora.data import Collator, encode, load_splits
    from distillora.stages.distill import teacher_outputs
    from distillora.students import build_student, parse_layers
    from distillora.stages.teacher import load_pretrained
    from distillora.training import CrossEntropy, Distillation, StudyTrainer, bit_dropout, training_args, use_bf16

    torch.manual_seed(0)
    source = resolve(a.teacher) if not Path(a.teacher).is_dir() else a.teacher
    tok = AutoTokenizer.from_pretrained(source)
    teacher = load_pretrained(source, ["not_hate", "hate"])
    splits = load_splits(DataConfig(source=str(REPO.parent / "shared" / "data" / "hate_speech_twitter"),
                                    normalize="hate_speech_twitter"), 42)
    train = splits.train
    train = type(train)(train.texts[: a.rows], train.labels[: a.rows])  # a slice: the step is what is timed
    enc = encode(train, tok, 128)
    tc = TrainConfig(epochs=1, batch_size=a.batch_size, precision=a.precision)
    if a.layers == "teacher":  # the teacher's own step: cross-entropy on the full model
        student, objective = teacher, CrossEntropy(None)
    else:
        student = build_student(teacher, a.layers)
        objective = Distillation(DistillConfig(), parse_layers(a.layers, teacher.config.num_hidden_layers))
        enc = enc.with_fields(**teacher_outputs(teacher, enc, tok, objective.teacher_needs,
                                                bf16=use_bf16(tc.precision)))
        del teacher
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        args = training_args(tc, Path(tmp), 42, "f1_macro", quiet=True)
        trainer = StudyTrainer(model=student, args=args, train_dataset=enc, eval_dataset=enc,
                               data_collator=Collator(tok), processing_class=tok, objective=objective)
        trainer.create_optimizer_and_scheduler(num_training_steps=3 * (a.steps + a.warmup))
        batches = list(trainer.get_train_dataloader())[: a.steps + a.warmup]
        opt, sched = trainer.optimizer, trainer.lr_scheduler
        # as the Trainer's own loop does: accelerate wraps forward in bf16 autocast when args.bf16 (before
        # 2026-11-30 this script skipped that and so profiled fp32 steps), and fit swaps in BitDropout on CPU
        model = trainer.accelerator.prepare_model(student) if args.bf16 else student
        if a.dropout == "bit":
            stack.enter_context(bit_dropout(student))
        model.train()
        trainer.current_gradient_accumulation_steps = 1  # normally set by the Trainer's own loop

        def step(b):
            trainer.training_step(model, dict(b))
            torch.nn.utils.clip_grad_norm_(student.parameters(), args.max_grad_norm)
            opt.step()
            sched.step()
            student.zero_grad(set_to_none=True)

        for b in batches[: a.warmup]:
            step(b)
        peak = matmul_rate(dtype=torch.bfloat16 if args.bf16 else torch.float32)
        tokens = sum(int(b["attention_mask"].sum()) for b in batches[a.warmup:])
        padded = sum(b["attention_mask"].numel() for b in batches[a.warmup:])
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=False, with_flops=True) as prof:
            for b in batches[a.warmup:]:
                step(b)
        wall = time.perf_counter() - start
        plain = time.perf_counter()
        for b in batches[a.warmup:]:
            step(b)
        plain = (time.perf_counter() - plain) / a.steps
        compiled = None
        if a.compile:
            trainer.model_wrapped = model = torch.compile(model, dynamic=True)
            t0 = time.perf_counter()
            for b in batches[: a.warmup]:
                step(b)
            compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for b in batches[a.warmup:]:
                step(b)
            compiled = {"compile_and_warmup_seconds": compile_s, "seconds_per_step": (time.perf_counter() - t0) / a.steps}

    by_kind, flops_by_kind, top = defaultdict(float), defaultdict(float), defaultdict(float)
    for e in prof.key_averages():
        k = kind(e.key)
        by_kind[k] += e.self_cpu_time_total / 1e6
        flops_by_kind[k] += e.flops or 0
        top[e.key] += e.self_cpu_time_total / 1e6
    total = sum(by_kind.values())
    params = sum(p.numel() for n, p in student.named_parameters() if "embeddings" not in n)
    useful = 6 * params * tokens
    precision = "bf16 autocast" if args.bf16 else "fp32"
    print(f"{'teacher' if a.layers == 'teacher' else 'student ' + a.layers} of {a.teacher}, {precision}, {a.dropout} "
          f"dropout: {a.steps} steps of batch {a.batch_size}, {tokens} real tokens "
          f"({100 * tokens / padded:.0f}% of padded), {wall:.2f} s wall under the profiler "
          f"({wall / a.steps:.3f} s/step)")
    print(f"without the profiler: {plain:.3f} s/step = {6 * params * tokens / a.steps / plain / 1e9:.1f} GFLOP/s useful"
          + (f"; torch.compile: {compiled['seconds_per_step']:.3f} s/step after {compiled['compile_and_warmup_seconds']:.0f} s "
             f"of compiling and warm-up" if compiled else ""))
    print(f"{'bf16' if args.bf16 else 'fp32'} matmul peak (2048^2, this run): {peak / 1e9:.1f} GFLOP/s; useful 6PT FLOP/s: "
          f"{useful / wall / 1e9:.1f} G = {100 * useful / wall / peak:.0f}% of peak")
    print("| kind of work | self CPU s | share | GFLOP/s of its own ops |")
    print("|---|---|---|---|")
    for k, s in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        rate = f"{flops_by_kind[k] / s / 1e9:.1f}" if flops_by_kind[k] and s else ""
        print(f"| {k} | {s:.2f} | {100 * s / total:.1f}% | {rate} |")
    print("\ntop ops by self CPU time:")
    for name, s in sorted(top.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {s:7.3f} s  {100 * s / total:5.1f}%  {name}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile_step.json").write_text(json.dumps({
        "teacher": a.teacher, "layers": a.layers, "precision": precision, "dropout": a.dropout, "steps": a.steps, "batch_size": a.batch_size,
        "real_tokens": tokens, "padded_tokens": padded, "wall_seconds": wall, "matmul_peak_flops_per_s": peak,
        "useful_flops_per_s": useful / wall,
        "seconds_per_step_without_profiler": plain, "compiled": compiled, "self_cpu_seconds_by_kind": by_kind,
        "flops_by_kind": flops_by_kind, "top_ops": dict(sorted(top.items(), key=lambda kv: -kv[1])[:30]),
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
