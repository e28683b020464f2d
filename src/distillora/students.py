"""Students built from a subset of a teacher's layers: `build_student(teacher, layers)`.

The student is a fresh model of the teacher's class whose config says the new depth, so
`save_pretrained` / `from_pretrained` round-trip. Weights are copied by an explicit key-by-key
mapping (as nanoGPT loads GPT-2), which checks the key count and every tensor's shape before copying.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers import PreTrainedModel

from .pooling import apply_saved

# Where each encoder keeps its list of layers, relative to the model's base-model attribute.
# MPNet's relative-position bias lives on the encoder, not in a layer, so it carries over untouched.
LAYER_LISTS = {
    "bert": "encoder.layer",
    "roberta": "encoder.layer",
    "xlm-roberta": "encoder.layer",
    "electra": "encoder.layer",
    "mpnet": "encoder.layer",
    "distilbert": "transformer.layer",
}


def parse_layers(layers, depth: int | None) -> list[int]:
    """`"odd"` -> [1, 3, ...], `"even"` -> [2, 4, ...] (1-based, up to `depth`), or a list checked
    against `depth`. With `depth=None` only the form is checked (range is checked at build time)."""
    if isinstance(layers, str):
        if layers not in ("odd", "even"):
            raise ValueError("use `odd`, `even` or a list of 1-based layer numbers such as [1, 3, 5]")
        if depth is None:
            return []
        return list(range(1 if layers == "odd" else 2, depth + 1, 2))
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError("give a non-empty list of 1-based teacher layer numbers, or `odd` / `even`")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
        raise ValueError("layer numbers must be integers (1-based), e.g. [2, 4, 6]")
    if len(set(layers)) != len(layers):
        dup = sorted({i for i in layers if list(layers).count(i) > 1})
        raise ValueError(f"layer {dup} appears more than once; each teacher layer may be used once")
    if depth is not None:
        bad = [i for i in layers if not 1 <= i <= depth]
        if bad:
            raise ValueError(f"layer {bad} out of range: the teacher has layers 1..{depth}")
    return list(layers)


def layer_list_path(model: PreTrainedModel) -> str:
    """Dotted path of the model's `nn.ModuleList` of transformer layers, e.g. `bert.encoder.layer`."""
    model_type = model.config.model_type
    base = model.base_model_prefix
    rel = LAYER_LISTS.get(model_type)
    candidates = []
    if rel is not None:
        candidates = [f"{base}.{rel}", rel]  # task model (`bert.encoder.layer`) or bare base model
    names = dict(model.named_modules())
    for c in candidates:
        if isinstance(names.get(c), nn.ModuleList):
            return c
    # Unknown architecture: accept exactly one ModuleList as long as the configured depth.
    depth = model.config.num_hidden_layers
    found = [n for n, m in names.items() if isinstance(m, nn.ModuleList) and len(m) == depth]
    if len(found) == 1:
        return found[0]
    raise ValueError(
        f"cannot find the layer list of a {type(model).__name__} (model_type {model_type!r}); "
        f"add it to distillora.students.LAYER_LISTS"
    )


def build_student(teacher: PreTrainedModel, layers) -> PreTrainedModel:
    """A new model of `teacher`'s class holding the teacher's embeddings, the teacher layers
    `layers` (1-based, in the given order; `"odd"`/`"even"` accepted) and everything after them
    (pooler, head), reading what the teacher's head reads (distillora.pooling). The teacher is not modified.

    Raises:
        ValueError: a layer number out of range, repeated, or not an integer.
    """
    depth = teacher.config.num_hidden_layers
    chosen = parse_layers(layers, depth)
    path = layer_list_path(teacher)

    config = teacher.config.__class__.from_dict(teacher.config.to_dict())
    config.num_hidden_layers = len(chosen)
    config.distillora_teacher_layers = chosen  # saved in config.json: the student's provenance
    student = type(teacher)(config)
    student.to(dtype=next(teacher.parameters()).dtype)

    # Teacher key -> student key: layer k of the student is teacher layer chosen[k]-1.
    pattern = re.compile(rf"^{re.escape(path)}\.(\d+)\.(.*)$")
    src = teacher.state_dict()
    position = {t - 1: s for s, t in enumerate(chosen)}
    mapped = {}
    for key, tensor in src.items():
        m = pattern.match(key)
        if m is None:
            mapped[key] = tensor
        elif int(m.group(1)) in position:
            mapped[f"{path}.{position[int(m.group(1))]}.{m.group(2)}"] = tensor
    dst = student.state_dict()
    missing, extra = set(dst) - set(mapped), set(mapped) - set(dst)
    if missing or extra:
        raise RuntimeError(f"student/teacher key mismatch: missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}")
    for key, tensor in mapped.items():
        if dst[key].shape != tensor.shape:
            raise RuntimeError(f"shape mismatch at {key}: student {tuple(dst[key].shape)} vs teacher {tuple(tensor.shape)}")
    with torch.no_grad():
        student.load_state_dict({k: v.detach().clone() for k, v in mapped.items()}, strict=True)
    student.train(teacher.training)
    return apply_saved(student)  # the teacher's pooling, recorded in the config copied above
