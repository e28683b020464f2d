import math

import torch

import pytest

from distillora.losses import distillation_loss, patient_loss


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
                                     w_cos=0.0, student_layers=s, teacher_layers=t, w_layer=2.0)
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
