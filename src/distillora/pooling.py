"""What a classifier's head reads: the first token, as transformers' sequence-classification heads do,
or the masked mean of the last hidden states, the pooling that sentence-transformers bundles (both
offline teachers, mpnet-base and minilm-l6) were trained to be read through.

Why a hook and not a head class of our own: every model stays an `AutoModelForSequenceClassification`,
so transformers' saving and loading, peft's LoRA, `build_student`, the exports and the Trainer work on
it unchanged. The choice is saved in the model's config.json (`distillora_pooling`), as the normaliser
is, and every place that builds or loads a model here (`load_pretrained`, `build_student`,
`stages.load_model`, `inference.torch_backend`) re-installs it, so a model loaded anywhere in
distillora reads what it was trained to read. Plain `AutoModelForSequenceClassification.from_pretrained`
outside distillora does not: call `pooling.apply_saved(model)` after loading.

The hook sits on the base model (`model.base_model`: `bert`, `mpnet`, ...) and replaces position 0 of
its `last_hidden_state` by the mean over the tokens the attention mask keeps. The heads of MPNet,
RoBERTa, ELECTRA and DistilBERT read that position; BERT's reads `pooler_output`, which the pooler
computes from position 0, so it is recomputed from the new states. `hidden_states` (the distillation
losses' input) are left as the encoder produced them. The mask is the base model's own argument, so
the hook keeps no state between calls (safe under threads, deep copies and export tracing).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CONFIG_KEY = "distillora_pooling"
POOLINGS = ("first", "mean")
SETTINGS = ("auto",) + POOLINGS


def of_source(source: str) -> str:
    """`auto`'s choice for a pretrained source (a local directory or a Hub id): `mean` where the source
    is a sentence-transformers model whose `1_Pooling/config.json` says it was trained with mean pooling,
    `first` otherwise (a plain checkpoint such as bert-base-uncased, whose first token was pretrained
    for sentence-level tasks). A Hub id is looked up through transformers' cache (downloaded when
    online); not found: `first`."""
    path = Path(source).expanduser() / "1_Pooling" / "config.json"
    if not path.is_file() and not Path(source).expanduser().exists():
        from transformers.utils import cached_file

        found = cached_file(source, "1_Pooling/config.json", _raise_exceptions_for_missing_entries=False,
                            _raise_exceptions_for_connection_errors=False, _raise_exceptions_for_gated_repo=False)
        path = Path(found) if found else path
    if not path.is_file():
        return "first"
    try:
        modes = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "first"
    only_mean = modes.get("pooling_mode_mean_tokens") and not any(
        v for k, v in modes.items() if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens")
    return "mean" if only_mean else "first"


def resolve(setting: str, source: str) -> str:
    """The pooling a teacher trained from `source` uses under the setting `teacher.pooling`."""
    return of_source(source) if setting == "auto" else setting


def _mean_at_first(module, args, kwargs, out):
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:
        mask = args[1]
    h = out[0]
    m = (torch.ones(h.shape[:2], device=h.device) if mask is None else mask.to(h.device)).to(torch.float32)
    # summed in fp32: under bf16 autocast the states are bf16, and a sum of 60 of them loses digits
    mean = (h.float() * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
    h = torch.cat([mean.to(h.dtype).unsqueeze(1), h[:, 1:]], 1)
    pooler = getattr(module, "pooler", None)
    pooled = pooler(h) if pooler is not None else None
    if isinstance(out, tuple):
        return (h,) + ((pooled,) + out[2:] if pooled is not None and len(out) > 1 else out[1:])
    out.last_hidden_state = h
    if pooled is not None and getattr(out, "pooler_output", None) is not None:
        out.pooler_output = pooled
    return out


def attach(model, pooling: str):
    """Make `model` (a transformers sequence classifier) read `pooling` and record it in its config, so
    `save_pretrained` writes it (`first`, transformers' own, by leaving the key out). Idempotent; `first`
    removes a mean hook. Returns the model."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
    base = model.base_model
    # found by the function, not by a kept handle: a deep copy (quantize_dynamic, WiSE-FT) copies the
    # module's hook dicts, and a handle copied with it would still point at the original's
    for k in [k for k, fn in base._forward_hooks.items() if fn is _mean_at_first]:
        del base._forward_hooks[k]
        base._forward_hooks_with_kwargs.pop(k, None)
    if pooling == "mean":
        base.register_forward_hook(_mean_at_first, with_kwargs=True)
        setattr(model.config, CONFIG_KEY, pooling)
    elif hasattr(model.config, CONFIG_KEY):  # `first` is recorded by absence: config.json as transformers writes it
        delattr(model.config, CONFIG_KEY)
    return model


def of_model(model) -> str:
    """The pooling recorded in a model's config; none recorded: `first` (transformers' heads)."""
    return getattr(getattr(model, "config", None), CONFIG_KEY, None) or "first"


def apply_saved(model):
    """Install the pooling a loaded or built model's config records. Returns the model."""
    return attach(model, of_model(model)) if of_model(model) != "first" else model
