"""Fitted bases on disk (``_files.basis_file``): every array checked against the shape."""

import copy
import io
import json
import zipfile

import numpy as np
import pytest

from sklearn_lib._core.identity import Identity
from sklearn_lib._core.nodes import OUTPUT_NODE
from sklearn_lib._files.basis_file import (
    FIELDS,
    READ_ORDER,
    bases_shapes,
    basis_arrays,
    basis_entry,
    check_basis,
    inverse_error,
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
    _, arrays = read_npz(buffer)
    _assert_same(read_bases(entries, arrays), bases)


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
    "gram 2-D": (
        _array("basis0_gram_eigenvalues", np.ones((2, 2))),
        r"gram_eigenvalues has shape \(2, 2\), not \(r,\) with 3 <= r <= 4",
    ),
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


# -- what a fit leaves in a basis -----------------------------------------------------------
def _orthonormal(rng, rows, cols):
    return np.linalg.qr(rng.normal(size=(rows, cols)))[0]


def _lib_basis(rng, d=40, r=30, k=20, spread=1e11, name="blocks.0"):
    """A LIB basis by the spec's formulas (``C = U D^-1/2 V Lambda^1/2``), its Gram
    eigenvalues ``D`` and Lambda each spread over ``spread``, as a fit's may be."""
    U, V = _orthonormal(rng, d, r), _orthonormal(rng, r, k)
    D, lambdas = np.geomspace(1.0, 1 / spread, r), np.geomspace(5.0, 5 / spread, k)
    matrix = (U / np.sqrt(D)) @ V * np.sqrt(lambdas)
    pinv = (V / np.sqrt(lambdas)).T @ (U * np.sqrt(D)).T
    return NodeBasis(name, (d,), rng.normal(size=d), matrix, pinv, lambdas, k, D, "lib")


def _pca_basis(rng, d=6, k=4, name="blocks.0"):
    D = np.array([4.0, 2.0, 1.0, 0.5, 0.0, 0.0])[:k]
    Q = _orthonormal(rng, d, k)
    return NodeBasis(name, (d,), np.zeros(d), Q, Q.T.copy(), D.copy(), k, D.copy(), "pca")


def test_an_ill_conditioned_basis_inverts_to_rounding(rng):
    basis = _lib_basis(rng)
    assert np.linalg.cond(basis.matrix) > 1e7  # far from orthogonal
    eps = np.finfo(np.float64).eps
    assert inverse_error(basis.matrix, basis.pinv) < 16 * np.sqrt(40) * eps
    check_basis(basis)


def test_a_float32_copy_of_a_basis_passes_at_float32s_tolerance(rng):
    basis = _lib_basis(rng, spread=1e3)
    single = {f: getattr(basis, f).astype(np.float32) for f in FIELDS}
    error = inverse_error(single["matrix"], single["pinv"])
    assert np.finfo(np.float64).eps < error < np.sqrt(np.finfo(np.float32).eps)
    check_basis(NodeBasis("blocks.0", (40,), **single, n_components=20, kind="lib"))


@pytest.mark.parametrize(
    "change, low",
    [
        (lambda C, P: (C, P * 1.001), 1e-6),  # 0.1% off
        (lambda C, P: (C[:, ::-1], P), 1e-3),  # features out of order
        (lambda C, P: (C, np.linalg.pinv(C * np.linspace(1, 2, 40)[:, None])), 1e-3),  # another's
    ],
    ids=["0.1% off", "out of order", "another matrix's"],
)
def test_a_pseudo_inverse_that_does_not_invert_is_measured(rng, change, low):
    basis = _lib_basis(rng, spread=1e4)
    matrix, pinv = change(basis.matrix, basis.pinv)
    assert inverse_error(matrix, pinv) > low


def test_a_zero_row_or_an_overflowing_norm_does_not_invert(rng):
    basis = _lib_basis(rng, spread=10)
    pinv = basis.pinv.copy()
    pinv[3] = 0
    assert inverse_error(basis.matrix, pinv) == np.inf
    assert inverse_error(basis.matrix * 1e300, basis.pinv * 1e-300) == np.inf


def _with(basis, **changes):
    fields = {f: getattr(basis, f) for f in ("name", "shape", *FIELDS, "n_components", "kind")}
    return NodeBasis(**{**fields, **changes})


def _pca_output(rng):
    return _pca_basis(rng, d=6, k=6, name=OUTPUT_NODE)  # null directions kept (Lambda 0)


LIES = {
    "negative Lambda": (
        lambda rng: _with(_lib_basis(rng), lambdas=np.r_[np.geomspace(5, 1, 19), -1e-3]),
        r"'blocks.0' has Lambda down to -0.001; a fit leaves them positive",
    ),
    "zero Lambda": (
        lambda rng: _with(_lib_basis(rng), lambdas=np.r_[np.geomspace(5, 1, 19), 0.0]),
        "Lambda down to 0; a fit leaves them positive",
    ),
    "ascending Lambda": (
        lambda rng: _with(_lib_basis(rng), lambdas=np.geomspace(1, 5, 20)),
        r"Lambda rising from 1 to 1.08\d* \(features 0 and 1\)",
    ),
    "negative Gram eigenvalue": (
        lambda rng: _with(_lib_basis(rng), gram_eigenvalues=np.r_[np.ones(29), -1e-12]),
        "Gram eigenvalues down to -1e-12",
    ),
    "ascending Gram eigenvalues": (
        lambda rng: _with(_lib_basis(rng), gram_eigenvalues=np.arange(1.0, 31.0)),
        "Gram eigenvalues rising from 1 to 2",
    ),
    "pinv 1e-6 off": (
        lambda rng: _with(_lib_basis(rng), pinv=_lib_basis(rng).pinv * (1 + 1e-6)),
        r"pinv @ matrix is off the identity by .*the pseudo-inverse does not invert",
    ),
    "PCA's Lambda not its Gram's": (
        lambda rng: _with(_pca_basis(rng), lambdas=np.array([4.0, 2.0, 1.0, 0.25])),
        "Lambda are not its Gram eigenvalues",
    ),
    "PCA's pinv not its matrix transposed": (
        lambda rng: _with(_pca_basis(rng), pinv=np.linalg.pinv(_pca_basis(rng).matrix)),
        "pinv is not its matrix transposed",
    ),
    "PCA's zero Lambda in a node layer": (
        lambda rng: _pca_basis(rng, k=5),
        "Lambda down to 0; a fit leaves them positive",
    ),
    "a truncated output": (
        lambda rng: _with(_pca_output(rng), n_components=5),
        "of the model output keeps 5 of 6 features of its 6",
    ),
    "an output of fewer features": (
        lambda rng: _pca_basis(rng, d=6, k=4, name=OUTPUT_NODE),
        "keeps 4 of 4 features of its 6",
    ),
    "an identity of other Lambda": (
        lambda rng: _with(_bases(rng)[1], lambdas=np.array([2.0, 2.0])),
        "kind 'identity' but its Lambda are not ones",
    ),
}


@pytest.mark.parametrize("make, match", LIES.values(), ids=LIES)
def test_a_basis_no_fit_leaves_is_refused(rng, make, match):
    with pytest.raises(ValueError, match=match):
        check_basis(make(rng))


@pytest.mark.parametrize("make", [_lib_basis, _pca_basis, _pca_output, lambda r: _bases(r)[1]])
def test_what_a_fit_leaves_passes(rng, make):
    check_basis(make(rng))


def test_a_basis_that_lies_does_not_read_back(rng):
    bases = _bases(rng)
    entries, arrays = _saved(bases)
    arrays["basis0_pinv"] = arrays["basis0_pinv"] * 1.01
    with pytest.raises(ValueError, match="'blocks.0': pinv @ matrix is off the identity"):
        read_bases(entries, arrays)


# -- shapes before the data -----------------------------------------------------------------
def _archive(entries, arrays, **members):
    """A buffer of an archive: ``entries`` as meta, ``arrays``, then raw ``members``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("meta.npy", _npy(np.array(json.dumps(entries))))
        for key, value in arrays.items():
            archive.writestr(f"{key}.npy", _npy(value))
        for key, data in members.items():
            archive.writestr(f"{key}.npy", data)
    buffer.seek(0)
    return buffer


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _layout(text, keys):
    entries = json.loads(text)
    return entries, bases_shapes(entries, keys)


def test_bases_read_back_in_the_order_their_shapes_need(rng):
    bases = _bases(rng)
    entries, arrays = _saved(bases)
    meta, read = read_npz(_archive(entries, arrays), _layout)
    assert list(read)[:5] == [f"basis0_{field}" for field in READ_ORDER]
    _assert_same(read_bases(meta, read), bases)


def _claim(shape):
    """A ``.npy`` header claiming ``shape`` of float64, without any data."""
    buffer = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "key, shape, match",
    [
        ("basis0_lambdas", (10**9,), r"lambdas has shape \(1000000000,\), not \(K,\) with 1 <= K"),
        ("basis0_mean", (10**9,), r"mean has shape \(1000000000,\), not \(4,\)"),
        ("basis0_matrix", (4, 10**9), r"matrix has shape \(4, 1000000000\), not \(4, 3\)"),
        ("basis0_pinv", (10**5, 10**5), r"pinv has shape \(100000, 100000\), not \(3, 4\)"),
        ("basis0_gram_eigenvalues", (10**9,), r"not \(r,\) with 3 <= r <= 4"),
        ("basis1_lambdas", (10**9,), r"'output': lambdas has shape \(1000000000,\), not \(2,\)"),
        ("basis1_matrix", (10**5, 10**5), r"not \(0, 0\) or \(2, 2\)"),
        ("basis1_gram_eigenvalues", (10**9,), r"not \(0,\)"),
    ],
)
def test_a_header_claiming_another_shape_is_refused_before_its_data(rng, key, shape, match):
    entries, arrays = _saved(_bases(rng))
    arrays.pop(key)
    with pytest.raises(ValueError, match=match):
        read_npz(_archive(entries, arrays, **{key: _claim(shape)}), _layout)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda e, a: a.pop("basis1_mean"), "arrays of basis 'output' are missing"),
        (_set(0, "n_components", 5), r"n_components 5 not in \[1, 4\]"),
        (_set(1, "name", "fc9"), "must end with the model output's"),
        (_set(0, "shape", [0, 4]), "shape must be a list of positive ints"),
        (lambda e, a: e.append({"name": "x"}), "basis 2 has no distinct name or known kind"),
    ],
)
def test_entries_and_members_are_checked_before_any_data(rng, change, match):
    entries, arrays = _saved(_bases(rng))
    change(entries, arrays)
    # Every member's data is garbage: none of it may be read.
    garbage = {key: b"\x93NUMPY garbage" for key in arrays}
    with pytest.raises(ValueError, match=match):
        read_npz(_archive(entries, {}, **garbage), _layout)
