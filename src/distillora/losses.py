"""The distillation loss: hard-label CE + T^2 * KL on softened logits + hidden-state cosine +
layer-to-layer (Patient KD) term. Adding a term: write its function here and give it a weight in
`DistillConfig` (config.py); `distillation_loss` adds every term whose weight is positive."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(
    student_logits: torch.Tensor,   # (B, C)
    teacher_logits: torch.Tensor,   # (B, C)
    labels: torch.Tensor,           # (B,) int64
    student_hidden: torch.Tensor | None = None,  # (B, L, H) final hidden states
    teacher_hidden: torch.Tensor | None = None,  # (B, L, H)
    attention_mask: torch.Tensor | None = None,  # (B, L) 1 for real tokens
    *,
    temperature: float = 2.0,
    w_ce: float = 0.5,
    w_kd: float = 0.5,
    w_cos: float = 1.0,
    class_weights: torch.Tensor | None = None,  # (C,) weights of the hard-label CE
    student_layers: torch.Tensor | None = None,  # (B, K, H) first-token states of the K student layers
    teacher_layers: torch.Tensor | None = None,  # (B, K, H) the same for the teacher layers they map to
    w_layer: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Returns (total, parts) with parts `ce`, `kd`, `cos` (detached, for logging).

    kd = T^2 * KL(p_teacher^T || p_student^T), batch mean (Hinton et al., 2015): the T^2 keeps the
    gradient scale of the soft term independent of T. cos = mean over non-padding tokens of
    1 - cos(h_student, h_teacher), as DistilBERT's cosine embedding loss. layer: see `patient_loss`.
    """
    ce = weighted_cross_entropy(student_logits, labels, class_weights)
    t = temperature
    kd = F.kl_div(
        F.log_softmax(student_logits.float() / t, dim=-1),
        F.log_softmax(teacher_logits.float() / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
    total = w_ce * ce + w_kd * kd
    cos = torch.zeros((), device=student_logits.device)
    if w_cos > 0:
        if student_hidden is None or teacher_hidden is None or attention_mask is None:
            raise ValueError("w_cos > 0 needs student_hidden, teacher_hidden and attention_mask")
        sim = F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)  # (B, L)
        mask = attention_mask.to(sim.dtype)
        cos = ((1.0 - sim) * mask).sum() / mask.sum().clamp_min(1.0)
        total = total + w_cos * cos
    layer = torch.zeros((), device=student_logits.device)
    if w_layer > 0:
        if student_layers is None or teacher_layers is None:
            raise ValueError("w_layer > 0 needs student_layers and teacher_layers")
        layer = patient_loss(student_layers, teacher_layers)
        total = total + w_layer * layer
    return total, {"ce": ce.detach(), "kd": kd.detach(), "cos": cos.detach(), "layer": layer.detach()}


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                           class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy, each example weighted by its class's weight, averaged over the batch:
    mean_i(w[y_i] * nll_i). Unlike torch's `weight=` (which divides by the sum of the weights in the
    batch), this keeps the mean of two half-batches equal to the mean of the whole batch, so
    data-parallel processes take the same step as one process; `balanced` weights average 1 over the
    training split, so the loss keeps its scale. Shapes: logits (B, C), labels (B,), weights (C,)."""
    nll = F.cross_entropy(logits.float(), labels, reduction="none")
    if class_weights is None:
        return nll.mean()
    return (class_weights.to(logits.device)[labels] * nll).mean()


def patient_loss(student_layers: torch.Tensor, teacher_layers: torch.Tensor) -> torch.Tensor:
    """Patient KD's intermediate-layer term (Sun et al., EMNLP 2019, eq. 4): the squared distance
    between the L2-normalised first-token ([CLS] / <s>) states of each student layer and of the teacher
    layer it maps to, summed over the hidden size, averaged over layers and batch.
    Shapes: (B, K, H) each. Normalising makes the term independent of the layers' scale."""
    s = F.normalize(student_layers.float(), dim=-1)
    t = F.normalize(teacher_layers.float(), dim=-1)
    return (s - t).pow(2).sum(-1).mean()
