"""Streamed scores (``_analysis.scoring``) against scikit-learn's metrics."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, r2_score

from sklearn_lib._analysis.scoring import check_labels, make_scorer


def test_streamed_scores_equal_sklearn(rng):
    outputs = rng.normal(size=(50, 4))
    ablated = outputs + 0.3 * rng.normal(size=(50, 4))
    labels = rng.integers(0, 4, size=50)
    r2, acc = make_scorer(None, False)(), make_scorer(None, True)()
    for start in range(0, 50, 16):
        sl = slice(start, start + 16)
        r2.update(torch.as_tensor(ablated[sl]), torch.as_tensor(outputs[sl]), None)
        acc.update(torch.as_tensor(ablated[sl]), None, labels[sl])
    expected = r2_score(outputs, ablated, multioutput="variance_weighted")
    assert r2.result() == pytest.approx(expected, rel=1e-12)
    assert acc.result() == accuracy_score(labels, ablated.argmax(1))


def test_labels_are_checked_against_the_outputs():
    with pytest.raises(ValueError, match=r"y has shape \(3,\).*need class labels of shape \(4,\)"):
        check_labels(np.zeros(3), 4, (5,))
    with pytest.raises(ValueError, match=r"integer class labels in \[0, 5\)"):
        check_labels(np.array([0, 1.5]), 2, (5,))
    # The range is checked where labels are scored (padded positions never are).
    accuracy = make_scorer("accuracy", True)()
    with pytest.raises(ValueError, match=r"integer class labels in \[0, 5\)"):
        accuracy.update(torch.zeros(2, 5), None, np.array([0, 5]))
    # A stream's length is not known yet: only the per-sample shape is checked.
    assert check_labels(np.array([1.0, 2.0]), None, (5,)).dtype == np.int64


def test_accuracy_without_a_scored_label_names_the_rule():
    accuracy = make_scorer("accuracy", True)()
    accuracy.update(torch.zeros(2, 3, 5), None, np.full((2, 3), -100))
    with pytest.raises(ValueError, match="every label of y is -100"):
        accuracy.result()
