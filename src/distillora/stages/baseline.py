"""Stage 3: the baseline student: the same layer selection, all weights fine-tuned with
cross-entropy only (no teacher signal): the seed's "standard fine-tuned student"."""

from __future__ import annotations

from transformers import set_seed

from ..config import stable_section
from ..students import build_student, parse_layers
from .base import TEACHER, Kind, Stage, StageEnv, register


@register
def plan(cfg, resolved: dict, depth: int) -> list[Stage]:
    if not cfg.baseline.enabled:
        return []
    return [Stage(
        name="baseline", kind=Kind.BASELINE, section="baseline", consumes=(TEACHER,),
        fingerprint_inputs=(stable_section(resolved, "baseline"),), teacher_layers=parse_layers(cfg.baseline.layers, depth),
        objective="cross-entropy, all weights fine-tuned (no teacher signal)",
        train=lambda ctx, key, fp: train(ctx.env, ctx.model(TEACHER), fp, key), action="cross-entropy")]


def train(env: StageEnv, teacher, fingerprint: str, key: str = "baseline"):
    set_seed(env.cfg.seed)
    student = build_student(teacher, env.cfg.baseline.layers)
    return env.fit(student, env.cfg.baseline.train, key, fingerprint)
