import numpy as np
import pytest
from scipy.stats import binomtest, bootstrap

from distillora.audit import audit, findings, normalise
from distillora.stats import bootstrap_ci, calibration, mcnemar_exact, threshold_on_validation


def test_mcnemar_hand_worked():
    y = np.array([1] * 10)
    a = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0])  # right on 8
    b = np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 0])  # right on 4
    r = mcnemar_exact(y, a, b)
    # discordant: A right & B wrong on rows 3..7 (5), A wrong & B right on row 8 (1)
    assert (r["a_right_b_wrong"], r["a_wrong_b_right"]) == (5, 1)
    # exact two-sided: 2 * P(X <= 1 | n=6, p=1/2) = 2 * (1 + 6) / 64
    assert r["p_value"] == pytest.approx(14 / 64)
    assert r["p_value"] == pytest.approx(binomtest(1, 6, 0.5).pvalue)


def test_mcnemar_no_discordant_pairs_and_symmetry():
    y = np.array([0, 1, 0, 1])
    assert mcnemar_exact(y, y, y)["p_value"] == 1.0
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    a, b = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    assert mcnemar_exact(y, a, b)["p_value"] == pytest.approx(mcnemar_exact(y, b, a)["p_value"])


def test_bootstrap_hand_cases():
    y = np.array([0, 1] * 50)
    assert bootstrap_ci(y, y) == (1.0, 1.0)
    assert bootstrap_ci(y, 1 - y) == (0.0, 0.0)
    # reproducible for a seed
    pred = y.copy()
    pred[:30] = 1 - pred[:30]
    assert bootstrap_ci(y, pred, seed=3) == bootstrap_ci(y, pred, seed=3)


def test_bootstrap_matches_scipy_reference():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 1000)
    pred = np.where(rng.random(1000) < 0.8, y, 1 - y)  # about 80% right
    lo, hi = bootstrap_ci(y, pred, "accuracy", resamples=2000, seed=0)
    ref = bootstrap(((y == pred).astype(float),), np.mean, n_resamples=2000, method="percentile",
                    random_state=np.random.default_rng(0)).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.006) and hi == pytest.approx(ref.high, abs=0.006)
    # and the normal approximation: accuracy +- 1.96 * sqrt(p(1-p)/n)
    p = (y == pred).mean()
    half = 1.96 * np.sqrt(p * (1 - p) / 1000)
    assert lo == pytest.approx(p - half, abs=0.006) and hi == pytest.approx(p + half, abs=0.006)
    flo, fhi = bootstrap_ci(y, pred, "f1_macro", resamples=300)
    assert flo < fhi


def test_calibration_hand_worked():
    # two predictions at confidence 0.9, both right: gap 0.1 in one bin holding all rows -> ECE 0.1
    r = calibration(np.array([0.9, 0.1]), np.array([1, 0]))
    assert r["ece"] == pytest.approx(0.1)
    assert r["bins"][0]["count"] == 2 and r["bins"][0]["accuracy"] == 1.0
    # confidence 0.75 with 3 of 4 right: perfectly calibrated
    r = calibration(np.array([0.75, 0.75, 0.75, 0.75]), np.array([1, 1, 1, 0]))
    assert r["ece"] == pytest.approx(0.0)


def test_threshold_on_validation():
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.9])
    y = np.array([0, 0, 0, 1, 1, 1])
    t = threshold_on_validation(p, y)
    assert 0.3 <= t < 0.35


def test_audit_on_crafted_data():
    train = (["you are lovely", "i hate them all", "i hate them all", "nice day"], np.array([0, 1, 1, 0]))
    test = (["@user nice day! #sun", "THEY are vermin", "visit www.x.com", "You are lovely."], np.array([0, 1, 0, 1]))
    a = audit({"train": train, "test": test}, ["not_hate", "hate"])
    assert a["splits"]["train"]["duplicates"] == 1 and a["splits"]["train"]["labels"] == {"not_hate": 2, "hate": 2}
    assert a["overlap"]["train/test"] == {"exact": 0, "normalised": 1}  # "You are lovely." ~ "you are lovely"
    s = a["shift"]["test"]
    assert s["not_hate"] == {"uppercase": 0.0, "hashtag": 0.5, "at_user": 0.5, "url": 0.5}
    assert s["hate"]["uppercase"] == 1.0 and s["hate"]["hashtag"] == 0.0
    assert a["shift"]["train"]["hate"]["uppercase"] == 0.0
    notes = findings(a, ["not_hate", "hate"])
    assert any("uppercase" in n for n in notes) and any("normalised" in n for n in notes)
    assert any("`test` rows labelled `hate` contain uppercase" in n for n in notes)
    assert normalise("@user Nice  day! #sun 2") == "nice day sun"


def test_audit_of_shared_data_surfaces_provenance(shared_data):
    """PROVENANCE.md: test hate rows carry uppercase (train is lowercased); test non-hate rows carry # and @user."""
    from distillora.config import DataConfig
    from distillora.data import load_splits

    s = load_splits(DataConfig(source=str(shared_data)), 42)
    a = audit({"train": (s.train.texts, s.train.labels), "test": (s.test.texts, s.test.labels)}, ["not_hate", "hate"])
    # PROVENANCE.md says train is lowercased; the audit finds 51 train rows (all labelled hate) that are not
    assert a["shift"]["train"]["not_hate"]["uppercase"] == 0 and a["shift"]["train"]["hate"]["uppercase"] < 0.05
    assert a["shift"]["test"]["hate"]["uppercase"] == pytest.approx(0.708, abs=0.002)
    assert a["shift"]["test"]["not_hate"]["hashtag"] == pytest.approx(0.748, abs=0.002)
    assert a["shift"]["test"]["not_hate"]["at_user"] == pytest.approx(0.31, abs=0.002)
    assert a["shift"]["test"]["hate"]["hashtag"] == 0 and a["shift"]["test"]["hate"]["at_user"] == 0
    assert a["overlap"]["train/test"]["exact"] == 0


def test_calibration_top_label_for_three_classes():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.4, 0.3, 0.3], [0.2, 0.2, 0.6]])
    labels = np.array([0, 2, 0, 2])
    c = calibration(probs, labels, bins=2)  # bins over [1/3, 1]: [1/3, 2/3] and (2/3, 1]
    # low bin: confidences 0.5 (wrong), 0.4 (right), 0.6 (right); high bin: 0.7 (right)
    assert [b["count"] for b in c["bins"]] == [3, 1]
    assert c["ece"] == pytest.approx(3 / 4 * abs(2 / 3 - 0.5) + 1 / 4 * abs(1 - 0.7))
    p1 = np.array([0.9, 0.2, 0.55, 0.4])  # a binary task: p(label 1) and its two-column form agree
    assert calibration(p1, np.array([1, 0, 0, 1])) == calibration(np.stack([1 - p1, p1], 1), np.array([1, 0, 0, 1]))


def test_test_metrics_for_three_classes_match_sklearn():
    from sklearn.metrics import f1_score, roc_auc_score

    from distillora.evaluate import test_metrics
    from distillora.rundir import upgrade_metrics

    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], 60)
    labels = rng.integers(0, 3, 60)
    m = test_metrics(probs, labels, ["a", "b", "c"])
    assert m["f1_macro"] == pytest.approx(f1_score(labels, probs.argmax(1), average="macro"))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert np.sum(m["confusion"]) == 60 and [c["support"] for c in m["per_class"].values()] == np.bincount(labels).tolist()
    only_two = test_metrics(probs[labels < 2], labels[labels < 2], ["a", "b", "c"])  # no row of class c
    assert only_two["per_class"]["c"]["roc_auc"] is None and only_two["roc_auc"] is not None
    old = {"accuracy": 0.8, "precision_hate": 0.5, "recall_hate": 0.25, "f1_hate": 1 / 3}
    assert upgrade_metrics(old, ["not_hate", "hate"]) == {
        "accuracy": 0.8, "per_class": {"hate": {"precision": 0.5, "recall": 0.25, "f1": 1 / 3}}}


def test_bootstrap_f1_counts_every_class():
    labels, preds = np.array([0, 1, 2, 2, 1, 0]), np.array([0, 1, 2, 1, 1, 0])
    lo, hi = bootstrap_ci(labels, preds, "f1_macro", resamples=200, seed=0)
    assert 0 <= lo <= hi <= 1
