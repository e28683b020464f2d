"""`teacher.debias: lambda`: the teacher trains in a product of experts with a bag-of-words bias model
(Clark et al., EMNLP 2019), whose out-of-fold log-probabilities ride in the training batches."""

import math

import numpy as np
import pytest
import torch

from distillora import training
from distillora.config import load_config
from distillora.data import BIAS_LOGPROBS, Collator, Encoded, Split
from distillora.debias import bag_of_words_logprobs
from distillora.errors import UserError
from distillora.losses import weighted_cross_entropy

from conftest import stage_fingerprints, tiny_bert


def _split(n: int = 60) -> Split:
    # "awful" marks every label-1 row but the last three, which say it without that word
    texts, labels = [], []
    for i in range(n):
        y = int(i % 3 == 0)
        word = "awful" if y and i < n - 9 else "fine"
        texts.append(f"row {i} is {word} today")
        labels.append(y)
    return Split(texts, np.array(labels))


def test_the_bias_model_gives_out_of_fold_log_probabilities():
    split = _split()
    lp = bag_of_words_logprobs(split, 2, seed=0)
    assert lp.shape == (len(split), 2)
    assert np.allclose(np.exp(lp).sum(1), 1.0)  # log-probabilities of a distribution per row
    y = split.labels
    # the word that decides most label-1 rows makes the bias confident on them ...
    awful = np.array(["awful" in t for t in split.texts])
    assert np.exp(lp[awful, 1]).min() > 0.5
    # ... and the label-1 rows without it look like label 0 to a model of words alone
    assert np.exp(lp[(y == 1) & ~awful, 1]).max() < 0.5
    # the folds are seeded: the same seed gives the same figures
    assert np.array_equal(lp, bag_of_words_logprobs(split, 2, seed=0))


def test_a_row_is_scored_by_a_model_that_did_not_see_it():
    """Two label-1 rows without the deciding word share a word no other row has. A model fitted on every
    row keeps that word (it occurs twice) and learns it as label 1; out of fold, the model scoring one
    of them saw the word once at most, which `min_df=2` drops, so the pair looks like label 0 to it."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    split = _split()
    hard = [i for i, (t, y) in enumerate(zip(split.texts, split.labels)) if y and "awful" not in t][:2]
    for i in hard:
        split.texts[i] += " quirk"
    lp = bag_of_words_logprobs(split, 2, seed=0)
    seen = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                         LogisticRegression(class_weight="balanced", max_iter=2000)).fit(split.texts, split.labels)
    in_sample = seen.predict_proba([split.texts[i] for i in hard])[:, 1]
    assert (np.exp(lp[hard, 1]) < in_sample - 0.05).all()


def test_a_label_absent_from_train_gets_a_finite_floor_and_unfit_data_is_refused():
    split = _split()
    # labels 0 and 2 present, 1 absent: the present labels' columns keep their own figures
    split3 = Split(split.texts, np.where(split.labels == 1, 2, 0))
    lp = bag_of_words_logprobs(split3, 3, seed=0)
    assert lp.shape == (len(split), 3) and np.isfinite(lp).all()
    assert (lp[:, 1] == pytest.approx(np.log(1e-6))) and np.allclose(lp[:, [0, 2]], bag_of_words_logprobs(split, 2, 0))
    with pytest.raises(UserError, match="teacher.debias"):   # a label of one row: no fold can hold it out
        bag_of_words_logprobs(Split(["a b", "c d", "e f"], np.array([0, 0, 1])), 2, seed=0)
    with pytest.raises(UserError, match="teacher.debias"):   # no word in two rows of a fold
        bag_of_words_logprobs(Split(["a b", "c d", "e f", "g h"], np.array([0, 1, 0, 1])), 2, seed=0)


def test_the_product_of_experts_loss_against_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    bias = torch.log(torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]]))
    cw = torch.tensor([1.0, 3.0])
    nll = [-(torch.log_softmax(logits[i] + bias[i], 0)[y]) for i, y in enumerate(labels.tolist())]
    assert weighted_cross_entropy(logits, labels, example_offset=bias).item() == pytest.approx((sum(nll) / 3).item())
    assert weighted_cross_entropy(logits, labels, cw, example_offset=bias).item() == pytest.approx(
        ((nll[0] + 3 * nll[1] + 3 * nll[2]) / 3).item())
    # a row the bias already explains (row 0: bias 0.9 for its label) costs less than alone
    assert weighted_cross_entropy(logits[:1], labels[:1], example_offset=bias[:1]) < weighted_cross_entropy(
        logits[:1], labels[:1])


def _batch(tokenizer, with_bias: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(6):
        ids = [101] + torch.randint(1000, 1100, (5,), generator=g).tolist() + [102]
        items.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": i % 2})
    enc = Encoded(items)
    if with_bias:
        enc = enc.with_fields(**{BIAS_LOGPROBS: [[math.log(0.8), math.log(0.2)]] * 6})
    return Collator(tokenizer)([enc[i] for i in range(len(enc))])


def test_only_the_teachers_objective_reads_the_bias(minilm_tokenizer):
    batch = _batch(minilm_tokenizer, with_bias=True)
    assert batch[BIAS_LOGPROBS].shape == (6, 2) and batch[BIAS_LOGPROBS].dtype == torch.float32
    model = tiny_bert(2, vocab_size=minilm_tokenizer.vocab_size)
    logits = model(**{k: v for k, v in batch.items() if k != BIAS_LOGPROBS and k != "labels"}).logits
    labels = batch["labels"]
    poe, _ = training.CrossEntropy(torch.tensor([1.0, 1.0]), product_of_experts=True)(model, dict(batch))
    assert poe.item() == pytest.approx(weighted_cross_entropy(logits, labels, example_offset=batch[BIAS_LOGPROBS]).item(),
                                       rel=1e-5)
    # another stage's cross-entropy drops the field: the same loss as a batch without it
    other, _ = training.CrossEntropy(torch.tensor([1.0, 1.0]))(model, dict(batch))
    assert other.item() == pytest.approx(weighted_cross_entropy(logits, labels).item(), rel=1e-5)
    assert abs(poe.item() - other.item()) > 1e-3
    # the model's own loss (no weights at all) is used, and the field never reaches the model
    b = dict(batch)
    assert training.CrossEntropy()(model, b) is None and BIAS_LOGPROBS not in b
    # the product without the field, in training, is a caller's mistake, not plain cross-entropy
    model.train()
    with pytest.raises(ValueError, match="with_bias"):
        training.CrossEntropy(product_of_experts=True)(model, dict(_batch(minilm_tokenizer, with_bias=False)))
    model.eval()  # evaluation batches carry no field: the teacher alone
    assert training.CrossEntropy(torch.tensor([1.0, 1.0]), product_of_experts=True)(
        model, dict(_batch(minilm_tokenizer, with_bias=False)))[0].item() == pytest.approx(other.item(), rel=1e-5)


def test_with_bias_attaches_lambda_times_the_log_probabilities_only_when_set():
    split = _split()
    enc = Encoded([{"input_ids": [101, 102], "attention_mask": [1, 1], "labels": int(y)} for y in split.labels])
    off = load_config(None, [])
    assert training.bias_logprobs(split, off) is None and training.with_bias(enc, None) is enc
    on = load_config(None, ["teacher.debias=0.5"])
    got = np.array([x[BIAS_LOGPROBS] for x in training.with_bias(enc, training.bias_logprobs(split, on)).items])
    assert np.allclose(got, 0.5 * bag_of_words_logprobs(split, 2, on.seed))


def test_the_setting_is_validated_and_changes_fingerprints_only_when_set():
    from distillora.config import stable_section, to_dict

    for bad in ("-1", "inf", "yes"):
        with pytest.raises(UserError, match="teacher.debias"):
            load_config(None, [f"teacher.debias={bad}"])

    # at 0 the key is left out, so runs made before it existed keep their stages
    assert "debias" not in stable_section(to_dict(load_config(None, [])), "teacher")
    assert "debias" in stable_section(to_dict(load_config(None, ["teacher.debias=1"])), "teacher")
    assert stage_fingerprints(["teacher.debias=1"])["teacher"] != stage_fingerprints([])["teacher"]


def test_a_tiny_study_trains_its_teacher_in_the_product_and_its_students_without(tmp_path, tiny_teacher_dir,
                                                                                 small_data, monkeypatch):
    from distillora import losses
    from distillora.rundir import RunDir
    from distillora.study import run_study

    seen = []

    def spy(logits, labels, class_weights=None, sample_weight=None, logit_offset=None, example_offset=None):
        seen.append(example_offset is not None)
        return weighted_cross_entropy(logits, labels, class_weights, sample_weight, logit_offset, example_offset)

    monkeypatch.setattr(training, "weighted_cross_entropy", spy)
    monkeypatch.setattr(losses, "weighted_cross_entropy", spy)
    cfg = load_config(None, [
        "name=poe", f"data.source={small_data}", "data.validation_fraction=0.25", "data.max_length=32",
        f"teacher.source={tiny_teacher_dir}", "teacher.train.epochs=1", "teacher.train.batch_size=8",
        "distill.train.epochs=1", "lora.train.epochs=1", "baseline.train.epochs=1", "lora.r=4", "lora.alpha=8",
        "check.suites=[]", "teacher.debias=1"])
    run = RunDir(run_study(cfg, tmp_path / "run", quiet=True))
    models = {m["name"]: m for m in run.results().models}
    assert set(models) == {"teacher", "odd", "even", "lora", "baseline"}
    assert "product of experts" in models["teacher"]["objective"]
    teacher_steps = models["teacher"]["train"]["steps"]
    # the teacher's training steps are the calls with the bias; every later call (students) has none
    assert seen[:teacher_steps] == [True] * teacher_steps
    assert not any(seen[teacher_steps:]) and len(seen) > teacher_steps


def test_data_the_bias_model_cannot_fit_is_refused_before_the_run_writes_anything(tmp_path, tiny_teacher_dir,
                                                                                    small_data, monkeypatch):
    from distillora import debias
    from distillora.study import run_study

    def refuse(*a, **kw):
        raise UserError("teacher.debias: cannot be fitted here")

    monkeypatch.setattr(debias, "bag_of_words_logprobs", refuse)
    cfg = load_config(None, ["name=poe", f"data.source={small_data}", f"teacher.source={tiny_teacher_dir}",
                             "check.suites=[]", "teacher.debias=1"])
    with pytest.raises(UserError, match="teacher.debias"):
        run_study(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
