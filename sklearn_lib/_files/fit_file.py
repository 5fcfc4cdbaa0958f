"""Saved fits: a fitted ``LIBTransformer``'s state in a file without its model, never unpickled.

A fit's result is its bases, a few shapes and its parameters: kilobytes to
megabytes, where a pickled estimator carries the whole model (17 MB for a
4.2M-parameter model whose bases take 0.1 MB) and runs arbitrary code when
loaded.  So :func:`write` stores a :class:`SavedFit` as a compressed
``.npz`` of float arrays (every basis', :mod:`~sklearn_lib._files.basis_file`,
and the interaction graph of ``compute_graph=True``,
:mod:`~sklearn_lib._files.graph_file`) and one JSON string ``meta``
(parameters, shapes and fitted attributes), with the package's own atomic
write and checked reader (:mod:`~sklearn_lib._files.npz`): no new
dependency, and nothing is ever unpickled.

The estimator turns itself into a :class:`SavedFit` and back; this module
knows no estimator.  :func:`check_model` runs the model given to ``load`` on
a probe of zeros of the saved input shapes and refuses one without the node
layers or with other activation shapes.
"""

import json
from dataclasses import dataclass

import numpy as np
import torch

from .._core.nodes import OUTPUT_NODE
from .._fitting.stochastic import SourceRounds
from .._model.capture import inspect_node_layers
from .._model.inputs import is_dict
from .basis_file import basis_arrays, basis_entry, positive_ints, read_bases
from .graph_file import check_graph_meta, graph_arrays, graph_from_arrays
from .npz import CONTENT_ERRORS, as_path, json_default, read_npz, write_atomically

_FORMAT = "sklearn-lib LIBTransformer"
_VERSION = 1
_GRAPH_PREFIX = "graph_"
#: Fitted attributes of the inputs, stored where the fit set them.
INPUT_ATTRIBUTES = ("n_features_in_", "input_fields_", "feature_names_in_")


@dataclass
class SavedFit:
    """A fitted ``LIBTransformer``'s state, as a file holds it (the model aside).

    Attributes
    ----------
    params : dict
        The constructor's parameters but the model.
    bases : dict of str to NodeBasis
        Forward order, the model output's last.
    output_shape : tuple
    input_shape : tuple or dict of str to tuple
    input_dtypes : str or dict of str to str
        Per input field, ``"float"`` or an integer dtype's name (:func:`input_dtypes`).
    batch_size : int
    n_stochastic_sources : dict
    rounds : dict of str to SourceRounds
    fingerprint : (torch.dtype, dict)
        Checksums of the model the bases were fitted on.
    inputs : dict
        Those of :data:`INPUT_ATTRIBUTES` the fit set.
    graph : tuple or None
        ``(nodes, lambdas, edges, info)`` of ``compute_graph=True``.
    output_config : dict or None
        ``set_output``'s configuration.
    """

    params: dict
    bases: dict
    output_shape: tuple
    input_shape: object
    input_dtypes: object
    batch_size: int
    n_stochastic_sources: dict
    rounds: dict
    fingerprint: tuple
    inputs: dict
    graph: tuple | None = None
    output_config: dict | None = None


def input_dtypes(x):
    """What a probe of zeros must hold, per field: ``"float"`` or an integer dtype's name."""
    if is_dict(x):
        return {key: _kind(value) for key, value in x.items()}
    return _kind(x)


def _kind(tensor):
    return "float" if tensor.is_floating_point() else str(tensor.dtype).removeprefix("torch.")


# -- writing --------------------------------------------------------------------------------
def write(path, saved, owner):
    """Write ``saved`` to ``path`` atomically; ``owner`` names the estimator in errors."""
    path = as_path(path)
    meta = {
        "format": _FORMAT,
        "version": _VERSION,
        "params": _params_json(saved.params, owner),
        "fitted": _fitted_json(saved),
        "bases": [basis_entry(b) for b in saved.bases.values()],
    }
    arrays = {}
    for i, basis in enumerate(saved.bases.values()):
        arrays.update(basis_arrays(i, basis))
    if saved.graph is not None:
        nodes, lambdas, edges, info = saved.graph
        meta["graph"] = {"nodes": nodes, "info": info}
        graph = _GraphParts(nodes, lambdas, edges)
        arrays.update(graph_arrays(graph, _GRAPH_PREFIX))
    if saved.output_config is not None:
        meta["output_config"] = saved.output_config
    text = json.dumps(meta, default=json_default)
    write_atomically(path, lambda file: np.savez_compressed(file, meta=np.array(text), **arrays))


@dataclass
class _GraphParts:
    nodes: list
    lambdas: dict
    edges: dict


def _params_json(params, owner):
    """The parameters as JSON; TypeError for one that JSON cannot hold."""
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
                f"{owner}.save cannot store {name}={value!r}: only parameters that JSON "
                "holds (str, numbers, lists, dicts, None) can be saved; set it to such a "
                "value, or pickle the estimator instead"
            ) from None
        out[name] = value
    return out


def _fitted_json(saved):
    dtype, checksums = saved.fingerprint
    fitted = {
        "input_shape_": _shape_json(saved.input_shape),
        "input_dtypes": saved.input_dtypes,
        "output_shape_": list(saved.output_shape),
        "batch_size_": saved.batch_size,
        "n_stochastic_sources_": saved.n_stochastic_sources,
        "stochastic_rounds_": {name: vars(r) for name, r in saved.rounds.items()},
        "model_fingerprint": {
            "dtype": str(dtype).removeprefix("torch."),
            "checksums": {name: list(sums) for name, sums in checksums.items()},
        },
    }
    for name, value in saved.inputs.items():
        fitted[name] = np.asarray(value).tolist()
    return fitted


def _shape_json(shape):
    if isinstance(shape, dict):
        return {"fields": {key: list(value) for key, value in shape.items()}}
    return list(shape)


# -- reading --------------------------------------------------------------------------------
def read(path, owner):
    """The :class:`SavedFit` in ``path``; ValueError naming the file and the problem."""
    path = as_path(path)
    with open(path, "rb") as file:
        try:
            arrays = read_npz(file)
            if "meta" not in arrays:
                raise ValueError("no 'meta' array")
            meta = _parse(str(arrays.pop("meta")[()]))
            bases = read_bases(meta["bases"], arrays)
            graph = _graph(meta.get("graph"), arrays)
            if arrays:
                raise ValueError(f"unexpected arrays {sorted(arrays)}")
            return _saved(meta, bases, graph)
        except CONTENT_ERRORS + (TypeError, AttributeError) as exc:
            raise ValueError(f"{path!r} is not a saved {owner}: {exc}") from exc


def _saved(meta, bases, graph):
    fitted = meta["fitted"]
    printed = fitted["model_fingerprint"]
    checksums = {name: tuple(sums) for name, sums in printed["checksums"].items()}
    (batch_size,) = positive_ints([fitted["batch_size_"]], "batch_size_")
    inputs = {name: fitted[name] for name in INPUT_ATTRIBUTES if name in fitted}
    if "n_features_in_" in inputs:
        positive_ints([inputs["n_features_in_"]], "n_features_in_")
    for name in ("input_fields_", "feature_names_in_"):
        names = inputs.get(name, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{name} must be a list of str, not {names!r}")
    input_shape = _shape(fitted["input_shape_"])
    return SavedFit(
        params=_params(meta["params"]),
        bases=bases,
        output_shape=tuple(positive_ints(fitted["output_shape_"], "output_shape_")),
        input_shape=input_shape,
        input_dtypes=_dtypes(fitted["input_dtypes"], input_shape),
        batch_size=batch_size,
        n_stochastic_sources=dict(fitted["n_stochastic_sources_"]),
        rounds={name: SourceRounds(**r) for name, r in fitted["stochastic_rounds_"].items()},
        fingerprint=(getattr(torch, printed["dtype"]), checksums),
        inputs=inputs,
        graph=graph,
        output_config=_output_config(meta.get("output_config")),
    )


def _parse(text):
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"'meta' is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError("'meta' does not name the format " + repr(_FORMAT))
    if type(meta.get("version")) is not int or meta["version"] != _VERSION:
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


def _shape(shape):
    if isinstance(shape, dict):
        return {k: tuple(positive_ints(v, k)) if v else () for k, v in shape["fields"].items()}
    return tuple(positive_ints(shape, "input_shape_")) if shape else ()


def _dtypes(kinds, shape):
    """The saved input kinds, each ``"float"`` or an integer dtype of torch, per field."""

    def kind(value):
        if value != "float" and not isinstance(getattr(torch, str(value), None), torch.dtype):
            raise ValueError(f"input dtype {value!r} is neither 'float' nor a torch dtype")
        if value != "float" and getattr(torch, value).is_floating_point:
            raise ValueError(f"input dtype {value!r}: floating inputs are saved as 'float'")
        return value

    if isinstance(shape, dict):
        if not isinstance(kinds, dict) or set(kinds) != set(shape):
            raise ValueError(f"input dtypes {kinds!r} do not name the fields {sorted(shape)}")
        return {field: kind(value) for field, value in kinds.items()}
    return kind(kinds)


#: ``set_output``'s transform values a file may hold.
_OUTPUTS = ("default", "pandas", "polars")


def _output_config(config):
    if config is None:
        return None
    if not isinstance(config, dict) or set(config) != {"transform"}:
        raise ValueError(f"'meta' output_config must be {{'transform': ...}}, not {config!r}")
    if config["transform"] not in _OUTPUTS:
        raise ValueError(f"'meta' output_config transform must be one of {_OUTPUTS}: {config!r}")
    return config


def _graph(entry, arrays):
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise ValueError("'meta' graph must hold 'nodes' (a list) and 'info' (an object)")
    nodes, info = check_graph_meta(entry.get("nodes"), entry.get("info"))
    lambdas, edges = graph_from_arrays(nodes, arrays, _GRAPH_PREFIX)
    return nodes, lambdas, edges, info


# -- the model ------------------------------------------------------------------------------
def check_model(session, saved, path):
    """Refuse a model without the node layers, or whose activations have other shapes.

    ``session`` runs the model given to ``load`` (its weights may differ from
    the saved fingerprint's: that only warns later).
    """
    names = [name for name in saved.bases if name != OUTPUT_NODE]
    probe = _zeros_probe(saved.input_shape, saved.input_dtypes, session)
    try:
        shapes, output_shape = inspect_node_layers(session, probe, names)
    except ValueError as exc:
        raise ValueError(f"The model does not fit the bases saved in {path!r}: {exc}") from exc
    for name in names:
        saved_shape = tuple(saved.bases[name].shape)
        if tuple(shapes[name]) != saved_shape:
            raise ValueError(
                f"The model does not fit the bases saved in {path!r}: layer {name!r} has "
                f"activations of shape {tuple(shapes[name])}, the saved basis {saved_shape}"
            )
    if tuple(output_shape) != tuple(saved.output_shape):
        raise ValueError(
            f"The model does not fit the bases saved in {path!r}: its output has shape "
            f"{tuple(output_shape)}, the saved one {tuple(saved.output_shape)}"
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
