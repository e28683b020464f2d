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

from .errors import UserError

CONFIG_KEY = "distillora_pooling"
POOLINGS = ("first", "mean")


# the architectures whose head reads position 0 of the base model's last hidden state, or a pooler of
# it (BERT): where the hook's mean is what the head reads (ALBERT's pooler, XLNet's last-token head are not)
SUPPORTED = ("bert", "roberta", "xlm-roberta", "electra", "mpnet", "distilbert")


def of_source(source: str) -> str:
    """`auto`'s choice for a pretrained source (a local directory or a Hub id): the pooling a distillora
    model saved as the source records; else `mean` where the source is a sentence-transformers model whose
    `1_Pooling/config.json` says it was trained with mean pooling alone, `first` otherwise (a plain
    checkpoint such as bert-base-uncased, whose first token was pretrained for sentence-level tasks).

    Raises:
        UserError: a Hub id whose pooling configuration is not known here (offline or unreachable, and
            never fetched): guessing would train another model than the same config trains where it is
            known. A configuration file that is not a JSON object.
    """
    local = Path(source).expanduser()
    if local.is_dir():
        return _choice(_read(local / "config.json"), _read(local / "1_Pooling" / "config.json"))
    from huggingface_hub import constants, try_to_load_from_cache
    from transformers.utils import cached_file

    def lookup(name: str):
        """The cached file's path, False when the repo is known not to hold it, None when not known."""
        if not constants.HF_HUB_OFFLINE:  # fetched (or its absence recorded, .no_exist) when the Hub answers
            cached_file(source, name, _raise_exceptions_for_missing_entries=False,
                        _raise_exceptions_for_connection_errors=False)
        found = try_to_load_from_cache(source, name)
        return found if isinstance(found, str) or found is None else False

    try:
        config = lookup("config.json")
        saved = _read(Path(config)).get(CONFIG_KEY) if config else None
        if saved in POOLINGS:  # known without the pooling file
            return saved
        modes = lookup("1_Pooling/config.json")
    except (OSError, ValueError) as e:  # not a repo id (HFValidationError), or a repo the Hub refuses
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"teacher.pooling = auto: cannot look up {source}'s pooling configuration ({first}); "
                        f"set teacher.pooling to first or mean") from None
    if modes is None:
        raise UserError(f"teacher.pooling = auto: whether {source} was trained with mean pooling is not known here "
                        f"({'offline' if constants.HF_HUB_OFFLINE else 'the Hub did not answer'}, and its "
                        f"1_Pooling/config.json was never fetched); set teacher.pooling to first or mean, or run "
                        f"once where the Hub answers")
    return _choice({}, _read(Path(modes)) if modes else None)


def _read(path: Path) -> dict | None:
    """The JSON object in `path`; None when there is no such file."""
    if not path.is_file():
        return None
    try:
        out = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"teacher.pooling = auto: {path} cannot be read as JSON ({e}); repair it, or set "
                        f"teacher.pooling to first or mean") from None
    if not isinstance(out, dict):
        raise UserError(f"teacher.pooling = auto: {path} holds a JSON {type(out).__name__}, not an object; repair "
                        f"it, or set teacher.pooling to first or mean")
    return out


def _choice(config: dict | None, modes: dict | None) -> str:
    saved = (config or {}).get(CONFIG_KEY)
    if saved in POOLINGS:  # a distillora model as the source: what its head was trained to read
        return saved
    only_mean = bool(modes) and modes.get("pooling_mode_mean_tokens") and not any(
        v for k, v in modes.items() if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens")
    return "mean" if only_mean else "first"


def _mean_at_first(module, args, kwargs, out):
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:
        mask = args[1]
    h = out[0]
    m = (torch.ones(h.shape[:2], device=h.device) if mask is None else mask.to(h.device)).to(torch.float32)
    # summed in fp32: in a bf16 copy (export's) the states are bf16, and a sum of 60 of them loses digits
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
    if pooling == "mean" and model.config.model_type not in SUPPORTED:
        raise ValueError(f"pooling mean: the head of a model of type {model.config.model_type} does not read the "
                         f"position this sets; supported: {', '.join(SUPPORTED)}")
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
