"""Stage 2: students built from chosen teacher layers, trained by knowledge distillation.

Teacher outputs are computed once per training example (the teacher is frozen and in eval mode,
so they do not change) and reused across epochs and across every student."""

from __future__ import annotations

import torch
from transformers import set_seed

from ..data import Encoded, length_sorted_batches
from ..students import build_student
from . import StageEnv


@torch.inference_mode()
def teacher_outputs(teacher, encoded: Encoded, tokenizer, with_hidden: bool, batch_size: int = 64) -> dict:
    """{"teacher_logits": list of (C,) float32, "teacher_hidden": list of (L_i, H) float16} per example.
    Hidden states are stored unpadded and in float16 (the cosine loss is scale-free, and fp16 halves
    the cache: about 5k tweets x 25 tokens x 768 x 2 bytes = 0.2 GB for MPNet-base)."""
    teacher.eval()
    logits, hidden = [None] * len(encoded), [None] * len(encoded)
    for idx, batch in length_sorted_batches(encoded, tokenizer, batch_size, next(teacher.parameters()).device):
        out = teacher(**batch, output_hidden_states=with_hidden)
        lg = out.logits.float().cpu()
        hs = out.hidden_states[-1].to(torch.float16).cpu() if with_hidden else None
        lengths = batch["attention_mask"].sum(-1).tolist()
        for row, j in enumerate(idx):
            logits[j] = lg[row]
            if with_hidden:
                hidden[j] = hs[row, : lengths[row]].clone()
    cache = {"teacher_logits": logits}
    if with_hidden:
        cache["teacher_hidden"] = hidden
    return cache


def train(env: StageEnv, name: str, teacher, layers, cache: dict, fingerprint: str):
    set_seed(env.cfg.seed)
    student = build_student(teacher, layers)
    return env.fit(student, env.cfg.distill.train, name, fingerprint, train=env.train.with_fields(**cache),
                   distill=env.cfg.distill)
