"""Torch copies of a saved model: fp32 as trained, `int8-dynamic` and `bf16`.

- `int8-dynamic`: torch.ao dynamic quantisation of the Linear layers (int8 weights, activations
  quantised per batch). Fast everywhere, but it can cost accuracy on models with outlier activations.
- `bf16`: weights and activations in bfloat16. On CPUs with native bf16 matrix units (AMX, AVX512-BF16)
  it is several times faster than fp32 at near-fp32 accuracy. Its Linear weights are pre-packed once
  into oneDNN's blocked layout (see `PackedLinear`) where oneDNN supports bf16; elsewhere the copy runs
  on plain bf16 kernels, measures slow and is not chosen.

Every copy is deterministic given the fp32 weights, so it is rebuilt from the run's own safetensors
in about a second at load: no pickle file is written or read."""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from .. import integrity, normalize, pooling
from .base import Backend

log = logging.getLogger(__name__)
METHODS = ("fp32", "int8-dynamic", "bf16")


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch 2.13 warns that quantized tensor creation is deprecated
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


class PackedLinear(torch.nn.Module):
    """A frozen bf16 Linear whose weight is reordered once into oneDNN's blocked layout.

    Why not plain `nn.Linear`: eager bf16 `addmm` reorders the weight on every call, which at one
    sentence (about 20 rows) costs as much as the product itself; measured here on 768x3072, 255 us
    eager vs 162 us pre-packed. Why not `torch.compile` (whose CPU `freezing` pass does this same
    packing and also fuses the element-wise ops): it needs a C++ compiler where the model is served
    and about 30 s per model and input rank at start-up. The two ops are the ones inductor emits for
    that pass; `pack_linears` leaves the model as it is where they are missing."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach()
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(w, None), persistent=False)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


def _can_pack() -> bool:
    """oneDNN can pack and run bf16 weights here (it refuses on CPUs without AVX512-BW/VL/DQ or
    AVX-NE-CONVERT, for example AMD Zen 2/3 and most desktop Intel chips)."""
    try:
        return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
                and hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pack_linears(model: torch.nn.Module) -> torch.nn.Module:
    """Swap plain Linear layers for `PackedLinear` where oneDNN supports it; elsewhere leave the bf16
    model as it is (slower, and the export measurement then says so). Linear weights shared with
    another module (tied) stay as they are."""
    if not _can_pack():
        return model
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear and counts.get(id(child.weight), 0) == 1:
                setattr(module, name, PackedLinear(child))
    return model


def to_bf16(model: torch.nn.Module) -> torch.nn.Module:
    """A bf16 copy (the fp32 model is left as it is)."""
    with warnings.catch_warnings():  # deepcopy reads a property transformers 5 marks deprecated
        warnings.simplefilter("ignore", FutureWarning)
        dup = copy.deepcopy(model)
    return pack_linears(dup.to(torch.bfloat16).eval())


def convert(model: torch.nn.Module, method: str) -> torch.nn.Module:
    """The `method` copy of an fp32 model; every conversion copies, so `model` stays as it is."""
    if method == "fp32":
        return model
    if method == "int8-dynamic":
        return quantize_int8(model)
    if method == "bf16":
        return to_bf16(model)
    raise ValueError(f"unknown torch method {method!r}; known: {', '.join(METHODS)}")


def load_fp32(path: str | Path) -> torch.nn.Module:
    """The fp32 model saved at `path`, in eval mode. Raises UserError when the weights differ from those
    recorded at training or cannot be read (see `integrity`)."""
    integrity.check_loadable(path)
    integrity.verify(path)
    return pooling.apply_saved(AutoModelForSequenceClassification.from_pretrained(str(path), use_safetensors=True)
                               .eval())


class TorchBackend(Backend):
    """A torch module (any of the copies above, on any device) with its tokenizer."""

    def __init__(self, model: torch.nn.Module, tokenizer, method: str = "fp32"):
        self.model, self.tokenizer, self.method = model.eval(), tokenizer, method
        self.normalizer = normalize.of_model(model)
        self.num_labels = model.config.num_labels

    @property
    def device(self):
        return next(self.model.parameters()).device

    @classmethod
    def load(cls, path: str | Path, method: str = "fp32") -> "TorchBackend":
        """The `method` copy of the model at `path`; fp32 (with a warning) if this machine cannot build
        that copy, e.g. a run exported on a bf16-capable CPU and served on another."""
        model, built = _build(path, method)
        return cls(model, AutoTokenizer.from_pretrained(str(path)), built)

    @torch.inference_mode()
    def _proba(self, batch: dict) -> np.ndarray:
        if next(iter(batch.values())).shape[0] == 1:
            # One sentence has no padding: an all-ones mask changes nothing but costs the model its mask
            # arithmetic (about 0.5 ms of a 9 ms bf16 student forward here).
            batch = {k: v for k, v in batch.items() if k != "attention_mask"}
        return torch.softmax(self.model(**batch).logits.float(), -1).cpu().numpy()


def _build(path, method: str) -> tuple[torch.nn.Module, str]:
    model = load_fp32(path)
    try:
        return convert(model, method), method
    except (RuntimeError, NotImplementedError) as e:
        log.warning("%s: cannot build its %s copy on this machine (%s); serving fp32", path, method, e)
        return model, "fp32"
