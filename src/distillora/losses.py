"""The distillation loss as a sum of registered terms, and the teacher outputs they read.

Adding a term touches this file only:

    @term("mine", teacher=("teacher_logits",), describe="my term")
    def mine_loss(x: LossInputs) -> torch.Tensor:   # a scalar
        ...

and a user gives it a weight with `distill.weights={mine: 0.1}` (the four built-in terms keep their
`distill.w_<name>` keys). Every term whose weight is positive is added; the teacher outputs the active
terms name are cached once per training example (`stages.distill.teacher_outputs`), padded by the
collator (`data.Collator`, per-token outputs to the batch length) and handed to the term in
`LossInputs.teacher`. A new teacher output goes into `TEACHER_OUTPUTS`, here too."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TeacherOutput:
    """One teacher output cached per training example.

    `extract(out)`: (B, ...) from the teacher's forward output (with hidden states when `hidden_states`).
    `per_token`: the first dimension after the batch is the token axis: the cache keeps each example's
    real tokens only (float16) and the collator zero-pads them to the batch length; otherwise the shape
    is fixed and examples are stacked."""

    extract: Callable
    per_token: bool = False
    hidden_states: bool = False
    dtype: torch.dtype = torch.float32


TEACHER_OUTPUTS: dict[str, TeacherOutput] = {
    # (C,) logits
    "teacher_logits": TeacherOutput(lambda out: out.logits.float()),
    # (L_i, H) final hidden states; float16 halves the cache and both readers are scale-free
    "teacher_hidden": TeacherOutput(lambda out: out.hidden_states[-1], per_token=True, hidden_states=True,
                                    dtype=torch.float16),
    # (depth, H) first-token state of every layer (hidden_states[0] is the embedding output)
    "teacher_layers": TeacherOutput(lambda out: torch.stack([h[:, 0] for h in out.hidden_states[1:]], 1),
                                    hidden_states=True, dtype=torch.float16),
}


@dataclass
class LossInputs:
    """What a term may read. Shapes: logits (B, C); labels (B,) int64; attention_mask (B, L);
    hidden_states: the student's per-layer outputs, each (B, L, H), [0] the embeddings (None unless an
    active term sets `student_hidden`); teacher: the cached outputs the active terms named, batched;
    layer_map[i]: the teacher layer (1-based) student layer i+1 was copied from."""

    logits: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None = None
    hidden_states: tuple | None = None
    teacher: dict[str, torch.Tensor] = field(default_factory=dict)
    layer_map: list[int] | None = None
    temperature: float = 2.0
    class_weights: torch.Tensor | None = None
    sample_weight: torch.Tensor | None = None  # (B,) per-example weights (`group_weights`), or None
    logit_offset: torch.Tensor | None = None   # (C,) tau * log prior (`logit_adjustment`), or None


@dataclass(frozen=True)
class Term:
    name: str              # the weight's name: distill.w_<name> or distill.weights[<name>]
    fn: Callable[[LossInputs], torch.Tensor]
    teacher: tuple[str, ...] = ()   # keys of TEACHER_OUTPUTS it reads
    student_hidden: bool = False    # it reads the student's hidden states
    describe: str = ""              # for the objective line of the report


TERMS: dict[str, Term] = {}


def term(name: str, teacher: tuple[str, ...] = (), student_hidden: bool = False, describe: str = ""):
    """Register the decorated function as the loss term `name`."""
    unknown = [k for k in teacher if k not in TEACHER_OUTPUTS]
    if unknown:
        raise ValueError(f"loss term {name!r} reads unknown teacher outputs {unknown}; add them to TEACHER_OUTPUTS")

    def register(fn):
        TERMS[name] = Term(name, fn, tuple(teacher), student_hidden, describe or name)
        return fn
    return register


def weights_of(distill) -> dict[str, float]:
    """{term name: weight} for every registered term with a positive weight, from a DistillConfig:
    `distill.weights[name]`, else the attribute `distill.w_<name>`, else 0."""
    extra = getattr(distill, "weights", None) or {}
    out = {}
    for name in TERMS:
        w = float(extra.get(name, getattr(distill, f"w_{name}", 0.0)))
        if w > 0:
            out[name] = w
    return out


def teacher_needs(weights: dict[str, float]) -> tuple[str, ...]:
    """The teacher outputs the terms in `weights` read, in TEACHER_OUTPUTS order."""
    keys = {k for name in weights for k in TERMS[name].teacher}
    return tuple(k for k in TEACHER_OUTPUTS if k in keys)


def needs_student_hidden(weights: dict[str, float]) -> bool:
    return any(TERMS[name].student_hidden for name in weights)


def describe(weights: dict[str, float]) -> str:
    return " + ".join(f"{w:g}*{TERMS[n].describe}" for n, w in weights.items())


def total_loss(x: LossInputs, weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(sum of weight * term, {term: detached value}) over the terms in `weights`."""
    total = torch.zeros((), device=x.logits.device)
    parts = {}
    for name, w in weights.items():
        value = TERMS[name].fn(x)
        total = total + w * value
        parts[name] = value.detach()
    return total, parts


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                           class_weights: torch.Tensor | None = None,
                           sample_weight: torch.Tensor | None = None,
                           logit_offset: torch.Tensor | None = None,
                           example_offset: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy, each example weighted by its class's weight (and by its own `sample_weight`, the
    group weights), averaged over the batch: mean_i(w[y_i] * s_i * nll_i). Unlike torch's `weight=`
    (which divides by the sum of the weights in the batch), this keeps the mean of two half-batches
    equal to the mean of the whole batch, so data-parallel processes take the same step as one process;
    `balanced` weights average 1 over the training split, so the loss keeps its scale. `logit_offset`
    (C,), tau * log prior, is added to the logits first: the logit-adjusted loss of Menon et al. (ICLR
    2021), whose minimiser's raw logits aim at the balanced error. `example_offset` (B, C), lambda times
    a bias-only model's log-probabilities (`teacher.debias`), is added too: the loss of the product of
    the two experts. Shapes: logits (B, C), labels (B,), class weights (C,), sample weights (B,)."""
    logits = logits.float()
    if logit_offset is not None:
        logits = logits + logit_offset.to(logits.device)
    if example_offset is not None:
        logits = logits + example_offset.to(logits.device, torch.float32)
    nll = F.cross_entropy(logits, labels, reduction="none")
    if class_weights is not None:
        nll = class_weights.to(logits.device)[labels] * nll
    if sample_weight is not None:
        nll = sample_weight.to(logits.device, torch.float32) * nll
    return nll.mean()


def _need(x: LossInputs, key: str, term_name: str) -> torch.Tensor:
    if key not in x.teacher:
        raise ValueError(f"w_{term_name} > 0 needs the teacher output {key}")
    return x.teacher[key]


@term("ce", describe="CE")
def ce_loss(x: LossInputs) -> torch.Tensor:
    """Hard-label (class-weighted, logit-adjusted) cross-entropy."""
    return weighted_cross_entropy(x.logits, x.labels, x.class_weights, x.sample_weight, x.logit_offset)


@term("kd", teacher=("teacher_logits",), describe="T^2*KL")
def kd_loss(x: LossInputs) -> torch.Tensor:
    """T^2 * KL(p_teacher^T || p_student^T), batch mean (Hinton et al., 2015): the T^2 keeps the
    gradient scale of the soft term independent of T."""
    t = x.temperature
    return F.kl_div(F.log_softmax(x.logits.float() / t, dim=-1),
                    F.log_softmax(_need(x, "teacher_logits", "kd").float() / t, dim=-1),
                    reduction="batchmean", log_target=True) * (t * t)


@term("cos", teacher=("teacher_hidden",), student_hidden=True, describe="cosine(hidden)")
def cosine_loss(x: LossInputs) -> torch.Tensor:
    """Mean over non-padding tokens of 1 - cos(h_student, h_teacher) on the final hidden states, as
    DistilBERT's cosine embedding loss."""
    if x.hidden_states is None or x.attention_mask is None:
        raise ValueError("w_cos > 0 needs the student's hidden states and the attention mask")
    sim = F.cosine_similarity(x.hidden_states[-1].float(), _need(x, "teacher_hidden", "cos").float(), dim=-1)
    mask = x.attention_mask.to(sim.dtype)
    return ((1.0 - sim) * mask).sum() / mask.sum().clamp_min(1.0)


@term("layer", teacher=("teacher_layers",), student_hidden=True, describe="layer-to-layer (PKD)")
def layer_loss(x: LossInputs) -> torch.Tensor:
    """Patient KD between each student layer's first-token state and the teacher layer it was copied
    from (`layer_map`)."""
    if x.hidden_states is None or x.layer_map is None:
        raise ValueError("w_layer > 0 needs the student's hidden states and its layer map")
    s = torch.stack([x.hidden_states[i + 1][:, 0] for i in range(len(x.layer_map))], 1)
    t = _need(x, "teacher_layers", "layer")[:, [k - 1 for k in x.layer_map]]
    return patient_loss(s, t)


def patient_loss(student_layers: torch.Tensor, teacher_layers: torch.Tensor) -> torch.Tensor:
    """Patient KD's intermediate-layer term (Sun et al., EMNLP 2019, eq. 4): the squared distance
    between the L2-normalised first-token ([CLS] / <s>) states of each student layer and of the teacher
    layer it maps to, summed over the hidden size, averaged over layers and batch.
    Shapes: (B, K, H) each. Normalising makes the term independent of the layers' scale."""
    s = F.normalize(student_layers.float(), dim=-1)
    t = F.normalize(teacher_layers.float(), dim=-1)
    return (s - t).pow(2).sum(-1).mean()
