"""Interaction graphs on disk (``_files.graph_file``): round trips and refused files."""

import io
import json
import os
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest

from sklearn_lib._files import npz
from sklearn_lib._files.graph_file import (
    check_graph_arrays,
    graph_arrays,
    graph_from_arrays,
    graph_shapes,
    read_graph,
    write_graph,
)

NODES = ["fc1", "fc2", "output"]


def _graph(rng, nodes=NODES, widths=(4, 3, 2), info=None):
    lambdas = {node: rng.uniform(size=w) for node, w in zip(nodes, widths)}
    edges = {
        (src, dst): rng.uniform(size=(w_dst, w_src))
        for src, dst, w_src, w_dst in zip(nodes[:-1], nodes[1:], widths[:-1], widths[1:])
    }
    return SimpleNamespace(nodes=list(nodes), lambdas=lambdas, edges=edges, info=info or {})


def _assert_same(nodes, lambdas, edges, graph):
    assert nodes == graph.nodes
    assert list(lambdas) == graph.nodes and list(edges) == list(graph.edges)
    for node in graph.nodes:
        np.testing.assert_array_equal(lambdas[node], graph.lambdas[node])
    for key in graph.edges:
        np.testing.assert_array_equal(edges[key], graph.edges[key])


def _arrays(rng):
    return {
        "lambdas_0": rng.uniform(size=4),
        "lambdas_1": rng.uniform(size=3),
        "lambdas_2": rng.uniform(size=2),
        "edges_0": rng.uniform(size=(3, 4)),
        "edges_1": rng.uniform(size=(2, 3)),
    }


def _save(path, meta, **arrays):
    """A hand-made graph file."""
    if meta is not None:
        arrays["meta"] = np.array(meta if isinstance(meta, str) else json.dumps(meta))
    np.savez(path, **arrays)
    os.replace(f"{path}.npz", path)


# -- round trips ----------------------------------------------------------------------------
def test_a_graph_round_trips_through_a_file(tmp_path, rng):
    info = {"n_samples": np.int64(60), "alphas": np.array([0.5, 1.0]), "name": "x"}
    graph = _graph(rng, info=info)
    path = tmp_path / "g.graph"
    write_graph(path, graph)
    assert os.listdir(tmp_path) == ["g.graph"]  # the path as given
    nodes, lambdas, edges, read_info = read_graph(str(path))
    _assert_same(nodes, lambdas, edges, graph)
    assert read_info == {"n_samples": 60, "alphas": [0.5, 1.0], "name": "x"}


def test_the_file_is_an_npz_of_float_arrays_and_meta(tmp_path, rng):
    path = tmp_path / "g.npz"
    write_graph(path, _graph(rng))
    with zipfile.ZipFile(path) as archive:
        names = sorted(archive.namelist())
    assert names == sorted(f"{key}.npy" for key in ["meta", *_arrays(rng)])
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
    assert meta == {"nodes": NODES, "info": {}, "version": 1}


def test_many_nodes_are_read_in_order(tmp_path, rng):
    nodes = [f"n{i}" for i in range(12)]
    graph = _graph(rng, nodes, widths=range(2, 14))
    write_graph(tmp_path / "g", graph)
    _assert_same(*read_graph(tmp_path / "g")[:3], graph)


def test_one_node_has_no_edges(tmp_path, rng):
    graph = _graph(rng, ["output"], widths=(3,))
    write_graph(tmp_path / "g", graph)
    nodes, lambdas, edges, _ = read_graph(tmp_path / "g")
    assert nodes == ["output"] and edges == {}
    np.testing.assert_array_equal(lambdas["output"], graph.lambdas["output"])


def test_arrays_under_a_prefix(rng):
    graph = _graph(rng)
    arrays = graph_arrays(graph, "graph_")
    assert sorted(arrays) == sorted(f"graph_{key}" for key in _arrays(rng))
    np.testing.assert_array_equal(arrays["graph_edges_1"], graph.edges[("fc2", "output")])
    arrays["basis0_mean"] = np.zeros(2)
    lambdas, edges = graph_from_arrays(NODES, arrays, "graph_")
    _assert_same(NODES, lambdas, edges, graph)
    assert list(arrays) == ["basis0_mean"]  # only the graph's arrays were taken


def test_a_graph_of_zeros_is_a_graph(rng):
    arrays = {key: np.zeros_like(value) for key, value in _arrays(rng).items()}
    check_graph_arrays(NODES, arrays)


# -- what a graph's arrays must be ----------------------------------------------------------
def _replace(key, value):
    def change(arrays):
        arrays[key] = value

    return change


def _drop(key):
    return lambda arrays: arrays.pop(key)


BAD_ARRAYS = {
    "missing": (_drop("edges_1"), r"missing \['edges_1'\], unexpected \[\]"),
    "unexpected": (_replace("edges_2", np.ones((1, 1))), r"unexpected \['edges_2'\]"),
    "integers": (_replace("lambdas_0", np.arange(4)), "'lambdas_0' has dtype int64, not floating"),
    "NaN": (_replace("edges_0", np.full((3, 4), np.nan)), "'edges_0' has non-finite values"),
    "inf": (_replace("lambdas_2", np.array([1.0, np.inf])), "non-finite values"),
    "negative": (_replace("lambdas_1", np.array([1.0, -1e-300, 0.0])), "negative values"),
    "2-D lambdas": (_replace("lambdas_1", np.ones((3, 1))), r"'lambdas_1' of node 'fc2' .* 1-D"),
    "transposed edges": (
        _replace("edges_0", np.ones((4, 3))),
        r"'edges_0' of 'fc1' -> 'fc2' has shape \(4, 3\), not \(3, 4\)",
    ),
}


@pytest.mark.parametrize("change, match", BAD_ARRAYS.values(), ids=BAD_ARRAYS.keys())
def test_bad_arrays_are_refused(rng, change, match):
    arrays = _arrays(rng)
    change(arrays)
    with pytest.raises(ValueError, match=match):
        check_graph_arrays(NODES, arrays)
    prefixed = {f"p_{key}": value for key, value in arrays.items()}
    with pytest.raises(ValueError, match=match):
        graph_from_arrays(NODES, prefixed, "p_")


# -- writing --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, match",
    [
        (lambda g: g.lambdas["fc2"].__setitem__(0, -1.0), "negative values"),
        (lambda g: g.edges.pop(("fc2", "output")), r"\('fc2', 'output'\)"),
        (lambda g: setattr(g, "nodes", ["fc1", "fc1", "output"]), "nodes must be distinct"),
        (lambda g: setattr(g, "nodes", []), "non-empty list of str"),
    ],
)
def test_a_graph_that_would_not_load_is_not_saved(tmp_path, rng, change, match):
    graph = _graph(rng)
    change(graph)
    with pytest.raises(ValueError, match=f"cannot save this InteractionGraph: .*{match}"):
        write_graph(tmp_path / "g", graph)
    assert os.listdir(tmp_path) == []


def test_info_that_json_cannot_hold_is_not_saved(tmp_path, rng):
    with pytest.raises(TypeError, match="cannot be saved as JSON"):
        write_graph(tmp_path / "g", _graph(rng, info={"f": print}))
    assert os.listdir(tmp_path) == []


def test_a_failed_save_leaves_the_old_file(tmp_path, rng):
    path = tmp_path / "g"
    old = _graph(rng)
    write_graph(path, old)
    bad = _graph(rng)
    bad.lambdas["fc1"][0] = np.nan
    with pytest.raises(ValueError):
        write_graph(path, bad)
    _assert_same(*read_graph(path)[:3], old)


# -- reading --------------------------------------------------------------------------------
GOOD_META = {"nodes": NODES, "info": {}, "version": 1}

BAD_FILES = {
    "no meta": (None, {}, "no 'meta' array"),
    "meta not JSON": ("{nodes", {}, "'meta' is not valid JSON"),
    "meta a list": ([1, 2], {}, "'meta' is a JSON list, not an object"),
    "meta without info": ({"nodes": NODES}, {}, r"lacks fields \['info'\]"),
    "meta with more": ({**GOOD_META, "x": 1}, {}, r"unexpected ones \['x'\]"),
    "version 2": ({**GOOD_META, "version": 2}, {}, "format version 2; this reads 1"),
    "version a bool": ({**GOOD_META, "version": True}, {}, "format version True"),
    "no nodes": ({**GOOD_META, "nodes": []}, {}, "nodes must be a non-empty list of str"),
    "nodes not str": ({**GOOD_META, "nodes": ["a", 1, "c"]}, {}, "non-empty list of str"),
    "nodes repeat": ({**GOOD_META, "nodes": ["a", "a", "c"]}, {}, "nodes must be distinct"),
    "info a list": ({**GOOD_META, "info": []}, {}, "info must be a JSON object"),
    "an array missing": (GOOD_META, {"edges_1": None}, r"missing \['edges_1'\]"),
    "an integer array": (GOOD_META, {"edges_1": np.ones((2, 3), int)}, "not floating point"),
    "a pickle": (GOOD_META, {"edges_1": np.array([{}], dtype=object)}, "dtype object"),
    "an extra array": (GOOD_META, {"extra": np.zeros(2)}, r"unexpected \['extra'\]"),
    "other edges": (GOOD_META, {"edges_1": np.ones((3, 2))}, r"has shape \(3, 2\), not \(2, 3\)"),
}


@pytest.mark.parametrize("meta, change, match", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_files_are_refused_naming_the_file(tmp_path, rng, meta, change, match):
    arrays = _arrays(rng)
    for key, value in change.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    path = str(tmp_path / "g")
    _save(path, meta, **arrays)
    with pytest.raises(ValueError, match=f"{path!r} is not a saved InteractionGraph: .*{match}"):
        read_graph(path)


def test_files_before_versioning_are_version_one(tmp_path, rng):
    arrays = _arrays(rng)
    _save(str(tmp_path / "g"), {"nodes": NODES, "info": {"a": 1}}, **arrays)
    nodes, lambdas, _, info = read_graph(tmp_path / "g")
    assert nodes == NODES and info == {"a": 1}
    np.testing.assert_array_equal(lambdas["fc2"], arrays["lambdas_1"])


def test_edges_claiming_a_huge_array_are_refused_from_the_header(tmp_path, rng):
    buffer = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**9, 10**9)}
    np.lib.format.write_array_header_1_0(buffer, header)
    path = tmp_path / "g"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("meta.npy", _npy(np.array(json.dumps(GOOD_META))))
        for key, value in _arrays(rng).items():
            if key != "edges_0":
                archive.writestr(f"{key}.npy", _npy(value))
        archive.writestr("edges_0.npy", buffer.getvalue())  # a header, no data
    with pytest.raises(ValueError, match=r"'edges_0' has shape \(1000000000, 1000000000\)"):
        read_graph(path)


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_not_an_archive_is_refused(tmp_path):
    path = tmp_path / "g"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is not a saved InteractionGraph: File is not a zip"):
        read_graph(path)


def test_a_missing_file_is_not_a_value_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_graph(tmp_path / "missing")
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        read_graph(None)


# -- arrays checked before they are read ----------------------------------------------------
def test_the_shapes_of_a_graph_are_read_lambdas_first():
    shapes = graph_shapes(NODES, "p_", widths=[4, 3, 2])
    assert list(shapes) == ["p_lambdas_0", "p_lambdas_1", "p_lambdas_2", "p_edges_0", "p_edges_1"]
    shapes["p_lambdas_0"]((4,), arrays={})
    with pytest.raises(ValueError, match=r"'lambdas_1' has shape \(5,\), not \(3,\)"):
        shapes["p_lambdas_1"]((5,), arrays={})
    with pytest.raises(
        ValueError, match=r"'lambdas_2' of node 'output' has shape \(2, 1\), not 1-D"
    ):
        shapes["p_lambdas_2"]((2, 1), arrays={})
    arrays = {"p_lambdas_0": np.ones(4), "p_lambdas_1": np.ones(3)}
    shapes["p_edges_0"]((3, 4), arrays=arrays)
    with pytest.raises(ValueError, match=r"'edges_0' has shape \(4, 3\), not \(3, 4\)"):
        shapes["p_edges_0"]((4, 3), arrays=arrays)


@pytest.mark.parametrize(
    "drop, extra, match",
    [
        (["edges_1"], [], r"missing \['edges_1'\], unexpected \[\]"),
        ([], ["lambdas_3"], r"missing \[\], unexpected \['lambdas_3'\]"),
    ],
)
def test_members_are_checked_before_any_is_read(tmp_path, drop, extra, match):
    path = tmp_path / "g"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("meta.npy", _npy(np.array(json.dumps(GOOD_META))))
        for key in [*(k for k in _arrays(np.random.default_rng(0)) if k not in drop), *extra]:
            archive.writestr(f"{key}.npy", b"\x93NUMPY garbage: never read")
    with pytest.raises(ValueError, match=match):
        read_graph(path)


def test_a_graph_whose_meta_a_file_cannot_hold_is_not_saved(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(npz, "MAX_META_CHARS", 100)
    write_graph(tmp_path / "g", _graph(rng))
    with pytest.raises(ValueError, match="cannot save .*'meta' would hold 1.* more than the 100"):
        write_graph(tmp_path / "h", _graph(rng, info={"note": "x" * 100}))
    assert os.listdir(tmp_path) == ["g"]
