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
def teacher_outputs(teacher, encoded: Encoded, tokenizer, with_hidden: bool, with_layers: bool = False,
                    batch_size: int = 64) -> dict:
    """Per example, in `encoded`'s order: {"teacher_logits": (C,) float32, "teacher_hidden": (L_i, H)
    float16 final hidden states, "teacher_layers": (depth, H) float16 first-token state of every layer}.
    Hidden states are stored unpadded and in float16 (both terms that read them are scale-free, and
    fp16 halves the cache: about 5k tweets x 25 tokens x 768 x 2 bytes = 0.2 GB for MPNet-base; the
    first-token states of all 12 layers add 5k x 12 x 768 x 2 bytes = 0.09 GB)."""
    teacher.eval()
    n = len(encoded)
    logits, hidden, layers = [None] * n, [None] * n, [None] * n
    for idx, batch in length_sorted_batches(encoded, tokenizer, batch_size, next(teacher.parameters()).device):
        out = teacher(**batch, output_hidden_states=with_hidden or with_layers)
        lg = out.logits.float().cpu()
        hs = out.hidden_states[-1].to(torch.float16).cpu() if with_hidden else None
        ls = torch.stack([h[:, 0] for h in out.hidden_states[1:]], 1).to(torch.float16).cpu() if with_layers else None
        lengths = batch["attention_mask"].sum(-1).tolist()
        for row, j in enumerate(idx):
            logits[j] = lg[row]
            if with_hidden:
                hidden[j] = hs[row, : lengths[row]].clone()
            if with_layers:
                layers[j] = ls[row].clone()
    cache = {"teacher_logits": logits}
    if with_hidden:
        cache["teacher_hidden"] = hidden
    if with_layers:
        cache["teacher_layers"] = layers
    return cache


def train(env: StageEnv, name: str, teacher, layers, cache: dict, fingerprint: str):
    set_seed(env.cfg.seed)
    student = build_student(teacher, layers)
    return env.fit(student, env.cfg.distill.train, name, fingerprint, train=env.train.with_fields(**cache),
                   distill=env.cfg.distill, layer_map=list(layers))
