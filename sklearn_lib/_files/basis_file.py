"""Fitted bases on disk: the one home of a :class:`~sklearn_lib._fitting.basis.NodeBasis`'s arrays.

Each basis is float arrays ``basis<i>_<field>`` (its mean, matrix,
pseudo-inverse, Lambda and Gram eigenvalues) and a JSON entry of its name,
shape, kept count and kind.  Reading checks every array against the shape.
"""

import numpy as np

from .._core.identity import Identity
from .._core.nodes import OUTPUT_NODE
from .._fitting.basis import NodeBasis

FIELDS = ("mean", "matrix", "pinv", "lambdas", "gram_eigenvalues")
KINDS = ("lib", "pca", "identity")


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


def read_bases(entries, arrays):
    """The :class:`NodeBasis` objects of ``entries`` by name; their arrays leave ``arrays``.

    Raises ValueError for a missing, malformed or inconsistent basis, or
    bases that do not end with the model output's.
    """
    bases = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"basis {i} is not a JSON object: {entry!r}")
        name, kind = entry.get("name"), entry.get("kind")
        if not isinstance(name, str) or name in bases or kind not in KINDS:
            raise ValueError(f"basis {i} has no distinct name or known kind: {entry!r}")
        bases[name] = _read_basis(i, entry, arrays)
    if len(bases) < 2 or list(bases)[-1] != OUTPUT_NODE:
        raise ValueError("the bases must end with the model output's")
    return bases


def _read_basis(i, entry, arrays):
    name = entry["name"]
    shape = tuple(positive_ints(entry.get("shape"), f"basis {name!r} shape"))
    if not shape:
        raise ValueError(f"basis {name!r} has an empty shape: it needs a feature axis")
    found = {field: arrays.pop(f"basis{i}_{field}", None) for field in FIELDS}
    if any(value is None for value in found.values()):
        raise ValueError(f"arrays of basis {name!r} are missing")
    d, (mean, matrix, pinv, lambdas, gram) = shape[-1], found.values()
    if entry["kind"] == "identity":
        found["matrix"] = found["pinv"] = _identity(name, d, matrix, pinv)
    k = lambdas.shape[0] if lambdas.ndim == 1 else -1
    expected = {"mean": (d,), "matrix": (d, k), "pinv": (k, d), "lambdas": (k,)}
    for field, want in expected.items():
        if found[field].shape != want:
            raise ValueError(f"basis {name!r}: {field} has shape {found[field].shape}, not {want}")
    arrays_found = [a for a in found.values() if not isinstance(a, Identity)]
    if gram.ndim != 1 or not all(np.isfinite(a).all() for a in arrays_found):
        raise ValueError(f"basis {name!r} holds non-finite values or a malformed array")
    n_components = entry.get("n_components")
    if type(n_components) is not int or not 1 <= n_components <= k:
        raise ValueError(f"basis {name!r}: n_components {n_components!r} not in [1, {k}]")
    return NodeBasis(
        name, shape, mean, *(found[f] for f in FIELDS[1:4]), n_components, gram, entry["kind"]
    )


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
