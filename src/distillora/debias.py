"""A product of experts with a bias-only model (`teacher.debias`): the teacher trains on
softmax(logits + lambda * log p_bias(y | x)) instead of softmax(logits), and is used alone afterwards
(Clark, Yatskar & Zettlemoyer, EMNLP 2019; He, Zha & Wang, DeepLo 2019).

Why: the reference task's training tweets let a model score well by their words alone (slurs and
profanity mark most of its hate rows), while the text the tool serves (short statements typed into the
web app, a test split from another source) often says hateful things without those words. In the
product the bias-only model already explains the examples its words decide, so their gradient is
small, and the teacher learns most from the examples the words get wrong.

The bias-only model is a bag of words and word pairs (scikit-learn's TF-IDF and a logistic regression,
class-balanced so that it carries no class prior: `class_weights` already corrects that). Its
log-probabilities on each training row are predicted out of fold (k folds, stratified, seeded), so a
row's bias is that of a model that did not see the row: a bias model that had memorised its training
rows would explain every one of them and leave the teacher nothing to learn."""

from __future__ import annotations

import logging

import numpy as np

from .data import Split
from .errors import UserError

log = logging.getLogger("distillora")

FOLDS = 5
# the lowest log-probability the bias model gives: a label absent from train, and the two-label model's
# exact 0 (sklearn's log(1 - expit(d)) is -inf once d passes about 37), which would make the loss of a
# row of that label infinite
FLOOR = float(np.log(1e-6))


def bag_of_words_logprobs(split: Split, num_labels: int, seed: int, folds: int = FOLDS) -> np.ndarray:
    """(N, num_labels) out-of-fold log-probabilities of the bias-only model for every row of `split`
    (its texts as the models see them, after `data.normalize`; a pair task's two texts joined). Raises
    UserError when a label has fewer than 2 rows (no fold could hold it out)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline

    texts = split.texts if split.pairs is None else [f"{a} || {b}" for a, b in zip(split.texts, split.pairs)]
    labels = np.asarray(split.labels)
    counts = np.bincount(labels, minlength=num_labels)
    present = counts[counts > 0]
    k = int(min(folds, present.min())) if len(present) else 0
    if k < 2 or len(present) < 2:
        raise UserError(f"teacher.debias: the bias-only model needs at least 2 training rows of each of at least 2 "
                        f"labels (label counts {counts.tolist()}); set teacher.debias: 0")
    pipe = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                         LogisticRegression(class_weight="balanced", max_iter=2000))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    try:
        got = cross_val_predict(pipe, texts, labels, cv=cv, method="predict_log_proba")
    except ValueError as e:  # e.g. "After pruning, no terms remain": no word occurs in two rows of a fold
        raise UserError(f"teacher.debias: the bag-of-words bias model cannot be fitted on these {len(texts)} "
                        f"training rows ({e}); set teacher.debias: 0") from None
    out = np.full((len(texts), num_labels), FLOOR)  # a label absent from train: never predicted
    out[:, np.flatnonzero(counts)] = np.maximum(got, FLOOR)  # the pipeline's columns: the labels present, in order
    acc = float((out.argmax(1) == labels).mean())
    log.info("teacher.debias: bag-of-words bias model, %d-fold out-of-fold accuracy %.3f on %d training rows%s",
             k, acc, len(labels), "" if k == folds else f" (fewer folds: a label has only {k} rows)")
    return out
