"""LoRA wiring with peft: which modules to adapt per architecture, the head that must be saved
with the adapter, wrapping, and reloading a saved adapter onto a rebuilt student."""

from __future__ import annotations

from pathlib import Path

import peft
from peft import PeftModel, TaskType, get_peft_model

from .fileio import read_json
from .students import build_student

# Attention projections per architecture (query and value, as in the LoRA paper).
TARGETS = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "mpnet": ["q", "v"],
    "distilbert": ["q_lin", "v_lin"],
}
# The classification head(s) to train and save with the adapter. peft saves only what
# `modules_to_save` names; without the head a reloaded adapter predicts at random (peft #310, #577, #876).
HEADS = {"distilbert": ["pre_classifier", "classifier"]}


def target_modules(model, override: list[str] | None = None) -> list[str]:
    if override:
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        missing = [t for t in override if t not in names]
        if missing:
            raise ValueError(f"lora.target_modules {missing} not found in a {type(model).__name__}; "
                             f"leave it null to detect, or pick from its Linear layers")
        return list(override)
    mt = model.config.model_type
    if mt not in TARGETS:
        raise ValueError(f"no default LoRA targets for model_type {mt!r}; set lora.target_modules")
    return TARGETS[mt]


def head_modules(model) -> list[str]:
    mt = model.config.model_type
    if mt in HEADS:
        return HEADS[mt]
    for name in ("classifier", "score"):
        if hasattr(model, name):
            return [name]
    raise ValueError(f"cannot find the classification head of a {type(model).__name__}")


def wrap(model, r: int, alpha: int, dropout: float, targets: list[str] | None = None) -> PeftModel:
    """Freeze `model`, add LoRA adapters on the attention projections, keep the head trainable."""
    cfg = peft.LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=alpha, lora_dropout=dropout,
                          target_modules=target_modules(model, targets), modules_to_save=head_modules(model))
    return get_peft_model(model, cfg)


def load_adapter(teacher, adapter_dir: str | Path) -> PeftModel:
    """Rebuild the student the adapter was trained on (teacher layers recorded beside the adapter)
    and load the adapter, with its head, onto it."""
    meta = read_json(Path(adapter_dir) / "distillora.json")
    base = build_student(teacher, meta["teacher_layers"])
    return PeftModel.from_pretrained(base, str(adapter_dir))
