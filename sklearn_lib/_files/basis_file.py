"""Fitted bases on disk: the one home of a :class:`~sklearn_lib._fitting.basis.NodeBasis`'s arrays.

Each basis is float arrays ``basis<i>_<field>`` (its mean, matrix,
pseudo-inverse, Lambda and Gram eigenvalues) and a JSON entry of its name,
shape, kept count and kind.  Reading checks every array's shape against the
entry before its data is read (:func:`bases_shapes`), then every invariant
a fit leaves in a basis (:func:`check_basis`), so that a file proves what it
holds.
"""

from functools import partial

import numpy as np

from .._core.identity import Identity
from .._core.nodes import OUTPUT_NODE
from .._fitting.basis import NodeBasis

FIELDS = ("mean", "matrix", "pinv", "lambdas", "gram_eigenvalues")
KINDS = ("lib", "pca", "identity")
#: The order a basis' arrays are read in: Lambda first, whose length ``K`` fixes
#: the others' shapes.
READ_ORDER = ("lambdas", "mean", "matrix", "pinv", "gram_eigenvalues")
#: Rows of ``pinv @ matrix`` formed at once by :func:`inverse_error`.
_BLOCK = 256


def basis_entry(basis):
    """The JSON entry of ``basis``."""
    return {
        "name": basis.name,
        "shape": list(basis.shape),
        "n_components": basis.n_components,
        "kind": basis.kind,
    }


def basis_arrays(i, basis):
    """The float arrays of basis number ``i``; an identity's matrices as empty ``(0, 0)``
    arrays (its kind says what they are: a vocabulary's would take gigabytes)."""
    return {f"basis{i}_{field}": _array(getattr(basis, field)) for field in FIELDS}


def _array(value):
    if isinstance(value, Identity):
        return np.empty((0, 0))
    return np.asarray(value, dtype=np.float64)


# -- before the data ------------------------------------------------------------------------
def bases_shapes(entries, keys):
    """``{key: check}`` of the arrays of the bases of ``entries``, in reading order.

    For :func:`~sklearn_lib._files.npz.read_npz`: each ``check(shape, arrays)``
    refuses a header whose shape the entry (and the basis' Lambda, read
    first) does not imply, before the data is read.  Raises ValueError for a
    malformed entry, or a basis whose arrays are not all among ``keys``,
    before any array is read.
    """
    if not isinstance(entries, list):
        raise ValueError(f"'meta' field 'bases' must be a list, not {entries!r}")
    names = []
    shapes = {}
    for i, entry in enumerate(entries):
        name, kind, shape = _entry(i, entry, names)
        names.append(name)
        n_components = entry.get("n_components")
        if type(n_components) is not int or not 1 <= n_components <= shape[-1]:
            raise ValueError(
                f"basis {name!r}: n_components {n_components!r} not in [1, {shape[-1]}]"
            )
        ours = [f"basis{i}_{field}" for field in READ_ORDER]
        if not set(ours) <= set(keys):
            raise ValueError(f"arrays of basis {name!r} are missing")
        for field, key in zip(READ_ORDER, ours):
            shapes[key] = partial(_header_shape, field, name, kind, shape[-1], ours[0])
    _check_order(names)
    return shapes


def _header_shape(field, name, kind, d, lambdas_key, shape, *, arrays):
    k = arrays[lambdas_key].shape[0] if field != "lambdas" else None
    _check_shape(field, name, kind, shape, d, k)


def _check_shape(field, name, kind, shape, d, k):
    """Raise ValueError unless ``field`` of a basis of width ``d`` and ``K = k`` features
    (None: ``field`` is Lambda, which fixes ``K``) has the ``shape`` a fit gives it."""
    if field == "lambdas":
        low = d if kind == "identity" else 1
        ok = len(shape) == 1 and low <= shape[0] <= d
        want = f"({d},)" if kind == "identity" else f"(K,) with 1 <= K <= {d}"
    elif field == "gram_eigenvalues":
        # The Gram's non-null eigenvalues: at least Lambda's (LIB), exactly them (PCA).
        low, high = {"identity": (0, 0), "pca": (k, k), "lib": (k, d)}[kind]
        ok = len(shape) == 1 and low <= shape[0] <= high
        want = f"({low},)" if low == high else f"(r,) with {low} <= r <= {high}"
    else:
        expected = {"mean": (d,), "matrix": (d, k), "pinv": (k, d)}[field]
        # An identity's matrices are implicit: empty, or (earlier files) whole.
        allowed = [(0, 0), (d, d)] if kind == "identity" and field != "mean" else [expected]
        ok, want = tuple(shape) in allowed, " or ".join(map(str, allowed))
    if not ok:
        raise ValueError(f"basis {name!r}: {field} has shape {tuple(shape)}, not {want}")


def _entry(i, entry, names):
    """``(name, kind, shape)`` of entry ``i``, checked; ``names``: those of the entries before."""
    if not isinstance(entry, dict):
        raise ValueError(f"basis {i} is not a JSON object: {entry!r}")
    name, kind = entry.get("name"), entry.get("kind")
    if not isinstance(name, str) or name in names or kind not in KINDS:
        raise ValueError(f"basis {i} has no distinct name or known kind: {entry!r}")
    shape = tuple(positive_ints(entry.get("shape"), f"basis {name!r} shape"))
    if not shape:
        raise ValueError(f"basis {name!r} has an empty shape: it needs a feature axis")
    return name, kind, shape


def _check_order(names):
    if len(names) < 2 or names[-1] != OUTPUT_NODE:
        raise ValueError("the bases must end with the model output's")


# -- after the data -------------------------------------------------------------------------
def read_bases(entries, arrays):
    """The :class:`NodeBasis` objects of ``entries`` by name; their arrays leave ``arrays``.

    Raises ValueError for a missing, malformed or inconsistent basis (see
    :func:`check_basis`), or bases that do not end with the model output's.
    """
    bases = {}
    for i, entry in enumerate(entries):
        name, kind, shape = _entry(i, entry, bases)
        bases[name] = _read_basis(i, name, kind, shape, entry.get("n_components"), arrays)
    _check_order(list(bases))
    return bases


def _read_basis(i, name, kind, shape, n_components, arrays):
    found = {field: arrays.pop(f"basis{i}_{field}", None) for field in FIELDS}
    if any(value is None for value in found.values()):
        raise ValueError(f"arrays of basis {name!r} are missing")
    d, lambdas = shape[-1], found["lambdas"]
    _check_shape("lambdas", name, kind, lambdas.shape, d, None)
    for field in READ_ORDER[1:]:
        _check_shape(field, name, kind, found[field].shape, d, lambdas.shape[0])
    if not all(np.isfinite(a).all() for a in found.values()):
        raise ValueError(f"basis {name!r} holds non-finite values")
    if kind == "identity":
        found["matrix"] = found["pinv"] = _identity(name, d, found["matrix"], found["pinv"])
    k = lambdas.shape[0]
    if type(n_components) is not int or not 1 <= n_components <= k:
        raise ValueError(f"basis {name!r}: n_components {n_components!r} not in [1, {k}]")
    matrices = (found[field] for field in FIELDS[:4])
    basis = NodeBasis(name, shape, *matrices, n_components, found["gram_eigenvalues"], kind)
    check_basis(basis)
    return basis


def check_basis(basis):
    """Raise ValueError unless ``basis`` holds what a fit leaves in one.

    Lambda and the Gram eigenvalues are descending and non-negative (both
    positive in a node layer's basis: a fit drops the null space; a PCA
    output's keeps its null directions), PCA's Lambda are its Gram
    eigenvalues and its pseudo-inverse is its matrix's transpose, an
    identity's Lambda are ones, the model output's basis keeps every
    feature, and the pseudo-inverse inverts the matrix: :func:`inverse_error`
    within ``sqrt(eps)`` of the arrays' dtype (1.5e-8 for the float64 a file
    holds; rounding gives 1e-14).
    """
    name, kind, lambdas, gram = basis.name, basis.kind, basis.lambdas, basis.gram_eigenvalues
    output, k = name == OUTPUT_NODE, lambdas.shape[0]
    _check_descending(name, "Lambda", lambdas, positive=not output)
    if output and not basis.n_components == k == basis.n_features:
        raise ValueError(
            f"basis {name!r} of the model output keeps {basis.n_components} of {k} features "
            f"of its {basis.n_features}: the output's basis keeps them all"
        )
    if kind == "identity":
        if not np.all(lambdas == 1):
            raise ValueError(f"basis {name!r} is of kind 'identity' but its Lambda are not ones")
        return
    _check_descending(name, "Gram eigenvalues", gram, positive=not output)
    if kind == "pca":
        if not np.array_equal(gram, lambdas):
            raise ValueError(
                f"basis {name!r} is PCA's, but its Lambda are not its Gram eigenvalues"
            )
        if not np.array_equal(basis.pinv, basis.matrix.T):
            raise ValueError(f"basis {name!r} is PCA's, but its pinv is not its matrix transposed")
    error = inverse_error(basis.matrix, basis.pinv)
    tolerance = np.sqrt(np.finfo(np.result_type(basis.matrix, basis.pinv)).eps)
    if not error <= tolerance:
        raise ValueError(
            f"basis {name!r}: pinv @ matrix is off the identity by {error:.3g} (relative to "
            f"the rows' and columns' norms), more than {tolerance:.3g}: the pseudo-inverse "
            "does not invert the matrix"
        )


def _check_descending(name, what, values, positive):
    """Raise ValueError unless ``values`` are descending and ``>= 0`` (``> 0``: ``positive``)."""
    low = values.min(initial=np.inf)
    if low < 0 or (positive and low == 0):
        raise ValueError(
            f"basis {name!r} has {what} down to {low:.6g}; a fit leaves them "
            f"{'positive' if positive else 'non-negative'}"
        )
    rises = np.flatnonzero(values[1:] > values[:-1])
    if rises.size:
        j = int(rises[0])
        raise ValueError(
            f"basis {name!r} has {what} rising from {values[j]:.6g} to {values[j + 1]:.6g} "
            f"(features {j} and {j + 1}); a fit orders them descending"
        )


def inverse_error(matrix, pinv):
    """How far ``pinv @ matrix`` is from the identity: the largest entry of
    ``|pinv @ matrix - I|``, each relative to the norms of its row of ``pinv`` and
    column of ``matrix`` (inf where a norm is zero or overflows).

    Relative so, rounding keeps it near the arrays' ``eps`` whatever the
    conditioning (by Cauchy-Schwarz, a product's rounding is at most ``d eps``
    times those norms): fits of the paper's model, with Gram and Lambda
    spreads of 1e12, give 3e-15 to 2e-14 (at most 6.4 ``eps sqrt(d)``).  Their
    norms' products are at most 4 there, so a pseudo-inverse row scaled by
    ``1 + 1e-7`` gives 3e-8.  Formed ``_BLOCK`` rows at a time: ``K^2 d``
    operations, 0.4 s at ``K = d = 2048`` on 2 cores.
    """
    C = np.asarray(matrix, dtype=np.float64)
    P = np.asarray(pinv, dtype=np.float64)
    with np.errstate(over="ignore"):
        col_norms, row_norms = np.linalg.norm(C, axis=0), np.linalg.norm(P, axis=1)
    if not (np.isfinite(col_norms).all() and np.isfinite(row_norms).all()):
        return np.inf
    worst = np.float64(0)
    with np.errstate(divide="ignore", invalid="ignore"):  # zero norms: inf or NaN, refused
        for start in range(0, P.shape[0], _BLOCK):
            block = P[start : start + _BLOCK] @ C
            rows = np.arange(block.shape[0])
            block[rows, start + rows] -= 1
            block = np.abs(block, out=block) / np.outer(row_norms[rows + start], col_norms)
            worst = np.maximum(worst, block.max())  # NaN stays NaN
    return float(worst) if not np.isnan(worst) else np.inf


def _identity(name, d, matrix, pinv):
    """The identity of width ``d`` that an identity basis' ``matrix`` and ``pinv`` stand
    for: empty, or (files of earlier versions) the whole identity."""
    empty = matrix.shape == pinv.shape == (0, 0)
    if not empty and not (np.array_equal(matrix, np.eye(d)) and np.array_equal(pinv, np.eye(d))):
        raise ValueError(f"basis {name!r} is of kind 'identity' but its matrices are not")
    return Identity(d)


def positive_ints(values, what):
    """``values`` if it is a list of positive ints; ValueError naming ``what`` otherwise."""
    if not isinstance(values, list) or not all(type(v) is int and v > 0 for v in values):
        raise ValueError(f"{what} must be a list of positive ints, not {values!r}")
    return values
