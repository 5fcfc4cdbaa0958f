"""Saved fits: a fitted ``LIBTransformer`` in a file without its model, never unpickled.

A fit's result is its bases, a few shapes and its parameters: kilobytes to
megabytes, where a pickled estimator carries the whole model (17 MB for a
4.2M-parameter model whose bases take 0.1 MB) and runs arbitrary code when
loaded.  So :func:`save` writes a compressed ``.npz`` of float arrays (every
basis' mean, matrix, pseudo-inverse, Lambda and Gram eigenvalues, and the
interaction graph of ``compute_graph=True``) and one JSON string ``meta``
(parameters, shapes and fitted attributes), with the package's own atomic
write and checked reader (:mod:`~sklearn_lib._files.npz`), the format of
``InteractionGraph.save``: no new dependency, and nothing is ever unpickled.

:func:`load` takes the model separately, checks that it has the node layers
with the saved activation shapes (one forward pass on a probe of zeros of the
saved input shapes) and refuses a mismatch; the saved checksums of the model
the bases were fitted on make later calls warn (``StaleBasisWarning``) when
the given model's weights differ.
"""

import json
import warnings

import numpy as np
import torch

from .._analysis.graph import InteractionGraph, _check_arrays
from .._core.nodes import OUTPUT_NODE
from .._fitting.basis import NodeBasis
from .._fitting.fit import SourceRounds
from .._model.capture import inspect_node_layers
from .._model.inputs import is_dict
from .._model.session import resolve_device
from .npz import CONTENT_ERRORS, as_path, json_default, read_npz, write_atomically

_FORMAT = "sklearn-lib LIBTransformer"
_VERSION = 1
_BASIS_ARRAYS = ("mean", "matrix", "pinv", "lambdas", "gram_eigenvalues")


def input_dtypes(x):
    """What a probe of zeros must hold, per field: ``"float"`` or an integer dtype's name."""
    if is_dict(x):
        return {key: _kind(value) for key, value in x.items()}
    return _kind(x)


def _kind(tensor):
    return "float" if tensor.is_floating_point() else str(tensor.dtype).removeprefix("torch.")


# -- writing --------------------------------------------------------------------------------
def save(estimator, path):
    """Write a fitted ``LIBTransformer`` to ``path`` (see ``LIBTransformer.save``)."""
    path = as_path(path)
    meta = {
        "format": _FORMAT,
        "version": _VERSION,
        "params": _saved_params(estimator),
        "fitted": _saved_fitted(estimator),
        "bases": [
            {"name": b.name, "shape": list(b.shape), "n_components": b.n_components, "kind": b.kind}
            for b in estimator.bases_.values()
        ],
    }
    arrays = {}
    for i, basis in enumerate(estimator.bases_.values()):
        for field in _BASIS_ARRAYS:
            arrays[f"basis{i}_{field}"] = np.asarray(getattr(basis, field), dtype=np.float64)
    graph = getattr(estimator, "interaction_graph_", None)
    if graph is not None:
        meta["graph"] = {"nodes": graph.nodes, "info": graph.info}
        for i, node in enumerate(graph.nodes):
            arrays[f"graph_lambdas_{i}"] = np.asarray(graph.lambdas[node], dtype=np.float64)
        for i, section in enumerate(graph.sections):
            arrays[f"graph_edges_{i}"] = np.asarray(graph.edges[section], dtype=np.float64)
    output_config = getattr(estimator, "_sklearn_output_config", {}).get("transform")
    if output_config is not None:
        meta["output_config"] = {"transform": output_config}
    text = json.dumps(meta, default=json_default)
    write_atomically(path, lambda file: np.savez_compressed(file, meta=np.array(text), **arrays))


def _saved_params(estimator):
    """The parameters but the model, as JSON; TypeError for one that JSON cannot hold."""
    params = estimator.get_params(deep=False)
    params.pop("model")
    out = {}
    for name, value in params.items():
        if isinstance(value, (torch.device, torch.dtype)):
            value = str(value).removeprefix("torch.")
        elif isinstance(value, tuple):
            value = {"tuple": list(value)}
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"{type(estimator).__name__}.save cannot store {name}={value!r}: only "
                "parameters that JSON holds (str, numbers, lists, dicts, None) can be saved; "
                "set it to such a value, or pickle the estimator instead"
            ) from None
        out[name] = value
    return out


def _saved_fitted(estimator):
    fitted = {
        "input_shape_": _shape_json(estimator.input_shape_),
        "input_dtypes": estimator._input_dtypes_,
        "output_shape_": list(estimator.output_shape_),
        "batch_size_": estimator.batch_size_,
        "n_stochastic_sources_": estimator.n_stochastic_sources_,
        "stochastic_rounds_": {
            name: vars(rounds) for name, rounds in estimator.stochastic_rounds_.items()
        },
    }
    for name in ("n_features_in_", "input_fields_", "feature_names_in_"):
        if hasattr(estimator, name):
            fitted[name] = np.asarray(getattr(estimator, name)).tolist()
    dtype, checksums = estimator._model_fingerprint_
    fitted["model_fingerprint"] = {
        "dtype": str(dtype).removeprefix("torch."),
        "checksums": {name: list(sums) for name, sums in checksums.items()},
    }
    return fitted


def _shape_json(shape):
    if isinstance(shape, dict):
        return {"fields": {key: list(value) for key, value in shape.items()}}
    return list(shape)


# -- reading --------------------------------------------------------------------------------
def load(cls, path, model, device=None):
    """A fitted ``cls`` from ``path`` and ``model`` (see ``LIBTransformer.load``)."""
    path = as_path(path)
    with open(path, "rb") as file:
        try:
            arrays = read_npz(file)
            if "meta" not in arrays:
                raise ValueError("no 'meta' array")
            meta = _parse(str(arrays.pop("meta")[()]))
            estimator = cls(model, **_params(meta["params"]))
            # The parameters as fit would check them: a tampered value is refused
            # here, not by the first transform.
            estimator._validate_params()
            bases = _bases(meta["bases"], arrays)
            graph = _graph(meta.get("graph"), arrays)
            if arrays:
                raise ValueError(f"unexpected arrays {sorted(arrays)}")
            fitted = meta["fitted"]
            output_shape = tuple(_ints(fitted["output_shape_"], "output_shape_"))
            layers = [estimator.layer, *estimator.downstream_layers, OUTPUT_NODE]
            if list(bases) != layers:
                raise ValueError(
                    f"the bases are of {list(bases)}, but the parameters name {layers}"
                )
        except CONTENT_ERRORS + (TypeError, AttributeError) as exc:
            raise ValueError(f"{path!r} is not a saved {cls.__name__}: {exc}") from exc
    _set_fitted(estimator, fitted, bases, output_shape, graph, path)
    _set_device(estimator, device, path)
    output_config = meta.get("output_config")
    if output_config:  # set_output(transform="pandas") survives the round trip
        estimator.set_output(**output_config)
    _check_model(estimator, path)
    return estimator


def _set_device(estimator, device, path):
    """``device`` if given; else the saved one where this machine has it, else "auto".

    A fit saved on a GPU machine (``device="cuda:3"``, say) loads on a laptop.
    """
    if device is not None:
        estimator.set_params(device=device)
        resolve_device(device)  # a device this machine lacks is refused now, by name
        return
    try:
        resolve_device(estimator.device)
    except ValueError as exc:
        warnings.warn(
            f"{path!r} was saved with device={estimator.device!r}, which this machine "
            f"cannot use ({exc}); loaded with device='auto'. Pass load(..., device=...) "
            "to choose one.",
            UserWarning,
            stacklevel=3,
        )
        estimator.set_params(device="auto")


def _parse(text):
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"'meta' is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError("'meta' does not name the format " + repr(_FORMAT))
    if meta.get("version") != _VERSION:
        raise ValueError(f"format version {meta.get('version')!r}; this reads {_VERSION}")
    for key, kind in (("params", dict), ("fitted", dict), ("bases", list)):
        if not isinstance(meta.get(key), kind):
            raise ValueError(f"'meta' field {key!r} is missing or not a JSON {kind.__name__}")
    return meta


def _params(params):
    return {
        name: tuple(value["tuple"])
        if isinstance(value, dict) and set(value) == {"tuple"}
        else value
        for name, value in params.items()
    }


def _ints(values, what):
    if not isinstance(values, list) or not all(type(v) is int and v > 0 for v in values):
        raise ValueError(f"{what} must be a list of positive ints, not {values!r}")
    return values


def _bases(entries, arrays):
    """The saved :class:`NodeBasis` objects by name, every array checked against its shape."""
    bases = {}
    for i, entry in enumerate(entries):
        name, kind = entry.get("name"), entry.get("kind")
        if not isinstance(name, str) or name in bases or kind not in ("lib", "pca", "identity"):
            raise ValueError(f"basis {i} has no distinct name or known kind: {entry!r}")
        shape = tuple(_ints(entry.get("shape"), f"basis {name!r} shape"))
        found = {field: arrays.pop(f"basis{i}_{field}", None) for field in _BASIS_ARRAYS}
        if any(value is None for value in found.values()):
            raise ValueError(f"arrays of basis {name!r} are missing")
        d, (mean, matrix, pinv, lambdas, gram) = shape[-1], found.values()
        k = lambdas.shape[0] if lambdas.ndim == 1 else -1
        expected = {"mean": (d,), "matrix": (d, k), "pinv": (k, d), "lambdas": (k,)}
        for field, want in expected.items():
            if found[field].shape != want:
                raise ValueError(
                    f"basis {name!r}: {field} has shape {found[field].shape}, not {want}"
                )
        if gram.ndim != 1 or not all(np.isfinite(a).all() for a in found.values()):
            raise ValueError(f"basis {name!r} holds non-finite values or a malformed array")
        n_components = entry.get("n_components")
        if type(n_components) is not int or not 1 <= n_components <= k:
            raise ValueError(f"basis {name!r}: n_components {n_components!r} not in [1, {k}]")
        bases[name] = NodeBasis(name, shape, mean, matrix, pinv, lambdas, n_components, gram, kind)
    if len(bases) < 2 or list(bases)[-1] != "output":
        raise ValueError("the bases must end with the model output's")
    return bases


def _graph(entry, arrays):
    if entry is None:
        return None
    nodes, info = entry.get("nodes"), entry.get("info")
    if not isinstance(nodes, list) or not isinstance(info, dict):
        raise ValueError("'meta' graph must hold 'nodes' (a list) and 'info' (an object)")
    prefix = "graph_"
    mine = {
        key.removeprefix(prefix): arrays.pop(key) for key in list(arrays) if key.startswith(prefix)
    }
    _check_arrays(nodes, mine)
    lambdas = {node: mine[f"lambdas_{i}"] for i, node in enumerate(nodes)}
    edges = {s: mine[f"edges_{i}"] for i, s in enumerate(zip(nodes[:-1], nodes[1:]))}
    return InteractionGraph(nodes, lambdas, edges, info)


def _set_fitted(estimator, fitted, bases, output_shape, graph, path):
    try:
        estimator._set_bases(bases, output_shape)
        shape = fitted["input_shape_"]
        if isinstance(shape, dict):
            estimator.input_shape_ = {
                k: tuple(_ints(v, k)) if v else () for k, v in shape["fields"].items()
            }
        else:
            estimator.input_shape_ = tuple(shape)
        estimator._input_dtypes_ = fitted["input_dtypes"]
        (estimator.batch_size_,) = _ints([fitted["batch_size_"]], "batch_size_")
        estimator.n_stochastic_sources_ = dict(fitted["n_stochastic_sources_"])
        estimator.stochastic_rounds_ = {
            name: SourceRounds(**rounds) for name, rounds in fitted["stochastic_rounds_"].items()
        }
        if "n_features_in_" in fitted:
            (estimator.n_features_in_,) = _ints([fitted["n_features_in_"]], "n_features_in_")
        if "input_fields_" in fitted:
            estimator.input_fields_ = fitted["input_fields_"]
        if "feature_names_in_" in fitted:
            estimator.feature_names_in_ = np.asarray(fitted["feature_names_in_"], dtype=object)
        printed = fitted["model_fingerprint"]
        dtype = getattr(torch, printed["dtype"])
        checksums = {name: tuple(sums) for name, sums in printed["checksums"].items()}
        estimator._model_fingerprint_ = (dtype, checksums)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path!r} is not a saved {type(estimator).__name__}: {exc}") from exc
    if graph is not None:
        estimator.interaction_graph_ = graph


def _check_model(estimator, path):
    """Refuse a model without the node layers, or whose activations have other shapes."""
    names = list(estimator.bases_)[:-1]
    session = estimator._session(fitting=True)  # the weights may differ: that only warns later
    probe = _zeros_probe(estimator.input_shape_, estimator._input_dtypes_, session)
    try:
        shapes, output_shape = inspect_node_layers(session, probe, names)
    except ValueError as exc:
        raise ValueError(f"The model does not fit the bases saved in {path!r}: {exc}") from exc
    saved = {name: estimator.bases_[name].shape for name in names}
    for name in names:
        if tuple(shapes[name]) != tuple(saved[name]):
            raise ValueError(
                f"The model does not fit the bases saved in {path!r}: layer {name!r} has "
                f"activations of shape {tuple(shapes[name])}, the saved basis {tuple(saved[name])}"
            )
    if tuple(output_shape) != tuple(estimator.output_shape_):
        raise ValueError(
            f"The model does not fit the bases saved in {path!r}: its output has shape "
            f"{tuple(output_shape)}, the saved one {tuple(estimator.output_shape_)}"
        )


def _zeros_probe(shape, dtypes, session):
    """Two samples of zeros of the saved input shapes and kinds (ones for a mask)."""

    def zeros(field_shape, kind, fill=0):
        dtype = session.dtype if kind == "float" else getattr(torch, kind)
        return torch.full((2, *field_shape), fill, dtype=dtype, device=session.device)

    if isinstance(shape, dict):
        return {
            key: zeros(value, dtypes[key], 1 if key == "attention_mask" else 0)
            for key, value in shape.items()
        }
    return zeros(shape, dtypes)
