"""Stage 2: students built from chosen teacher layers, trained by knowledge distillation.

Teacher outputs are computed once per training example (the teacher is frozen and in eval mode,
so they do not change) and reused across epochs and across every student."""

from __future__ import annotations

from transformers import set_seed

from .. import losses
from ..config import stable_section
from ..students import build_student, parse_layers
from .base import teacher_outputs  # noqa: F401  (its home is base; imported from here by callers)
from .base import TEACHER, TEACHER_OUTPUTS as OUTPUTS, Kind, Stage, StageEnv, register


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


def train(env: StageEnv, name: str, teacher, layers, cache: dict, fingerprint: str):
    set_seed(env.cfg.seed)
    student = build_student(teacher, layers)
    return env.fit(student, env.cfg.distill.train, name, fingerprint, train=env.train.with_fields(**cache),
                   objective=env.distillation(layers, env.cfg.distill.train))
