"""Argument checks (``_core.validation``): strict intervals, models, counts and sections."""

from numbers import Integral, Real

import numpy as np
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError, validate_params

from sklearn_lib._core.validation import (
    StrictInterval,
    TorchModel,
    check_count,
    check_counts,
    check_section,
    check_sections,
    resolve_model,
)

COUNT = StrictInterval(Integral, 1, None, closed="left")
FRACTION = StrictInterval(Real, 0, 1, closed="both")


@pytest.mark.parametrize("value", [1, 7, np.int64(3)])
def test_strict_interval_takes_ints_in_range(value):
    assert COUNT.is_satisfied_by(value)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 0, -1, 2.0, "3", None])
def test_strict_interval_refuses_bools_and_out_of_range(value):
    assert not COUNT.is_satisfied_by(value)


@pytest.mark.parametrize("value, expected", [(0.5, True), (1, True), (False, False), (True, False)])
def test_strict_real_interval_refuses_bools(value, expected):
    assert FRACTION.is_satisfied_by(value) is expected
    assert not FRACTION.is_satisfied_by(float("nan"))


def test_strict_interval_in_validate_params():
    @validate_params({"n": [COUNT]}, prefer_skip_nested_validation=True)
    def count(n):
        return n

    assert count(3) == 3
    assert str(COUNT).endswith("(not a bool)")
    with pytest.raises(InvalidParameterError, match=r"not a bool\)\. Got True"):
        count(True)
    with pytest.raises(InvalidParameterError):
        count(0)


class FakeNet:
    """What skorch's nets have: ``initialize``, ``module`` and ``get_params``."""

    def __init__(self, module=None):
        self.module = torch.nn.Linear
        if module is not None:
            self.module_ = module

    def initialize(self):
        return self

    def get_params(self, deep=True):
        return {}


def test_torch_model_takes_modules_and_skorch_nets():
    constraint = TorchModel()
    assert constraint.is_satisfied_by(torch.nn.Linear(2, 3))
    assert constraint.is_satisfied_by(FakeNet())
    assert not constraint.is_satisfied_by(lambda x: x)  # callable, but not a module
    assert not constraint.is_satisfied_by("model")
    assert "torch.nn.Module" in str(constraint) and "skorch" in str(constraint)


def test_resolve_model():
    module = torch.nn.Linear(2, 3)
    assert resolve_model(module) is module
    assert resolve_model(FakeNet(module)) is module
    with pytest.raises(ValueError, match="skorch FakeNet that is not initialised"):
        resolve_model(FakeNet())


@pytest.mark.parametrize(
    "value, expected",
    [
        (5, [5]),
        (np.int32(4), [4]),
        ([1, 2, 3], [1, 2, 3]),
        ((7,), [7]),
        (np.array([2, 9], dtype=np.int16), [2, 9]),
        (range(3), [0, 1, 2]),
    ],
)
def test_counts_as_int64(value, expected):
    counts = check_counts(value, "n")
    assert counts.dtype == np.int64 and counts.ndim == 1
    np.testing.assert_array_equal(counts, expected)


@pytest.mark.parametrize(
    "value, error, match",
    [
        ([[1, 2]], ValueError, r"n must be an int or a 1-D array-like of ints, got .* \(1, 2\)"),
        (True, ValueError, r"1-D array-like of ints, got an array of shape \(\)"),
        ([], ValueError, "n is empty"),
        ([2.5], TypeError, "n must hold integers, got float64"),
        ([2.0], TypeError, "must hold integers"),
        ([True, False], TypeError, "must hold integers, got bool"),
        (["3"], TypeError, "must hold integers"),
    ],
)
def test_counts_refused(value, error, match):
    with pytest.raises(error, match=match):
        check_counts(value, "n")


@pytest.mark.parametrize("section", [("fc1", "fc2"), ["fc1", "output"]])
def test_a_section_is_a_tuple_of_two_names(section):
    assert check_section(section) == tuple(section)
    assert type(check_section(section)) is tuple


@pytest.mark.parametrize(
    "section", ["ab", b"ab", ("fc1",), ("a", "b", "c"), ("fc1", 2), {"a", "b"}, None]
)
def test_malformed_sections_are_refused(section):
    with pytest.raises(ValueError, match=r"where must be a pair \(src, dst\) of node names"):
        check_section(section, "where")


def test_sections_a_list_of_pairs():
    assert check_sections([("a", "b"), ["b", "c"]]) == [("a", "b"), ("b", "c")]


@pytest.mark.parametrize(
    "sections, match",
    [
        (("a", "b"), r"the single pair \('a', 'b'\); for one section pass \[\('a', 'b'\)\]"),
        (["a", "b"], "the single pair"),
        ([], "sections is empty; pass None"),
        ([("a", "b"), "bc"], "each of sections must be a pair"),
    ],
)
def test_sections_refused(sections, match):
    with pytest.raises(ValueError, match=match):
        check_sections(sections)


@pytest.mark.parametrize("value, error", [(0, ValueError), (True, TypeError), (1.0, TypeError)])
def test_check_count(value, error):
    with pytest.raises(error, match="^n(=0)? must"):
        check_count(value, "n")
    assert check_count(np.int64(3), "n") == 3
