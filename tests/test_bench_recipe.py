"""bench/recipe.py's scoring, by hand: every teacher recipe of docs/results.md was chosen on these rows,
and bench/soup.py, student_recipe.py and dev_scores.py score through the same functions."""

from types import SimpleNamespace

import numpy as np
import pytest

from conftest import load_bench


def test_a_scored_table_has_each_figure_as_computed_by_hand():
    bench = load_bench("recipe")
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.7, 0.3]])
    labels = [0, 1, 1, 1, 0]  # predictions 0, 1, 0, 1, 0: one hate row missed
    plain = bench.split_scores(probs, "dev", SimpleNamespace(labels=labels, categories=None))
    assert plain["accuracy"] == 0.8 and plain["recall"] == [1.0, pytest.approx(0.6667)]
    assert plain["balanced_accuracy"] == pytest.approx(0.8333)
    # macro F1: not-hate P 2/3 R 1 -> 0.8; hate P 1 R 2/3 -> 0.8
    assert plain["f1_macro"] == pytest.approx(0.8)
    kinds = ["a", "a", "b", "b", "a"]
    cat = bench.split_scores(probs, "functional", SimpleNamespace(labels=labels, categories=kinds))
    assert cat["functionality_accuracy"] == {"a": 1.0, "b": 0.5} and cat["functionality_accuracy_min"] == 0.5
    # validation: the recall of hate in each group
    val = bench.split_scores(probs, "validation", SimpleNamespace(labels=labels, categories=["", "x", "y", "y", ""]))
    assert val["category_recall"] == {"x": 1.0, "y": 0.5} and val["category_recall_min"] == 0.5
