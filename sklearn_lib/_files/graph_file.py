"""Interaction graphs on disk: the one home of their arrays and their checks.

A graph is float arrays ``lambdas_<i>`` (node ``i``) and ``edges_<i>``
(section ``i``), with a JSON string ``meta`` of the node names and ``info``
in a file of its own (:func:`write_graph`, :func:`read_graph`), or the same
arrays under a prefix inside a saved fit (:func:`graph_arrays`,
:func:`graph_from_arrays`).  Nothing is ever unpickled, and a file's arrays
are those its nodes imply (:func:`graph_shapes`), checked before any is read.
"""

import json
from functools import partial

import numpy as np

from .npz import (
    CONTENT_ERRORS,
    as_path,
    check_float_dtype,
    check_meta_size,
    expect_shape,
    json_default,
    open_for_reading,
    read_npz,
    write_atomically,
)

_FORMAT_VERSION = 1  # files written before versioning have no "version" field: also 1
_META_FIELDS = ("nodes", "info", "version")


def write_graph(path, graph):
    """Write ``graph`` to ``path`` atomically (see :meth:`InteractionGraph.save`)."""
    meta = json.dumps(
        {"nodes": graph.nodes, "info": graph.info, "version": _FORMAT_VERSION},
        default=json_default,
    )
    try:
        # The same checks as reading: a graph that saves also loads.
        check_meta_size(meta)
        nodes, _ = _parse_meta(meta)
        arrays = graph_arrays(graph)
        check_graph_arrays(nodes, arrays)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"cannot save this InteractionGraph: {exc}") from exc
    arrays = {"meta": np.array(meta), **arrays}
    write_atomically(as_path(path), lambda file: np.savez_compressed(file, **arrays))


def read_graph(path):
    """``(nodes, lambdas, edges, info)`` of a file of :func:`write_graph`, every array checked.

    Raises ValueError naming the file and the problem (see :meth:`InteractionGraph.load`).
    """
    path = as_path(path)
    with open_for_reading(path) as file:
        try:
            (nodes, info), arrays = read_npz(file, _layout)
            return (nodes, *graph_from_arrays(nodes, arrays), info)
        except CONTENT_ERRORS as exc:
            raise ValueError(f"{path!r} is not a saved InteractionGraph: {exc}") from exc


def graph_arrays(graph, prefix=""):
    """The float arrays of ``graph``: ``lambdas_<i>`` per node, ``edges_<i>`` per section."""
    arrays = {
        f"{prefix}lambdas_{i}": np.asarray(graph.lambdas[n]) for i, n in enumerate(graph.nodes)
    }
    sections = zip(graph.nodes[:-1], graph.nodes[1:])
    arrays.update(
        {f"{prefix}edges_{i}": np.asarray(graph.edges[s]) for i, s in enumerate(sections)}
    )
    return arrays


def graph_from_arrays(nodes, arrays, prefix=""):
    """``(lambdas, edges)`` of ``nodes`` from :func:`graph_arrays`, checked; they are removed
    from ``arrays``."""
    mine = {
        key.removeprefix(prefix): arrays.pop(key) for key in list(arrays) if key.startswith(prefix)
    }
    check_graph_arrays(nodes, mine)
    lambdas = {node: mine[f"lambdas_{i}"] for i, node in enumerate(nodes)}
    edges = {s: mine[f"edges_{i}"] for i, s in enumerate(zip(nodes[:-1], nodes[1:]))}
    return lambdas, edges


def _layout(text, keys):
    """``meta``'s ``(nodes, info)`` and the shapes of the arrays they imply (see
    :func:`~sklearn_lib._files.npz.read_npz`); ValueError for other ``keys``."""
    nodes, info = _parse_meta(text)
    check_graph_keys(nodes, keys)
    return (nodes, info), graph_shapes(nodes)


def graph_shapes(nodes, prefix="", widths=None):
    """``{key: check}`` of the arrays of a graph of ``nodes`` in reading order, for
    :func:`~sklearn_lib._files.npz.read_npz`: each node's lambdas 1-D (of ``widths[i]``
    features where given), then each section's edges of the widths of the lambdas read."""
    shapes = {}
    for i, node in enumerate(nodes):
        width = None if widths is None else widths[i]
        shapes[f"{prefix}lambdas_{i}"] = partial(_lambdas_shape, i, node, width)
    for i, section in enumerate(zip(nodes[:-1], nodes[1:])):
        shapes[f"{prefix}edges_{i}"] = partial(_edges_shape, i, section, prefix)
    return shapes


def _lambdas_shape(i, node, width, shape, arrays):
    if len(shape) != 1:
        raise ValueError(f"array 'lambdas_{i}' of node {node!r} has shape {shape}, not 1-D")
    if width is not None:
        expect_shape(f"lambdas_{i}", shape, (width,))


def _edges_shape(i, section, prefix, shape, arrays):
    n_src, n_dst = (len(arrays[f"{prefix}lambdas_{j}"]) for j in (i, i + 1))
    if shape != (n_dst, n_src):
        src, dst = section
        raise ValueError(
            f"array 'edges_{i}' has shape {shape}, not {(n_dst, n_src)} (features of "
            f"{dst!r}, features of {src!r}, as their lambdas have them)"
        )


def _check_edges_shape(i, section, shape, expected):
    if shape != expected:
        src, dst = section
        raise ValueError(
            f"array 'edges_{i}' of {src!r} -> {dst!r} has shape {shape}, not "
            f"{expected} (features of {dst!r}, features of {src!r})"
        )


def _parse_meta(meta):
    """``(nodes, info)`` from the ``meta`` JSON string, checked."""
    try:
        fields = json.loads(meta)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"'meta' is not valid JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"'meta' is a JSON {type(fields).__name__}, not an object")
    missing = [name for name in _META_FIELDS[:2] if name not in fields]
    unexpected = sorted(set(fields) - set(_META_FIELDS))
    if missing or unexpected:
        raise ValueError(f"'meta' lacks fields {missing} or has unexpected ones {unexpected}")
    version = fields.get("version", _FORMAT_VERSION)
    if type(version) is not int or version != _FORMAT_VERSION:
        raise ValueError(f"'meta' has format version {version!r}; this reads {_FORMAT_VERSION}")
    return check_graph_meta(fields["nodes"], fields["info"])


def check_graph_meta(nodes, info):
    """``(nodes, info)`` if the nodes are distinct names and ``info`` an object; else ValueError."""
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
        raise ValueError(f"'meta' nodes must be a non-empty list of str, not {nodes!r}")
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"'meta' nodes must be distinct: {nodes}")
    if not isinstance(info, dict):
        raise ValueError(f"'meta' info must be a JSON object, not {info!r}")
    return nodes, info


def check_graph_keys(nodes, keys):
    """Raise ValueError unless ``keys`` are exactly those of the lambdas and edges of ``nodes``."""
    expected = {f"lambdas_{i}" for i in range(len(nodes))}
    expected |= {f"edges_{i}" for i in range(len(nodes) - 1)}
    missing, unexpected = sorted(expected - set(keys)), sorted(set(keys) - expected)
    if missing or unexpected:
        raise ValueError(
            f"the {len(nodes)} nodes {nodes} need arrays lambdas_0.. and edges_0..: "
            f"missing {missing}, unexpected {unexpected}"
        )


def check_graph_arrays(nodes, arrays):
    """Raise ValueError unless ``arrays`` are exactly the lambdas and edges of ``nodes``."""
    check_graph_keys(nodes, arrays)
    for key, values in arrays.items():
        check_float_dtype(key, values.dtype)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"array {key!r} has non-finite values")
        if np.any(values < 0):
            raise ValueError(f"array {key!r} has negative values")
    n_features = []
    for i, node in enumerate(nodes):
        shape = arrays[f"lambdas_{i}"].shape
        if len(shape) != 1:
            raise ValueError(f"array 'lambdas_{i}' of node {node!r} has shape {shape}, not 1-D")
        n_features.append(shape[0])
    for i, section in enumerate(zip(nodes[:-1], nodes[1:])):
        expected = (n_features[i + 1], n_features[i])
        _check_edges_shape(i, section, arrays[f"edges_{i}"].shape, expected)
