"""LoRA wiring with peft: which modules to adapt per architecture, the head that must be saved
with the adapter, wrapping, and reloading a saved adapter onto a rebuilt student."""

from __future__ import annotations

from pathlib import Path

import peft
import torch
from peft import PeftModel, get_peft_model

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
# The classification head: (trained in full and saved with the adapter, adapted by LoRA). peft saves
# only what `modules_to_save` names; without the head a reloaded adapter predicts at random (peft #310,
# #577, #876). MPNet/RoBERTa/ELECTRA heads start with a hidden x hidden dense layer (0.59M parameters
# for MPNet-base, about 0.9% of a 6-layer student by itself); it gets a low-rank adapter like the
# attention projections, and only the final projection is trained in full, keeping the LoRA student
# well under 1% trainable. BERT's head is a single Linear (its pooler stays frozen).
HEADS = {
    "mpnet": (["classifier.out_proj"], ["classifier.dense"]),
    "roberta": (["classifier.out_proj"], ["classifier.dense"]),
    "xlm-roberta": (["classifier.out_proj"], ["classifier.dense"]),
    "electra": (["classifier.out_proj"], ["classifier.dense"]),
    "distilbert": (["classifier"], ["pre_classifier"]),
}


def target_modules(model, override: str | list[str] | None = None) -> list[str]:
    if override == "all-linear":
        # Every Linear inside the transformer layers (attention projections and feed-forward), by short
        # name. peft's own "all-linear" would also take the head's dense layer, which HEADS handles.
        from .students import layer_list_path

        path = layer_list_path(model)
        return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                       if n.startswith(path + ".") and isinstance(m, torch.nn.Linear)})
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


def head_modules(model) -> tuple[list[str], list[str]]:
    """(modules trained in full and saved with the adapter, head modules given a LoRA adapter)."""
    mt = model.config.model_type
    if mt in HEADS:
        return HEADS[mt]
    for name in ("classifier", "score"):
        if hasattr(model, name):
            return [name], []
    raise ValueError(f"cannot find the classification head of a {type(model).__name__}; set lora.target_modules "
                     f"and add the architecture to distillora.lora.HEADS")


def wrap(model, r: int, alpha: int, dropout: float, targets: str | list[str] | None = None) -> PeftModel:
    """Freeze `model`, add LoRA adapters on the attention projections, keep the head trainable."""
    save, adapt = head_modules(model)
    # No task_type: peft's SEQ_CLS wrapper always adds the whole `classifier` to modules_to_save, which
    # would train MPNet's dense head layer in full (see HEADS). The generic PeftModel forwards `labels`
    # to the model, which computes the loss, so nothing else changes.
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                          target_modules=target_modules(model, targets) + adapt, modules_to_save=save)
    return get_peft_model(model, cfg)


def load_adapter(teacher, adapter_dir: str | Path) -> PeftModel:
    """Rebuild the student the adapter was trained on (teacher layers recorded beside the adapter)
    and load the adapter, with its head, onto it."""
    meta = read_json(Path(adapter_dir) / "distillora.json")
    base = build_student(teacher, meta["teacher_layers"])
    return PeftModel.from_pretrained(base, str(adapter_dir))
