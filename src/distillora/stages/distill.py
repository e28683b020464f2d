"""Stage 2: students built from chosen teacher layers, trained by knowledge distillation.

Teacher outputs are computed once per training example (the teacher is frozen and in eval mode,
so they do not change) and reused across epochs and across every student."""

from __future__ import annotations

import torch
from transformers import set_seed

from .. import losses
from ..config import stable_section
from ..data import Encoded, length_sorted_batches
from ..losses import TEACHER_OUTPUTS
from ..students import build_student, parse_layers
from . import TEACHER, TEACHER_OUTPUTS as OUTPUTS, Kind, Stage, StageEnv, register


def objective(distill) -> str:
    """The distillation loss in one line, from the registered terms and their weights."""
    return f"distillation: {losses.describe(losses.weights_of(distill))} (T={distill.temperature:g})"


@register
def plan(cfg, resolved: dict, depth: int) -> list[Stage]:
    """One stage per `distill.students` entry."""
    recipe = stable_section(resolved, "distill", drop=("students",))
    stages = []
    for name, spec in cfg.distill.students.items():
        layers = parse_layers(spec, depth)
        stages.append(Stage(
            name=name, kind=Kind.DISTILLED, section="distill", consumes=(TEACHER, OUTPUTS),
            fingerprint_inputs=(recipe, spec), teacher_layers=layers, objective=objective(cfg.distill),
            train=lambda ctx, key, fp, layers=layers: train(ctx.env, key, ctx.model(TEACHER), layers,
                                                            ctx.teacher_outputs(), fp),
            action="distilling"))
    return stages


@torch.inference_mode()
def teacher_outputs(teacher, encoded: Encoded, tokenizer, keys=("teacher_logits",), batch_size: int = 64) -> dict:
    """{key: one tensor per example, in `encoded`'s order} for each of `keys` (see
    `losses.TEACHER_OUTPUTS`; `losses.teacher_needs` names those the active loss terms read).
    Per-token outputs keep each example's real tokens only. Sizes, for MPNet-base on about 5k tweets
    x 25 tokens: final hidden states in float16 0.2 GB, the first-token states of all 12 layers 0.09 GB."""
    teacher.eval()
    specs = {k: TEACHER_OUTPUTS[k] for k in keys}
    n = len(encoded)
    cache = {k: [None] * n for k in specs}
    hidden = any(s.hidden_states for s in specs.values())
    for idx, batch in length_sorted_batches(encoded, tokenizer, batch_size, next(teacher.parameters()).device):
        out = teacher(**batch, output_hidden_states=hidden)
        lengths = batch["attention_mask"].sum(-1).tolist()
        for key, spec in specs.items():
            values = spec.extract(out).to(spec.dtype).cpu()
            for row, j in enumerate(idx):
                cache[key][j] = values[row, : lengths[row]].clone() if spec.per_token else values[row].clone()
    return cache


def train(env: StageEnv, name: str, teacher, layers, cache: dict, fingerprint: str):
    set_seed(env.cfg.seed)
    student = build_student(teacher, layers)
    return env.fit(student, env.cfg.distill.train, name, fingerprint, train=env.train.with_fields(**cache),
                   objective=env.distillation(layers))
