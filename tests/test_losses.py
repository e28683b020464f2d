import math

import torch

import pytest

from distillora import losses
from distillora.config import DistillConfig, load_config
from distillora.losses import LossInputs, patient_loss, total_loss


def distillation_loss(s_logits, t_logits, labels, s_hidden=None, t_hidden=None, mask=None, *, temperature=2.0,
                      w_ce=0.5, w_kd=0.5, w_cos=1.0, class_weights=None, w_layer=0.0, s_layers=None, t_layers=None):
    """The registered terms through `total_loss`, as the Trainer calls them."""
    hidden = None if s_hidden is None else (s_hidden,)
    teacher = {"teacher_logits": t_logits}
    if t_hidden is not None:
        teacher["teacher_hidden"] = t_hidden
    layer_map = None
    if s_layers is not None:  # (B, K, H) first-token states: as hidden states [1..K] whose token 0 they are
        hidden = (None,) + tuple(s_layers[:, k:k + 1] for k in range(s_layers.shape[1]))
        teacher["teacher_layers"], layer_map = t_layers, list(range(1, s_layers.shape[1] + 1))
    weights = {k: w for k, w in (("ce", w_ce), ("kd", w_kd), ("cos", w_cos), ("layer", w_layer)) if w > 0}
    x = LossInputs(s_logits, labels, mask, hidden, teacher, layer_map, temperature, class_weights)
    return total_loss(x, weights)


def test_kd_loss_equals_hand_computation():
    s = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 1])
    T, w_ce, w_kd = 2.0, 0.3, 0.7

    def softmax(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]

    ce = sum(-math.log(softmax(s[i].tolist())[y[i]]) for i in range(2)) / 2
    kl = 0.0
    for i in range(2):
        p = softmax((t[i] / T).tolist())
        q = softmax((s[i] / T).tolist())
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = w_ce * ce + w_kd * T * T * kl / 2
    total, parts = distillation_loss(s, t, y, temperature=T, w_ce=w_ce, w_kd=w_kd, w_cos=0.0)
    assert math.isclose(total.item(), expected, rel_tol=1e-6)
    assert math.isclose(parts["ce"].item(), ce, rel_tol=1e-6)
    assert math.isclose(parts["kd"].item(), T * T * kl / 2, rel_tol=1e-6)


def test_cosine_term_ignores_padding():
    s_logits = t_logits = torch.zeros(1, 2)
    y = torch.tensor([0])
    sh = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])   # token 3 is padding
    th = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [-5.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # token 1: cos 1 -> 0; token 2: cos 0 -> 1; mean over 2 real tokens = 0.5
    total, parts = distillation_loss(s_logits, t_logits, y, sh, th, mask, w_ce=0.0, w_kd=0.0, w_cos=2.0)
    assert math.isclose(parts["cos"].item(), 0.5, rel_tol=1e-6)
    assert math.isclose(total.item(), 1.0, rel_tol=1e-6)


def test_identical_student_and_teacher_have_zero_soft_losses():
    logits = torch.randn(4, 2)
    h = torch.randn(4, 5, 8)
    _, parts = distillation_loss(logits, logits, torch.zeros(4, dtype=torch.long), h, h, torch.ones(4, 5))
    assert abs(parts["kd"].item()) < 1e-6 and abs(parts["cos"].item()) < 1e-6


def test_patient_loss_against_a_hand_computation():
    # one example, two layers, hidden size 2: normalise each state, then sum of squares per layer
    s = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]])  # -> (0.6, 0.8), (1, 0)
    t = torch.tensor([[[0.0, 2.0], [1.0, 0.0]]])  # -> (0, 1), (1, 0)
    # layer 1: (0.6-0)^2 + (0.8-1)^2 = 0.36 + 0.04 = 0.40; layer 2: 0; mean over layers = 0.20
    assert patient_loss(s, t).item() == pytest.approx(0.20)
    logits = torch.zeros(1, 2)
    total, parts = distillation_loss(logits, logits, torch.tensor([1]), temperature=1.0, w_ce=0.0, w_kd=0.0,
                                     w_cos=0.0, s_layers=s, t_layers=t, w_layer=2.0)
    assert total.item() == pytest.approx(0.40) and parts["layer"].item() == pytest.approx(0.20)
    with pytest.raises(ValueError, match="w_layer"):
        distillation_loss(logits, logits, torch.tensor([1]), w_cos=0.0, w_layer=1.0)


def test_class_weighted_cross_entropy_against_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    w = torch.tensor([1.0, 3.0])
    nll = [-torch.log_softmax(logits[0], 0)[0], -torch.log_softmax(logits[1], 0)[1]]
    expected = (1.0 * nll[0] + 3.0 * nll[1]) / 2  # mean over the batch of weighted losses
    total, parts = distillation_loss(logits, logits, labels, temperature=1.0, w_ce=1.0, w_kd=0.0, w_cos=0.0,
                                     class_weights=w)
    assert parts["ce"].item() == pytest.approx(expected.item())
    assert total.item() == pytest.approx(expected.item())


def test_a_new_loss_term_is_one_registration_in_losses(minilm_tokenizer, monkeypatch):
    """What adding a term to losses.py takes (issue 12): a decorated function naming the teacher output it
    reads. Its weight comes from `distill.weights` (config.py unchanged), the teacher-output cache and the
    collator pick up what it reads, and the Trainer's objective adds it."""
    from conftest import tiny_bert
    from distillora.data import Collator, Encoded
    from distillora.stages.distill import teacher_outputs
    from distillora.training import Distillation

    monkeypatch.setattr(losses, "TERMS", dict(losses.TERMS))  # the registration below stays in this test

    @losses.term("logit_mse", teacher=("teacher_logits",), describe="MSE(logits)")
    def logit_mse(x):
        return ((x.logits.float() - x.teacher["teacher_logits"]) ** 2).mean()

    cfg = load_config(None, ["distill.w_ce=0", "distill.w_kd=0", "distill.w_cos=0", "distill.weights={logit_mse: 3}"])
    assert losses.weights_of(cfg.distill) == {"logit_mse": 3.0}
    objective = Distillation(cfg.distill, [1, 2])
    assert objective.teacher_needs == ("teacher_logits",)  # no hidden states cached for this term

    teacher, student = tiny_bert(2, seed=0, vocab_size=minilm_tokenizer.vocab_size), \
        tiny_bert(2, seed=1, vocab_size=minilm_tokenizer.vocab_size)
    enc = minilm_tokenizer(["a short one", "and a somewhat longer sentence here"])
    data = Encoded([{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": i}
                    for i in range(2)])
    cache = teacher_outputs(teacher, data, minilm_tokenizer, objective.teacher_needs)
    assert set(cache) == {"teacher_logits"}
    batch = Collator(minilm_tokenizer)(list(data.with_fields(**cache)))
    with torch.no_grad():
        got, _ = objective(student, dict(batch))
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert got.item() == pytest.approx(3.0 * ((s - t) ** 2).mean().item(), rel=1e-4)
    assert "3*MSE(logits)" in __import__("distillora.stages.distill", fromlist=["objective"]).objective(cfg.distill)


def test_unknown_loss_term_weights_are_refused():
    with pytest.raises(__import__("distillora.errors", fromlist=["UserError"]).UserError, match="no such loss term"):
        load_config(None, ["distill.weights={nope: 1}"])
    assert losses.weights_of(DistillConfig()) == {"ce": 0.5, "kd": 0.5, "cos": 1.0}
