"""Stage 4: the LoRA student: a student built from the fine-tuned teacher's layers, frozen, with
peft LoRA adapters on the attention projections; only the adapters and the head train.

Saves the adapter (with its head) and a merged copy, and checks that the merged copy predicts what
the adapter does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from transformers import set_seed

from .. import lora
from ..evaluate import predict_proba
from ..fileio import write_json
from ..config import stable_section
from ..students import build_student, parse_layers
from .base import TEACHER, TEACHER_OUTPUTS, Kind, Stage, StageEnv, register

MERGE_TOLERANCE = 1e-4


@register
def plan(cfg, resolved: dict, depth: int) -> list[Stage]:
    if not cfg.lora.enabled:
        return []
    from .distill import objective as distill_objective

    c = cfg.lora
    distilled = c.objective == "distill"
    # the distill objective reads distill.*'s loss weights and temperature, not the students' training
    # settings (distill.train): changing how the students train leaves the LoRA student as it is
    recipe = stable_section(resolved, "distill", drop=("students", "train")) if distilled else None
    loss = "distillation (as distill)" if distilled else "cross-entropy"
    return [Stage(
        name="lora", kind=Kind.LORA, section="lora", consumes=(TEACHER, TEACHER_OUTPUTS) if distilled else (TEACHER,),
        fingerprint_inputs=(stable_section(resolved, "lora"), recipe), teacher_layers=parse_layers(c.layers, depth),
        objective=(f"{loss}, LoRA r={c.r} alpha={c.alpha} dropout={c.dropout:g} on "
                   f"{c.target_modules or 'query, value'}; adapters + head trainable"
                   + (f" [{distill_objective(cfg.distill)}]" if distilled else "")),
        train=lambda ctx, key, fp: train(ctx.env, ctx.model(TEACHER), fp, key,
                                         ctx.teacher_outputs() if distilled else None),
        save=lambda ctx, model, stats, out: save(ctx.env, model, stats, out),
        record=lambda stats: {"params_trainable": stats["params_trainable"]}, action="LoRA")]


def train(env: StageEnv, teacher, fingerprint: str, key: str = "lora", cache: dict | None = None):
    """`cache`: the cached teacher outputs, needed when `lora.objective` is distill."""
    c = env.cfg.lora
    set_seed(env.cfg.seed)
    layers = parse_layers(c.layers, teacher.config.num_hidden_layers)
    student = build_student(teacher, layers)
    model = lora.wrap(student, c.r, c.alpha, c.dropout, c.target_modules)
    if c.objective == "distill":
        model, stats = env.fit(model, c.train, key, fingerprint, train=env.train.with_fields(**cache),
                               objective=env.distillation(layers, c.train))
    else:
        model, stats = env.fit(model, c.train, key, fingerprint)
    stats["target_modules"] = list(model.peft_config["default"].target_modules)
    stats["teacher_layers"] = parse_layers(c.layers, teacher.config.num_hidden_layers)
    return model, stats


def save(env: StageEnv, model, stats: dict, out: Path) -> None:
    """Write the adapter to `out/adapter` and the merged model to `out`; raise if they disagree."""
    model.save_pretrained(str(out / "adapter"))
    write_json(out / "adapter" / "distillora.json", {
        "teacher_layers": stats["teacher_layers"],
        "note": "base = distillora.build_student(<run>/models/teacher, teacher_layers); "
                "load with distillora.lora.load_adapter(teacher, this_dir)",
    })
    unmerged, _ = predict_proba(model, env.validation, env.tokenizer)
    merged = model.merge_and_unload()
    merged_probs, _ = predict_proba(merged, env.validation, env.tokenizer)
    diff = float(np.abs(unmerged - merged_probs).max())
    stats["merge_max_abs_diff"] = diff
    if diff > MERGE_TOLERANCE:
        raise RuntimeError(f"merged LoRA model differs from the adapter by {diff:.2e} (> {MERGE_TOLERANCE}); "
                           f"not saving a merged copy that predicts differently")
    merged.config.distillora_teacher_layers = stats["teacher_layers"]
    merged.save_pretrained(str(out))
    env.tokenizer.save_pretrained(str(out))
