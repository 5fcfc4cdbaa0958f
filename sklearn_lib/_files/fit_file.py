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

A file proves what it holds: :func:`read` checks every array's shape
against ``meta`` before reading it, and then every invariant a fit leaves
(:func:`~sklearn_lib._files.basis_file.check_basis` for each basis, and
:func:`check_fit` for the parts together); :func:`write` runs the same
checks on what it is about to write, and refuses parameters that would not
come back as they are, so that every file saved loads.

The estimator turns itself into a :class:`SavedFit` and back; this module
knows no estimator.  :func:`check_model` runs the model given to ``load`` on
a probe of zeros of the saved input shapes and refuses one without the node
layers or with other activation shapes.
"""

import json
import math
import warnings
from dataclasses import dataclass
from numbers import Real

import numpy as np
import torch

from .._core.nodes import OUTPUT_NODE
from .._fitting.basis import n_kept
from .._fitting.stochastic import SourceRounds
from .._model.capture import inspect_node_layers
from .._model.inputs import is_dict
from .basis_file import bases_shapes, basis_arrays, basis_entry, positive_ints, read_bases
from .graph_file import (
    check_graph_keys,
    check_graph_meta,
    graph_arrays,
    graph_from_arrays,
    graph_shapes,
)
from .npz import (
    CONTENT_ERRORS,
    as_path,
    check_meta_size,
    json_default,
    open_for_reading,
    read_npz,
    write_atomically,
)

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
    fingerprint : dict or None
        Digests of the model the bases were fitted on
        (:func:`~sklearn_lib._model.fingerprint.fingerprint`); None in a file
        of an earlier version, whose checksums this version cannot compare.
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
    """Write ``saved`` to ``path`` atomically; ``owner`` names the estimator in errors.

    Raises TypeError for a parameter that would not load as it is, and
    ValueError for a fit that :func:`read` would refuse, before anything is
    written.
    """
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
    try:
        check_meta_size(text)
        _check_loads(text, arrays)
    except CONTENT_ERRORS + (TypeError, AttributeError) as exc:
        raise ValueError(
            f"{owner}.save cannot store this fit, which would not load: {exc}"
        ) from exc
    write_atomically(path, lambda file: np.savez_compressed(file, meta=np.array(text), **arrays))


def _check_loads(text, arrays):
    """Raise what :func:`read` would raise for a file of ``text`` and ``arrays``."""
    meta, shapes = _layout(text, set(arrays))
    read = {}
    for key, check in shapes.items():
        check(arrays[key].shape, arrays=read)
        read[key] = arrays[key]
    _contents(meta, read)


@dataclass
class _GraphParts:
    nodes: list
    lambdas: dict
    edges: dict


#: Tags of the parameter values JSON has no type for, ``{tag: value}``; a dict that
#: looks like one is saved inside ``{"dict": ...}``.
_TAGS = ("tuple", "dict", "torch.device", "torch.dtype")


def _params_json(params, owner):
    """The parameters as JSON values (:func:`encode`); TypeError for one that would not load
    as it is (numpy scalars load as the Python numbers they equal)."""
    out = {}
    for name, value in params.items():
        encoded = encode(value)
        try:
            back = decode(json.loads(json.dumps(encoded)))
        except (TypeError, ValueError, RuntimeError):
            back = _NOT_JSON
        if back is _NOT_JSON or not _same(back, value):
            loads_as = "" if back is _NOT_JSON else f" (it would load as {back!r})"
            raise TypeError(
                f"{owner}.save cannot store {name}={value!r}{loads_as}: only parameters that "
                "JSON holds (str, numbers, lists, tuples and dicts of them with str keys, "
                "None, torch devices and dtypes) can be saved; set it to such a value, or "
                "pickle the estimator instead"
            )
        out[name] = encoded
    return out


_NOT_JSON = object()


def encode(value):
    """``value`` as JSON holds it: tuples, devices and dtypes tagged (:data:`_TAGS`), numpy
    scalars as Python ones; what JSON cannot hold is left for ``json.dumps`` to refuse."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"tuple": [encode(item) for item in value]}
    if isinstance(value, list):
        return [encode(item) for item in value]
    if isinstance(value, dict):
        encoded = {key: encode(item) for key, item in value.items()}
        return {"dict": encoded} if len(value) == 1 and next(iter(value)) in _TAGS else encoded
    if isinstance(value, torch.device):
        return {"torch.device": str(value)}
    if isinstance(value, torch.dtype):
        return {"torch.dtype": str(value).removeprefix("torch.")}
    return value


def decode(value):
    """The value :func:`encode` gave ``value`` of; ValueError for a malformed tag."""
    if isinstance(value, list):
        return [decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and next(iter(value)) in _TAGS:
        ((tag, inner),) = value.items()
        kinds = {"tuple": list, "dict": dict, "torch.device": str, "torch.dtype": str}
        if not isinstance(inner, kinds[tag]):
            raise ValueError(f"saved parameter {value!r}: a {tag!r} of a {type(inner).__name__}")
        if tag == "tuple":
            return tuple(decode(item) for item in inner)
        if tag == "dict":
            return {key: decode(item) for key, item in inner.items()}
        return _torch_value(tag, inner)
    return {key: decode(item) for key, item in value.items()}


def _torch_value(tag, name):
    if tag == "torch.dtype":
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype) or str(dtype) != f"torch.{name}":
            raise ValueError(f"saved parameter dtype {name!r} is not the name of a torch dtype")
        return dtype
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"saved parameter device {name!r} is not a torch device: {exc}") from None


def _same(loaded, value):
    """Whether ``loaded`` is ``value``: equal and of its type (numpy scalars as the Python
    numbers they equal; NaN is NaN), through lists, tuples and dicts."""
    if isinstance(value, np.generic):
        value = value.item()
    if type(loaded) is not type(value):
        return False
    if isinstance(value, (list, tuple)):
        return len(loaded) == len(value) and all(map(_same, loaded, value))
    if isinstance(value, dict):
        return list(loaded) == list(value) and all(_same(loaded[k], value[k]) for k in value)
    if isinstance(value, float) and math.isnan(value):
        return math.isnan(loaded)
    return loaded == value


def _fitted_json(saved):
    fitted = {
        "input_shape_": _shape_json(saved.input_shape),
        "input_dtypes": saved.input_dtypes,
        "output_shape_": list(saved.output_shape),
        "batch_size_": saved.batch_size,
        "n_stochastic_sources_": saved.n_stochastic_sources,
        "stochastic_rounds_": {name: vars(r) for name, r in saved.rounds.items()},
        "model_fingerprint": {"digests": saved.fingerprint},
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
    """The :class:`SavedFit` in ``path``; ValueError naming the file and the problem.

    Every array's shape is checked against ``meta`` before its data is read
    (:func:`_layout`), and every invariant of a fit after (:func:`_contents`).
    """
    path = as_path(path)
    with open_for_reading(path) as file:
        try:
            meta, arrays = read_npz(file, _layout)
            return _contents(meta, arrays)
        except CONTENT_ERRORS + (TypeError, AttributeError) as exc:
            raise ValueError(f"{path!r} is not a saved {owner}: {exc}") from exc


def _layout(text, keys):
    """The parsed ``meta`` of ``text`` and ``{key: check}`` of the arrays it implies (see
    :func:`~sklearn_lib._files.npz.read_npz`); ValueError for other ``keys``."""
    meta = _parse(text)
    shapes = bases_shapes(meta["bases"], keys)
    entry = meta.get("graph")
    if entry is not None:
        nodes, _ = _graph_meta(entry)
        names = [basis["name"] for basis in meta["bases"]]
        if nodes != names:
            raise ValueError(f"'meta' graph nodes {nodes} are not the bases {names}")
        graph_keys = {k.removeprefix(_GRAPH_PREFIX) for k in keys if k.startswith(_GRAPH_PREFIX)}
        check_graph_keys(nodes, graph_keys)
        # The graph's Lambda are the kept ones of each basis.
        widths = [basis["n_components"] for basis in meta["bases"]]
        shapes.update(graph_shapes(nodes, _GRAPH_PREFIX, widths))
    unexpected = sorted(set(keys) - set(shapes))
    if unexpected:
        raise ValueError(f"unexpected arrays {unexpected}")
    return meta, shapes


def _contents(meta, arrays):
    """The :class:`SavedFit` of a file's parsed ``meta`` and ``arrays`` (used up), checked."""
    bases = read_bases(meta["bases"], arrays)
    graph = _graph(meta.get("graph"), arrays)
    if arrays:
        raise ValueError(f"unexpected arrays {sorted(arrays)}")
    saved = _saved(meta, bases, graph)
    check_fit(saved)
    return saved


def _saved(meta, bases, graph):
    fitted = meta["fitted"]
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
        fingerprint=_fingerprint(fitted["model_fingerprint"]),
        inputs=inputs,
        graph=graph,
        output_config=_output_config(meta.get("output_config")),
    )


def _fingerprint(printed):
    """The saved digests; None for an earlier version's checksums (sums of values in
    the compute dtype, which this version no longer takes)."""
    if "checksums" in printed and "digests" not in printed:
        return None
    digests = printed["digests"]
    if digests is None:  # an earlier version's file, saved again
        return None
    if not isinstance(digests, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in digests.items()
    ):
        raise ValueError("model_fingerprint must map names to digests (str)")
    return digests


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
    return {name: decode(value) for name, value in params.items()}


def _shape(shape):
    if isinstance(shape, dict):
        return {k: tuple(positive_ints(v, k)) if v else () for k, v in shape["fields"].items()}
    return tuple(positive_ints(shape, "input_shape_")) if shape else ()


#: The names of the torch dtypes of inputs a fit saves besides ``"float"``: bool and
#: integers (token ids, masks), as :func:`input_dtypes` writes them.
INPUT_DTYPES = tuple(
    name
    for name in ("bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64")
    if isinstance(getattr(torch, name, None), torch.dtype)
)


def _dtypes(kinds, shape):
    """The saved input kinds, each ``"float"`` or one of :data:`INPUT_DTYPES`, per field."""

    def kind(value):
        if value == "float" or value in INPUT_DTYPES:
            return value
        dtype = getattr(torch, value, None) if isinstance(value, str) else None
        if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
            raise ValueError(f"input dtype {value!r}: floating inputs are saved as 'float'")
        raise ValueError(
            f"input dtype {value!r} is neither 'float' nor one of the torch dtypes of "
            f"inputs a fit saves, {INPUT_DTYPES}"
        )

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
    nodes, info = _graph_meta(entry)
    lambdas, edges = graph_from_arrays(nodes, arrays, _GRAPH_PREFIX)
    return nodes, lambdas, edges, info


def _graph_meta(entry):
    if not isinstance(entry, dict):
        raise ValueError("'meta' graph must hold 'nodes' (a list) and 'info' (an object)")
    return check_graph_meta(entry.get("nodes"), entry.get("info"))


# -- the parts together ---------------------------------------------------------------------
def check_fit(saved):
    """Raise ValueError unless the parts of ``saved`` agree as a fit leaves them.

    The inputs' fitted attributes match their shape (``n_features_in_`` its
    width, ``input_fields_`` its fields); the output basis has the output's
    shape; every node layer has its ``n_stochastic_sources_``; the bases are
    the layers, kinds, kept counts and means that the parameters give (the
    parameters' own checks come later, from the estimator's); and a graph is
    of the bases, with their kept Lambda.
    """
    _check_inputs(saved.input_shape, saved.inputs)
    bases = saved.bases
    if tuple(bases[OUTPUT_NODE].shape) != tuple(saved.output_shape):
        raise ValueError(
            f"output_shape_ {tuple(saved.output_shape)} is not the shape "
            f"{tuple(bases[OUTPUT_NODE].shape)} of the output's basis"
        )
    names = [name for name in bases if name != OUTPUT_NODE]
    sources = saved.n_stochastic_sources
    if set(sources) != set(names) or not all(
        n is None or (type(n) is int and n > 0) for n in sources.values()
    ):
        raise ValueError(
            f"n_stochastic_sources_ {sources!r} must give each node layer of {names} "
            "None or a positive int"
        )
    if not set(saved.rounds) <= set(names):
        raise ValueError(f"stochastic_rounds_ of {sorted(saved.rounds)}, not node layers {names}")
    _check_parameters(bases, saved.params)
    if saved.graph is not None:
        _check_graph(saved.graph, bases)


def _check_inputs(shape, inputs):
    if isinstance(shape, dict):
        extra = sorted(set(inputs) & {"n_features_in_", "feature_names_in_"})
        if extra or inputs.get("input_fields_") != list(shape):
            raise ValueError(
                f"the inputs are the fields {list(shape)}, so input_fields_ must name them "
                f"(not {inputs.get('input_fields_')!r}) and {extra} cannot be set"
            )
        return
    n, names = inputs.get("n_features_in_"), inputs.get("feature_names_in_")
    if "input_fields_" in inputs or not shape or n != shape[0]:
        raise ValueError(
            f"the inputs are one array of per-sample shape {shape}, so n_features_in_ must "
            f"be its width (not {n!r}) and input_fields_ cannot be set"
        )
    if names is not None and len(names) != n:
        raise ValueError(f"feature_names_in_ has {len(names)} names, not n_features_in_={n}")


def _check_parameters(bases, params):
    """The bases against the parameters (those of valid types: others are refused later)."""
    layer, downstream = params.get("layer"), params.get("downstream_layers")
    if isinstance(layer, str) and isinstance(downstream, (list, tuple)):
        layers = [layer, *downstream, OUTPUT_NODE]
        if list(bases) != layers:
            raise ValueError(f"the bases are of {list(bases)}, but the parameters name {layers}")
    kinds = {"basis": ("lib", "pca"), "output_basis": ("identity", "pca")}
    for name, basis in bases.items():
        param = "output_basis" if name == OUTPUT_NODE else "basis"
        if params.get(param) in kinds[param] and basis.kind != params[param]:
            raise ValueError(
                f"basis {name!r} is of kind {basis.kind!r}, not {param}={params[param]!r}"
            )
        if name != OUTPUT_NODE and params.get("center") is False and np.any(basis.mean != 0):
            raise ValueError(f"basis {name!r} has a mean, but center=False fits none")
    _check_kept(bases, params.get("n_components"), params.get("truncation_threshold"))


def _check_kept(bases, n_components, threshold):
    """Each node layer keeps what ``n_components`` (the first layer's) and ``threshold`` keep."""
    if not (isinstance(threshold, Real) and not isinstance(threshold, bool) and 0 <= threshold < 1):
        return
    if isinstance(n_components, float):
        if not 0 < n_components < 1:
            return
    elif n_components is not None and (type(n_components) is not int or n_components < 1):
        return
    for i, (name, basis) in enumerate(bases.items()):
        if name == OUTPUT_NODE:
            continue
        asked = n_components if i == 0 else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fit warned already, where it keeps fewer
            kept = n_kept(basis.lambdas, asked, threshold, name)
        if basis.n_components != kept:
            raise ValueError(
                f"basis {name!r} keeps {basis.n_components} features, but n_components={asked!r} "
                f"and truncation_threshold={threshold!r} keep {kept} of its Lambda"
            )


def _check_graph(graph, bases):
    nodes, lambdas = graph[:2]
    if nodes != list(bases):
        raise ValueError(f"the graph's nodes {nodes} are not the bases {list(bases)}")
    for node in nodes:
        basis = bases[node]
        if not np.array_equal(lambdas[node], basis.lambdas[: basis.n_components]):
            raise ValueError(f"the graph's Lambda of {node!r} are not the kept Lambda of its basis")


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
