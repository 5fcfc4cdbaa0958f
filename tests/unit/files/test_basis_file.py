"""Fitted bases on disk (``_files.basis_file``): every array checked against the shape."""

import copy
import io
import json

import numpy as np
import pytest

from sklearn_lib._core.identity import Identity
from sklearn_lib._core.nodes import OUTPUT_NODE
from sklearn_lib._files.basis_file import (
    FIELDS,
    basis_arrays,
    basis_entry,
    positive_ints,
    read_bases,
)
from sklearn_lib._files.npz import read_npz
from sklearn_lib._fitting.basis import NodeBasis


def _bases(rng):
    d, k = 4, 3
    matrix = rng.normal(size=(d, k))
    hidden = NodeBasis(
        "blocks.0",
        (2, d),
        mean=rng.normal(size=d),
        matrix=matrix,
        pinv=np.linalg.pinv(matrix),
        lambdas=np.array([3.0, 2.0, 0.5]),
        n_components=2,
        gram_eigenvalues=np.array([4.0, 1.0, 0.1, 0.01]),
        kind="lib",
    )
    output = NodeBasis(
        OUTPUT_NODE,
        (2,),
        mean=np.zeros(2, dtype=np.float32),
        matrix=Identity(2),
        pinv=Identity(2),
        lambdas=np.ones(2),
        n_components=2,
        kind="identity",
    )
    return [hidden, output]


def _saved(bases):
    """The entries (through JSON, as a file holds them) and arrays of ``bases``."""
    entries = json.loads(json.dumps([basis_entry(b) for b in bases]))
    arrays = {}
    for i, basis in enumerate(bases):
        arrays.update(basis_arrays(i, basis))
    return entries, arrays


def _assert_same(read, bases):
    assert list(read) == [b.name for b in bases]
    for basis in bases:
        got = read[basis.name]
        assert isinstance(got, NodeBasis)
        assert (got.name, got.shape, got.n_components, got.kind) == (
            basis.name,
            tuple(basis.shape),
            basis.n_components,
            basis.kind,
        )
        assert type(got.shape) is tuple
        for field in FIELDS:
            np.testing.assert_array_equal(getattr(got, field), getattr(basis, field))


def test_the_entry_of_a_basis(rng):
    hidden, _ = _bases(rng)
    assert basis_entry(hidden) == {
        "name": "blocks.0",
        "shape": [2, 4],
        "n_components": 2,
        "kind": "lib",
    }


def test_the_arrays_of_a_basis_are_float64(rng):
    _, output = _bases(rng)
    arrays = basis_arrays(7, output)
    assert sorted(arrays) == sorted(f"basis7_{field}" for field in FIELDS)
    assert all(a.dtype == np.float64 for a in arrays.values())
    # The identity's matrices are implicit: its kind says what they are.
    assert arrays["basis7_matrix"].shape == arrays["basis7_pinv"].shape == (0, 0)
    assert arrays["basis7_gram_eigenvalues"].shape == (0,)


def test_an_identity_basis_reads_back_implicit(rng):
    bases = _bases(rng)
    entries, arrays = _saved(bases)
    read = read_bases(entries, arrays)[OUTPUT_NODE]
    assert isinstance(read.matrix, Identity) and isinstance(read.pinv, Identity)
    assert read.matrix.shape == (2, 2)


def test_an_earlier_files_whole_identity_reads_back_implicit(rng):
    entries, arrays = _saved(_bases(rng))
    arrays["basis1_matrix"] = arrays["basis1_pinv"] = np.eye(2)
    assert isinstance(read_bases(entries, arrays)[OUTPUT_NODE].matrix, Identity)


def test_an_identity_basis_with_other_matrices_is_refused(rng):
    entries, arrays = _saved(_bases(rng))
    arrays["basis1_matrix"], arrays["basis1_pinv"] = np.eye(2), 2 * np.eye(2)
    with pytest.raises(ValueError, match="kind 'identity' but its matrices are not"):
        read_bases(entries, arrays)


def test_bases_round_trip_and_leave_the_other_arrays(rng):
    bases = _bases(rng)
    entries, arrays = _saved(bases)
    arrays["graph_lambdas_0"] = np.ones(3)
    _assert_same(read_bases(entries, arrays), bases)
    assert list(arrays) == ["graph_lambdas_0"]


def test_bases_round_trip_through_an_npz_file(rng):
    bases = _bases(rng)
    entries, arrays = _saved(bases)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    buffer.seek(0)
    _assert_same(read_bases(entries, read_npz(buffer)), bases)


def _set(index, key, value):
    def change(entries, arrays):
        entries[index][key] = value

    return change


def _array(name, value):
    def change(entries, arrays):
        if value is None:
            del arrays[name]
        else:
            arrays[name] = value

    return change


def _poison(name, value):
    def change(entries, arrays):
        arrays[name] = arrays[name].copy()
        arrays[name].flat[0] = value

    return change


def _only_the_output(entries, arrays):
    del entries[0]
    for field in FIELDS:
        arrays[f"basis0_{field}"] = arrays.pop(f"basis1_{field}")


MALFORMED = {
    "name not a str": (_set(0, "name", 3), "basis 0 has no distinct name or known kind"),
    "names repeat": (_set(1, "name", "blocks.0"), "basis 1 has no distinct name"),
    "unknown kind": (_set(0, "kind", "ica"), "known kind"),
    "no kind": (lambda e, a: e[0].pop("kind"), "known kind"),
    "only the output": (_only_the_output, "must end with the model output's"),
    "output not last": (_set(1, "name", "fc9"), "must end with the model output's"),
    "shape not a list": (_set(0, "shape", "2, 4"), "shape must be a list of positive ints"),
    "shape with a zero": (_set(0, "shape", [0, 4]), "shape must be a list of positive ints"),
    "shape with a bool": (_set(0, "shape", [True, 4]), "shape must be a list"),
    "shape with a float": (_set(0, "shape", [2, 4.0]), "shape must be a list"),
    "shape of another width": (_set(0, "shape", [2, 5]), r"mean has shape \(4,\), not \(5,\)"),
    "array missing": (_array("basis1_pinv", None), "arrays of basis 'output' are missing"),
    "mean of another shape": (_array("basis0_mean", np.zeros(3)), "mean has shape"),
    "matrix of another k": (_array("basis0_matrix", np.zeros((4, 2))), "matrix has shape"),
    "pinv transposed": (_array("basis0_pinv", np.zeros((4, 3))), r"pinv has shape \(4, 3\)"),
    "lambdas 2-D": (_array("basis0_lambdas", np.ones((3, 1))), "has shape"),
    "gram 2-D": (_array("basis0_gram_eigenvalues", np.ones((2, 2))), "malformed array"),
    "NaN in pinv": (_poison("basis0_pinv", np.nan), "non-finite values"),
    "inf in the gram": (_poison("basis0_gram_eigenvalues", np.inf), "non-finite values"),
    "-inf in lambdas": (_poison("basis1_lambdas", -np.inf), "non-finite values"),
    "no n_components": (lambda e, a: e[0].pop("n_components"), "n_components None not in"),
    "n_components 0": (_set(0, "n_components", 0), r"n_components 0 not in \[1, 3\]"),
    "n_components above k": (_set(0, "n_components", 4), r"n_components 4 not in \[1, 3\]"),
    "n_components a bool": (_set(0, "n_components", True), "n_components True not in"),
    "n_components a float": (_set(0, "n_components", 2.0), "n_components 2.0 not in"),
}


@pytest.mark.parametrize("change, match", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_bases_are_refused(rng, change, match):
    entries, arrays = _saved(_bases(rng))
    change(entries, arrays)
    with pytest.raises(ValueError, match=match):
        read_bases(entries, arrays)


def test_the_saved_entries_are_not_changed_by_a_read(rng):
    entries, arrays = _saved(_bases(rng))
    before = copy.deepcopy(entries)
    read_bases(entries, arrays)
    assert entries == before


def test_an_empty_shape_is_refused(rng):
    entries, arrays = _saved(_bases(rng))
    entries[0]["shape"] = []
    with pytest.raises(ValueError, match="has an empty shape: it needs a feature axis"):
        read_bases(entries, arrays)


def test_an_entry_that_is_not_an_object_is_refused(rng):
    entries, arrays = _saved(_bases(rng))
    entries[0] = ["blocks.0", [2, 4], 2, "lib"]
    with pytest.raises(ValueError, match="basis 0 is not a JSON object"):
        read_bases(entries, arrays)


@pytest.mark.parametrize("values", [[1], [3, 1, 2], []])
def test_positive_ints_pass(values):
    assert positive_ints(values, "what") is values


@pytest.mark.parametrize("values", [(1, 2), [0], [-1], [True], [1.0], ["1"], None, 3])
def test_other_values_fail(values):
    with pytest.raises(ValueError, match=r"my shape must be a list of positive ints, not"):
        positive_ints(values, "my shape")
