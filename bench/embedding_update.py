"""What the word-embedding update costs a student's training step: dense (AdamW on every row,
transformers' default), frozen (`train.freeze_word_embeddings`) and sparse (`train.sparse_word_embeddings`:
SparseAdam on the rows a batch uses),
timed side by side in one process on the project's own distillation step (the Trainer with the Distillation objective, its collator,
length-grouped batches, optimizer, clipping, scheduler), the three students taking turns round by round.
Prints seconds per step and each mode's speed-up over dense, names the CPU, writes JSON.

Accuracy is a separate measurement (validation and the dev set, never test):
    python bench/student_recipe.py --config configs/quick.yaml --teacher <run>/models/teacher --stage distill \\
        --layers "[1,3,5]" --name frozen distill.train.freeze_word_embeddings=true

usage: python bench/embedding_update.py [--teacher runs/seed/models/teacher] [--layers odd] [--rounds 4]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from distillora.hugepages import restart_with_huge_pages  # noqa: E402  (imports no torch)

if __name__ == "__main__":  # time as a run does (distillora.hugepages, "Benches")
    restart_with_huge_pages()

import torch  # noqa: E402

from distillora.inference.timing import cpu_name  # noqa: E402
from side_by_side import REPO, add_step_args, alternate, layers_arg, runner, train_slice, trainer_for  # noqa: E402

MODES = ("dense", "frozen", "sparse")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default=str(REPO / "runs" / "seed" / "models" / "teacher"),
                    help="a fine-tuned teacher directory or a bundle name such as mpnet-base / minilm-l6")
    ap.add_argument("--layers", default="odd")
    add_step_args(ap)
    a = ap.parse_args()

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distillora import pooling
    from distillora.bundles import resolve
    from distillora.config import DistillConfig
    from distillora.stages.distill import teacher_outputs
    from distillora.students import build_student
    from distillora.training import Distillation

    torch.manual_seed(0)
    source = a.teacher if Path(a.teacher).is_dir() else resolve(a.teacher)
    tok = AutoTokenizer.from_pretrained(source)
    teacher = pooling.apply_saved(AutoModelForSequenceClassification.from_pretrained(source, num_labels=2))
    enc = train_slice(tok, a.rows)
    base = build_student(teacher, layers_arg(a.layers))
    objective = Distillation(DistillConfig(), list(range(1, base.config.num_hidden_layers + 1)))
    cache = teacher_outputs(teacher, enc, tok, objective.teacher_needs)
    del teacher
    need = a.steps * (a.rounds + 1)
    runners, tmp = {}, tempfile.TemporaryDirectory()
    for mode in MODES:
        student = copy.deepcopy(base)
        emb = student.get_input_embeddings()
        emb.weight.requires_grad_(mode != "frozen")
        emb.sparse = mode == "sparse"
        trainer = trainer_for(student, enc.with_fields(**cache), tok, objective, a, Path(tmp.name) / mode,
                              sparse_embeddings=mode == "sparse")
        runners[mode] = runner(trainer, student, need)

    times, _ = alternate(runners, a.rounds, a.steps)
    tmp.cleanup()

    med = {m: statistics.median(v) for m, v in times.items()}
    precision = "bf16" if runners["dense"][0].args.bf16 else "fp32"
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} torch threads; student {a.layers} of {a.teacher}; "
          f"batch {a.batch_size}; {precision}; {a.rounds} alternating rounds of {a.steps} steps per mode")
    print("| word embeddings | s/step (median of rounds) | speed-up over dense |")
    print("|---|---|---|")
    for m in MODES:
        print(f"| {m} | {med[m]:.3f} | {med['dense'] / med[m]:.2f}x |")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "embedding_update.json").write_text(json.dumps({
        "cpu": cpu_name(), "glibc_tunables": os.environ.get("GLIBC_TUNABLES"), "threads": torch.get_num_threads(), "teacher": a.teacher, "layers": a.layers,
        "batch_size": a.batch_size, "precision": precision, "rounds": a.rounds, "steps": a.steps,
        "seconds_per_step": times, "median": med}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
