"""`group_weights: balanced`: each group of a label gets the same total weight in the cross-entropy."""

import numpy as np
import pytest
import torch

from distillora import training
from distillora.config import TrainConfig, load_config
from distillora.data import SAMPLE_WEIGHT, Collator, Encoded, Split, length_sorted_batches
from distillora.errors import UserError
from distillora.losses import weighted_cross_entropy

from conftest import fit_tiny, tiny_bert


def test_factors_against_a_hand_computation():
    # label 0: one group of 2 rows -> factor 1; label 1: 4 rows in groups a (3) and b (1):
    # each group's total is 4 / 2 = 2, so a's rows get 2/3 and b's row 2
    f = training.group_weight_factors([0, 0, 1, 1, 1, 1], ["", "", "a", "a", "a", "b"])
    assert f.tolist() == pytest.approx([1, 1, 2 / 3, 2 / 3, 2 / 3, 2])
    # a label's factors sum to its row count, so class weights keep their meaning
    assert f[2:].sum() == pytest.approx(4)


def test_sample_weights_in_the_cross_entropy_against_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    cw, sw = torch.tensor([1.0, 3.0]), torch.tensor([0.5, 2.0, 1.0])
    nll = -torch.log_softmax(logits, 1)[torch.arange(3), labels]
    expected = (1.0 * 0.5 * nll[0] + 3.0 * 2.0 * nll[1] + 3.0 * 1.0 * nll[2]) / 3
    assert weighted_cross_entropy(logits, labels, cw, sw).item() == pytest.approx(expected.item())
    assert weighted_cross_entropy(logits, labels, None, sw).item() == pytest.approx(
        ((0.5 * nll[0] + 2.0 * nll[1] + nll[2]) / 3).item())


def _data(n: int) -> tuple[Encoded, Split]:
    """n rows, labels 0/1 alternating; the label-1 rows' groups: 'big' for 3 of 4, 'small' for the rest.
    Tokens carry no signal."""
    g = torch.Generator().manual_seed(0)
    items, labels, cats = [], [], []
    for i in range(n):
        ids = [101] + torch.randint(1000, 1100, (6,), generator=g).tolist() + [102]
        y = i % 2
        items.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": y})
        labels.append(y)
        cats.append("" if y == 0 else ("small" if i % 8 == 1 else "big"))
    return Encoded(items), Split([f"t{i}" for i in range(n)], np.array(labels), cats)


def test_weights_reach_the_batch_and_never_the_model_inputs(minilm_tokenizer):
    enc, split = _data(16)
    cfg = load_config(None, ["group_weights=balanced"])
    weighted = training.with_group_weights(enc, training.group_factors(split, cfg))
    batch = Collator(minilm_tokenizer)([weighted[i] for i in range(4)])
    assert batch[SAMPLE_WEIGHT].dtype == torch.float32
    assert batch[SAMPLE_WEIGHT].tolist() == pytest.approx(
        training.group_weight_factors(split.labels, split.categories)[:4].tolist())
    for _, b in length_sorted_batches(weighted, minilm_tokenizer, 8, torch.device("cpu")):
        assert SAMPLE_WEIGHT not in b  # the evaluation and teacher-output passes feed the model only
    assert training.group_factors(split, load_config(None, [])) is None  # off by default
    assert training.with_group_weights(enc, None) is enc


def test_training_with_group_weights_runs_and_the_weights_change_the_step(tmp_path, minilm_tokenizer):
    """The Trainer takes batches carrying weights (the objective removes them before the forward pass),
    and the weights change what is learned: same seed and data, different weights, different weights of
    the model after one epoch."""
    enc, split = _data(32)
    cfg = load_config(None, ["group_weights=balanced"])
    tc = TrainConfig(epochs=1, learning_rate=1e-2, batch_size=8, logging_steps=100, precision="fp32")
    grouped = training.with_group_weights(enc, training.group_factors(split, cfg))
    heads = {}
    # with class weights, and without them (the objective must not fall back to the model's own loss,
    # which would choke on the weights)
    for name, data, cw in (("plain", enc, torch.tensor([1.0, 1.0])), ("grouped", grouped, torch.tensor([1.0, 1.0])),
                           ("grouped-no-class-weights", grouped, None)):
        model, stats = fit_tiny(tmp_path, name, data, minilm_tokenizer, tc, validation=enc, class_weights=cw)
        assert np.isfinite(stats["loss"])
        heads[name] = model.classifier.weight.detach().clone()
    assert not torch.allclose(heads["plain"], heads["grouped"])
    assert torch.allclose(heads["grouped"], heads["grouped-no-class-weights"])  # weights of 1 change nothing


def test_group_weights_settings_are_validated(tmp_path):
    with pytest.raises(UserError, match="group_weights"):
        load_config(None, ["group_weights=inverse"])
    with pytest.raises(UserError, match="category_column"):
        load_config(None, ["group_weights=balanced", "data.category_column=null"])
    enc, split = _data(4)
    no_groups = Split(split.texts, split.labels, None)
    with pytest.raises(UserError, match="no category column 'categories'"):
        training.group_factors(no_groups, load_config(None, ["group_weights=balanced"]))


def test_group_weights_retrain_the_teacher_and_leave_other_runs_fingerprints_alone():
    from distillora import stages
    from distillora.config import fingerprint, stable_section, to_dict

    def teacher_fp(overrides):
        cfg = load_config(None, overrides)
        (teacher,) = [s for s in stages.plan(cfg, to_dict(cfg), 12) if s.name == "teacher"]
        return teacher.fingerprint_inputs, fingerprint(*teacher.fingerprint_inputs)

    plain_inputs, plain = teacher_fp([])
    # the teacher's inputs as they were before group_weights existed: existing runs keep their stages
    cfg = load_config(None, [])
    resolved = to_dict(cfg)
    before = fingerprint(stable_section(resolved, "data", drop=("extra_tests", "category_column")), cfg.seed,
                         cfg.selection_metric, stable_section(resolved, "teacher", drop=("allow_pickle",)),
                         cfg.class_weights)
    assert plain == before
    assert teacher_fp(["group_weights=balanced"])[1] != plain
    assert teacher_fp(["group_weights=null"])[1] == plain


def test_the_distillation_objective_weighs_its_hard_label_term_and_not_its_soft_one(minilm_tokenizer):
    """A distilled student's batch carries cached teacher logits and the group weights: the CE term is
    weighted per example, the KL term is not (the soft terms follow the teacher on every example)."""
    from distillora.config import DistillConfig
    from distillora.losses import kd_loss, LossInputs

    enc, split = _data(6)
    cfg = load_config(None, ["group_weights=balanced"])
    g = torch.Generator().manual_seed(1)
    teacher_logits = [torch.randn(2, generator=g) for _ in range(len(enc))]
    items = training.with_group_weights(enc, training.group_factors(split, cfg)).with_fields(teacher_logits=teacher_logits)
    batch = Collator(minilm_tokenizer)([items[i] for i in range(len(items))])
    model = tiny_bert(2, vocab_size=minilm_tokenizer.vocab_size)
    with torch.no_grad():  # a random head gives every example nearly the same loss; spread them out
        model.classifier.weight.mul_(200.0)
    cw = torch.tensor([1.0, 2.0])
    objective = training.Distillation(DistillConfig(w_ce=1.0, w_kd=0.5, w_cos=0.0), [1, 2], cw)
    loss, outputs = objective(model, dict(batch))
    sw = torch.tensor(training.group_weight_factors(split.labels, split.categories), dtype=torch.float32)
    labels = batch["labels"]
    ce = weighted_cross_entropy(outputs.logits, labels, cw, sw)
    kd = kd_loss(LossInputs(outputs.logits, labels, teacher={"teacher_logits": batch["teacher_logits"]}))
    assert loss.item() == pytest.approx((ce + 0.5 * kd).item(), rel=1e-5)
    unweighted = weighted_cross_entropy(outputs.logits, labels, cw)
    assert abs(ce.item() - unweighted.item()) > 1e-3 * unweighted.item()  # so the assert above tells them apart


def _tiny_config(teacher_dir, small_data, *extra):
    """The tiny study on conftest's `small_data` (80 train rows with their `categories`, 40 test rows)."""
    return load_config(None, [
        "name=groups", f"data.source={small_data}", "data.validation_fraction=0.25", "data.max_length=32",
        f"teacher.source={teacher_dir}", "teacher.train.epochs=1", "distill.train.epochs=1",
        "lora.train.epochs=1", "baseline.train.epochs=1", "lora.r=4", "lora.alpha=8", "check.suites=[]", *extra])


def test_a_whole_tiny_study_trains_every_stage_with_group_weights(tmp_path, tiny_teacher_dir, small_data):
    """Every path that meets a weighted training item: the teacher, the cached teacher outputs, the
    distilled students, LoRA (peft) on the distillation objective, the baseline, evaluation."""
    from distillora.rundir import RunDir
    from distillora.study import run_study

    cfg = _tiny_config(tiny_teacher_dir, small_data, "group_weights=balanced", "lora.objective=distill")
    run = RunDir(run_study(cfg, tmp_path / "run", quiet=True))
    names = {m["name"] for m in run.results().models}
    assert names == {"teacher", "odd", "even", "lora", "baseline"}


def test_a_missing_group_column_is_refused_before_anything_is_written(tmp_path, tiny_teacher_dir, small_data):
    from distillora.study import run_study

    cfg = _tiny_config(tiny_teacher_dir, small_data, "group_weights=balanced", "data.category_column=target_group")
    with pytest.raises(UserError, match="no category column 'target_group'.*group_weights: null"):
        run_study(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
