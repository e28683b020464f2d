"""`logit_adjustment: tau`: the logit-adjusted cross-entropy (Menon et al., ICLR 2021) in every stage."""

import math

import numpy as np
import pytest
import torch

from distillora import losses, training
from distillora.config import DistillConfig, TrainConfig, load_config
from distillora.data import Collator, Encoded
from distillora.errors import UserError
from distillora.losses import weighted_cross_entropy

from conftest import fit_tiny, stage_fingerprints, tiny_bert


def test_the_offset_is_tau_times_the_log_prior_of_the_training_labels():
    off = training.logit_offset_vector(1.0, [0, 0, 0, 1], 2)
    assert off.tolist() == pytest.approx([math.log(0.75), math.log(0.25)])
    assert training.logit_offset_vector(0.5, [0, 0, 0, 1], 2).tolist() == pytest.approx(
        [0.5 * math.log(0.75), 0.5 * math.log(0.25)])
    assert training.logit_offset_vector(0.0, [0, 1], 2) is None  # off
    # a label the split lacks counts as one example: finite, and the rarest
    off = training.logit_offset_vector(1.0, [0, 0, 0], 3)
    assert torch.isfinite(off).all() and off[1] == off[2] < off[0]


def test_the_logit_adjusted_loss_against_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    off = torch.tensor([math.log(0.75), math.log(0.25)])
    cw = torch.tensor([1.0, 3.0])
    nll = [-(logits[i, y] + off[y] - torch.logsumexp(logits[i] + off, 0)) for i, y in enumerate(labels.tolist())]
    assert weighted_cross_entropy(logits, labels, logit_offset=off).item() == pytest.approx(
        (sum(nll) / 3).item())
    assert weighted_cross_entropy(logits, labels, cw, logit_offset=off).item() == pytest.approx(
        ((nll[0] + 3 * nll[1] + 3 * nll[2]) / 3).item())
    # the rare label's loss rises: the adjusted loss asks it a wider margin
    assert weighted_cross_entropy(logits[1:2], labels[1:2], logit_offset=off) > weighted_cross_entropy(
        logits[1:2], labels[1:2])
    # an offset equal for every label changes nothing (softmax is shift-invariant)
    even = torch.tensor([math.log(0.5), math.log(0.5)])
    assert weighted_cross_entropy(logits, labels, logit_offset=even).item() == pytest.approx(
        weighted_cross_entropy(logits, labels).item())


def _data(n: int) -> Encoded:
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        ids = [101] + torch.randint(1000, 1100, (6,), generator=g).tolist() + [102]
        items.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": int(i % 4 == 0)})
    return Encoded(items)


def test_training_with_the_offset_changes_what_is_learned_and_an_even_one_does_not(tmp_path, minilm_tokenizer):
    """Through the Trainer (the objective must not fall back to the model's own, unadjusted loss): the
    prior's offset changes the weights after one epoch; an offset equal for both labels gives the
    weights of plain training."""
    enc = _data(32)
    tc = TrainConfig(epochs=1, learning_rate=1e-2, batch_size=8, logging_steps=100, precision="fp32")
    heads = {}
    for name, off in (("plain", None), ("prior", training.logit_offset_vector(1.0, [x["labels"] for x in enc.items], 2)),
                      ("even", torch.tensor([-0.7, -0.7]))):
        model, stats = fit_tiny(tmp_path, name, enc, minilm_tokenizer, tc, logit_offset=off)
        assert np.isfinite(stats["loss"])
        heads[name] = model.classifier.bias.detach().clone()
    assert not torch.allclose(heads["plain"], heads["prior"])
    # the adjusted loss moves the rare label's (1's) raw logit up against plain training
    assert (heads["prior"][1] - heads["prior"][0]) > (heads["plain"][1] - heads["plain"][0])
    assert torch.allclose(heads["plain"], heads["even"], atol=1e-5)


def test_the_distillation_objective_adjusts_its_hard_label_term_only(minilm_tokenizer):
    from distillora.losses import LossInputs, kd_loss

    enc = _data(6)
    g = torch.Generator().manual_seed(1)
    items = enc.with_fields(teacher_logits=[torch.randn(2, generator=g) for _ in range(len(enc))])
    batch = Collator(minilm_tokenizer)([items[i] for i in range(len(items))])
    model = tiny_bert(2, vocab_size=minilm_tokenizer.vocab_size)
    off = torch.tensor([math.log(0.75), math.log(0.25)])
    objective = training.Distillation(DistillConfig(w_ce=1.0, w_kd=0.5, w_cos=0.0), [1, 2], None, off)
    loss, outputs = objective(model, dict(batch))
    labels = batch["labels"]
    ce = weighted_cross_entropy(outputs.logits, labels, logit_offset=off)
    kd = kd_loss(LossInputs(outputs.logits, labels, teacher={"teacher_logits": batch["teacher_logits"]}))
    assert loss.item() == pytest.approx((ce + 0.5 * kd).item(), rel=1e-5)
    assert abs(ce.item() - weighted_cross_entropy(outputs.logits, labels).item()) > 1e-3


def test_the_setting_is_validated_and_retrains_only_when_set():
    for bad in ("-1", "inf", "balanced"):
        with pytest.raises(UserError, match="logit_adjustment"):
            load_config(None, [f"logit_adjustment={bad}"])

    def teacher_fp(overrides):
        return stage_fingerprints(overrides)["teacher"]

    assert teacher_fp(["logit_adjustment=0"]) == teacher_fp([])  # existing runs keep their stages
    assert teacher_fp(["logit_adjustment=1"]) != teacher_fp([])
    assert teacher_fp(["logit_adjustment=1"]) != teacher_fp(["logit_adjustment=0.5"])


def test_every_stage_of_a_tiny_study_trains_on_the_adjusted_loss(tmp_path, tiny_teacher_dir, small_data, monkeypatch):
    """The teacher, the distilled students, LoRA (on the distillation objective) and the baseline: every
    hard-label loss of training gets tau * log(prior of the training split)."""
    from distillora.rundir import RunDir
    from distillora.study import run_study

    seen = []

    def spy(logits, labels, class_weights=None, sample_weight=None, logit_offset=None, example_offset=None):
        seen.append((class_weights, logit_offset))
        return weighted_cross_entropy(logits, labels, class_weights, sample_weight, logit_offset, example_offset)

    monkeypatch.setattr(training, "weighted_cross_entropy", spy)   # CrossEntropy (teacher, baseline)
    monkeypatch.setattr(losses, "weighted_cross_entropy", spy)     # the CE term of the distillation objective
    cfg = load_config(None, [
        "name=la", f"data.source={small_data}", "data.validation_fraction=0.25", "data.max_length=32",
        f"teacher.source={tiny_teacher_dir}", "teacher.train.epochs=1", "distill.train.epochs=1",
        "lora.train.epochs=1", "baseline.train.epochs=1", "lora.r=4", "lora.alpha=8", "lora.objective=distill",
        "check.suites=[]", "logit_adjustment=1", "class_weights=null"])
    run = RunDir(run_study(cfg, tmp_path / "run", quiet=True))
    assert {m["name"] for m in run.results().models} == {"teacher", "odd", "even", "lora", "baseline"}
    assert seen and all(cw is None and off is not None for cw, off in seen)
    offsets = {tuple(round(v, 6) for v in off.tolist()) for _, off in seen}
    assert len(offsets) == 1  # one prior, the training split's, for every stage
    (off,) = offsets
    assert sum(math.exp(v) for v in off) == pytest.approx(1.0) and off[1] < off[0]  # a prior; hate the rarer
