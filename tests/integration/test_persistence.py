"""InteractionGraph.save/load: round trips, atomic writes, path rules, tampered files."""

import dataclasses
import io
import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_models import tanh_mlp

from sklearn_lib import InteractionGraph, LIBTransformer


@pytest.fixture(scope="module")
def graph():
    """A graph from a real fit: nodes fc2 -> fc3 -> output of a small tanh MLP."""
    torch.manual_seed(0)
    X = np.random.default_rng(0).normal(size=(50, 4))
    lib = LIBTransformer(tanh_mlp(), "fc2", downstream_layers=["fc3"]).fit(X)
    return lib.interaction_graph(X)


def _assert_same_graph(loaded, graph):
    assert loaded.nodes == graph.nodes
    assert loaded.info == graph.info
    assert loaded.lambdas.keys() == graph.lambdas.keys()
    assert loaded.edges.keys() == set(graph.sections)
    for node in graph.nodes:
        assert loaded.lambdas[node].dtype == graph.lambdas[node].dtype
        np.testing.assert_array_equal(loaded.lambdas[node], graph.lambdas[node])
    for section in graph.sections:
        assert loaded.edges[section].dtype == graph.edges[section].dtype
        np.testing.assert_array_equal(loaded.edges[section], graph.edges[section])


# -- round trips and path rules --------------------------------------------------------
@pytest.mark.parametrize("as_path", [str, Path], ids=["str", "Path"])
@pytest.mark.parametrize("name", ["graph", "graph.npz"])
def test_round_trip_at_exactly_the_given_path(graph, tmp_path, name, as_path):
    """``save(p)`` writes ``p`` itself (no ``.npz`` appended) and ``load(p)`` reads it."""
    path = as_path(tmp_path / name)
    graph.save(path)
    assert os.listdir(tmp_path) == [name]
    loaded = InteractionGraph.load(path)
    _assert_same_graph(loaded, graph)
    assert loaded.summary() == graph.summary()


def test_round_trip_keeps_dtype_and_memory_order(tmp_path):
    """float32 and Fortran-ordered arrays (``np.save`` keeps the order) come back equal."""
    edges = np.arange(6, dtype=np.float32).reshape(3, 2)
    graph = InteractionGraph(
        ["a", "b", "output"],
        {"a": np.array([2.0, 1.0]), "b": np.array([3.0, 2.0, 1.0]), "output": np.ones(1)},
        {("a", "b"): np.asfortranarray(edges), ("b", "output"): np.array([[0.0, 0.5, 1.0]])},
        {"note": "hand made"},
    )
    graph.save(tmp_path / "g.npz")
    _assert_same_graph(InteractionGraph.load(tmp_path / "g.npz"), graph)


def test_save_replaces_an_existing_file(graph, tmp_path):
    path = tmp_path / "graph.npz"
    graph.save(path)
    other = dataclasses.replace(graph, info={**graph.info, "run": 2})
    other.save(path)
    assert InteractionGraph.load(path).info["run"] == 2
    assert os.listdir(tmp_path) == ["graph.npz"]


def test_load_never_guesses_a_suffix(graph, tmp_path):
    graph.save(tmp_path / "graph.npz")
    with pytest.raises(FileNotFoundError):
        InteractionGraph.load(tmp_path / "graph")
    with pytest.raises(FileNotFoundError):
        InteractionGraph.load(str(tmp_path / "missing.npz"))


def test_paths_must_be_str_or_pathlike(graph, tmp_path):
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, not bytes"):
        graph.save(os.fsencode(tmp_path / "graph.npz"))
    with pytest.raises(TypeError, match="not BytesIO"):
        graph.save(io.BytesIO())
    with pytest.raises(TypeError, match="not int"):
        InteractionGraph.load(3)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_saved_file_has_the_permissions_of_a_new_file(graph, tmp_path):
    """The temporary file is not created 0o600 (as ``mkstemp`` would): the umask applies."""
    graph.save(tmp_path / "graph.npz")
    (tmp_path / "plain").write_bytes(b"")
    mode = os.stat(tmp_path / "graph.npz").st_mode & 0o777
    assert mode == os.stat(tmp_path / "plain").st_mode & 0o777


@pytest.mark.skipif(os.name != "posix", reason="POSIX links, modes and FIFOs")
def test_save_respects_what_is_at_the_path(graph, tmp_path):
    # A link: its target is replaced, the link stays.
    target, link = tmp_path / "target.npz", tmp_path / "latest.npz"
    graph.save(target)
    os.chmod(target, 0o600)
    link.symlink_to(target)
    graph.save(link)
    assert link.is_symlink() and InteractionGraph.load(link).nodes == graph.nodes
    assert target.stat().st_mode & 0o777 == 0o600  # an existing file keeps its mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.npz", "target.npz"]
    # Not a regular file (a FIFO, like /dev/null a special file): refused, left alone.
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        graph.save(fifo)
    assert fifo.exists() and not fifo.is_file()
    with pytest.raises(IsADirectoryError):
        graph.save(tmp_path)
    # A path that ends with a separator names a folder, even one that does not exist.
    with pytest.raises(IsADirectoryError, match="ends with a separator"):
        graph.save(str(tmp_path / "out") + os.sep)
    assert not (tmp_path / "out").exists()
    # A missing folder is named as the user wrote it.
    missing = tmp_path / "no" / "graph.npz"
    with pytest.raises(FileNotFoundError, match=re.escape(repr(str(missing)))):
        graph.save(missing)
    # A long non-ASCII name (the temporary file's name does not grow with it).
    long = tmp_path / ("図" * 80 + ".npz")
    graph.save(long)
    assert InteractionGraph.load(long).nodes == graph.nodes


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anyway")
def test_a_read_only_file_is_not_replaced(graph, tmp_path):
    path = tmp_path / "graph.npz"
    graph.save(path)
    os.chmod(path, 0o444)
    with pytest.raises(PermissionError):
        graph.save(path)


def test_a_small_file_cannot_claim_a_huge_array(graph, tmp_path):
    path = tmp_path / "graph.npz"
    graph.save(path)
    # Rewrite edges_0's header to claim 20000 x 20000 (3.2 GB) over no data.
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (20000, 20000)}
    )
    members["edges_0.npy"] = header.getvalue()  # magic and header, no data
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(ValueError, match=r"'edges_0' has shape \(20000, 20000\), not"):
        InteractionGraph.load(path)


def test_file_written_before_versioning_loads(graph, tmp_path):
    """Files of earlier releases have no ``version`` in ``meta``: still version 1."""
    path = tmp_path / "old.npz"
    arrays = {f"lambdas_{i}": graph.lambdas[n] for i, n in enumerate(graph.nodes)}
    arrays.update({f"edges_{i}": graph.edges[s] for i, s in enumerate(graph.sections)})
    meta = json.dumps({"nodes": graph.nodes, "info": graph.info})
    np.savez_compressed(path, meta=np.array(meta), **arrays)
    _assert_same_graph(InteractionGraph.load(path), graph)


# -- info with numpy scalars -----------------------------------------------------------
def _assert_plain(value):
    """No numpy type anywhere in a (nested) JSON value."""
    assert type(value) in (dict, list, str, int, float, bool, type(None)), type(value)
    if isinstance(value, dict):
        for item in value.values():
            _assert_plain(item)
    elif isinstance(value, list):
        for item in value:
            _assert_plain(item)


def test_numpy_scalars_in_info_come_back_as_python_numbers(graph, tmp_path):
    info = {
        "alpha": np.float64(0.5),
        "f32": np.float32(0.25),
        "n": np.int64(7),
        "flag": np.bool_(True),
        "zero_d": np.array(3.5),
        "vector": np.array([1, 2]),
        "nested": {"k": [np.int32(1), np.float16(0.5)], "none": None},
    }
    dataclasses.replace(graph, info=info).save(tmp_path / "graph.npz")
    loaded = InteractionGraph.load(tmp_path / "graph.npz")
    assert loaded.info == {
        "alpha": 0.5,
        "f32": 0.25,
        "n": 7,
        "flag": True,
        "zero_d": 3.5,
        "vector": [1, 2],
        "nested": {"k": [1, 0.5], "none": None},
    }
    _assert_plain(loaded.info)
    assert type(loaded.info["n"]) is int and type(loaded.info["flag"]) is bool


def test_info_json_cannot_store_is_refused_before_writing(graph, tmp_path):
    with pytest.raises(TypeError, match="info value .* of type object cannot be saved as JSON"):
        dataclasses.replace(graph, info={"x": object()}).save(tmp_path / "graph.npz")
    assert os.listdir(tmp_path) == []


# -- atomic save -----------------------------------------------------------------------
def _dies_midway(error):
    """A ``np.savez_compressed`` that writes the start of an archive, then raises ``error``."""

    def savez(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):  # open it as numpy would
            file = open(file, "wb")  # left open, like a crashed writer
        file.write(b"PK\x03\x04 half an archive")
        file.flush()
        raise error

    return savez


def _fail(*args, **kwargs):
    raise OSError("injected failure")


FAULTS = {
    "disk_full_midway": (np, "savez_compressed", _dies_midway(OSError("disk full")), OSError),
    "interrupted_midway": (
        np,
        "savez_compressed",
        _dies_midway(KeyboardInterrupt()),
        KeyboardInterrupt,
    ),
    "fsync_fails": (os, "fsync", _fail, OSError),
    "replace_fails": (os, "replace", _fail, OSError),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_failed_save_leaves_the_previous_file(graph, tmp_path, monkeypatch, fault):
    path = tmp_path / "graph.npz"
    graph.save(path)
    before = path.read_bytes()
    module, name, replacement, error = FAULTS[fault]
    monkeypatch.setattr(module, name, replacement)
    with pytest.raises(error):
        dataclasses.replace(graph, info={"run": 2}).save(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["graph.npz"]  # no temporary file left behind
    assert path.read_bytes() == before
    _assert_same_graph(InteractionGraph.load(path), graph)


def test_save_refuses_a_graph_that_would_not_load(graph, tmp_path):
    path = tmp_path / "graph.npz"
    graph.save(path)
    before = path.read_bytes()
    # The constructor refuses both; a graph spoiled after construction meets save's check.
    spoiled = dataclasses.replace(graph, edges=dict(graph.edges))
    spoiled.edges[graph.sections[0]] = -graph.edges[graph.sections[0]]
    with pytest.raises(ValueError, match="cannot save .*'edges_0' has negative values"):
        spoiled.save(path)
    spoiled = dataclasses.replace(graph)
    spoiled.nodes = ["fc2", "fc2", "output"]
    with pytest.raises(ValueError, match="cannot save .*'meta' nodes must be distinct"):
        spoiled.save(path)
    assert os.listdir(tmp_path) == ["graph.npz"]
    assert path.read_bytes() == before


# -- tampered files --------------------------------------------------------------------
UNPICKLED = []


def _record_unpickling():
    UNPICKLED.append(True)


class _Payload:
    """Unpickling it calls ``_record_unpickling``: proof that a loader ran pickle."""

    def __reduce__(self):
        return (_record_unpickling, ())


def _parts(graph):
    """A saved graph's arrays, with ``meta`` as a dict (what the tampering edits)."""
    parts = {f"lambdas_{i}": graph.lambdas[n].copy() for i, n in enumerate(graph.nodes)}
    parts.update({f"edges_{i}": graph.edges[s].copy() for i, s in enumerate(graph.sections)})
    parts["meta"] = {"nodes": list(graph.nodes), "info": graph.info, "version": 1}
    return parts


def _set(key, value):
    def tamper(parts):
        parts[key] = value(parts) if callable(value) else value

    return tamper


def _drop(key):
    return lambda parts: parts.pop(key)


def _edit(key, index, value):
    def tamper(parts):
        parts[key][index] = value

    return tamper


def _meta(**changes):
    def tamper(parts):
        for field, value in changes.items():
            if value is None:
                del parts["meta"][field]
            else:
                parts["meta"][field] = value

    return tamper


def _flip_edge_byte(data, parts):
    """Flip one byte inside the (stored, uncompressed) data of ``edges_0``: bit rot."""
    start = data.index(parts["edges_0"].tobytes())
    return data[:start] + bytes([data[start] ^ 0xFF]) + data[start + 1 :]


# (what to change, whose bytes to write, the message it must name)
TAMPERED = {
    "missing_meta": (_drop("meta"), None, r"no 'meta' array"),
    "missing_edges": (_drop("edges_1"), None, r"missing \['edges_1'\], unexpected \[\]"),
    "missing_lambdas": (_drop("lambdas_2"), None, r"missing \['lambdas_2'\]"),
    "extra_array": (_set("extra", np.zeros(2)), None, r"unexpected \['extra'\]"),
    "int_dtype": (
        _set("lambdas_0", lambda p: p["lambdas_0"].astype(np.int64)),
        None,
        r"'lambdas_0' has dtype int64, not floating point",
    ),
    "complex_dtype": (
        _set("edges_0", lambda p: p["edges_0"].astype(complex)),
        None,
        r"'edges_0' has dtype complex128, not floating point",
    ),
    "edges_transposed": (
        _set("edges_0", lambda p: np.ascontiguousarray(p["edges_0"].T)),
        None,
        # Refused from its header, before its data is read.
        r"'edges_0' has shape \(\d+, \d+\), not \(\d+, \d+\)",
    ),
    "edges_wrong_rows": (
        _set("edges_1", lambda p: p["edges_1"][:-1]),
        None,
        r"'edges_1' has shape \(\d+, \d+\), not",
    ),
    "lambdas_2d": (
        _set("lambdas_1", lambda p: p["lambdas_1"][:, None]),
        None,
        r"'lambdas_1' of node 'fc3' has shape \(\d+, 1\), not 1-D",
    ),
    "nan_edge": (_edit("edges_0", (0, 0), np.nan), None, r"'edges_0' has non-finite values"),
    "inf_lambda": (_edit("lambdas_0", 0, np.inf), None, r"'lambdas_0' has non-finite values"),
    "negative_edge": (_edit("edges_1", (0, 0), -1e-3), None, r"'edges_1' has negative values"),
    "one_node_too_many": (
        _meta(nodes=["fc2", "fc3", "output", "extra"]),
        None,
        r"the 4 nodes .* missing \['edges_2', 'lambdas_3'\]",
    ),
    "one_node_too_few": (
        _meta(nodes=["fc2", "fc3"]),
        None,
        r"the 2 nodes .* unexpected \['edges_1', 'lambdas_2'\]",
    ),
    "duplicate_nodes": (_meta(nodes=["fc2", "fc2", "output"]), None, r"nodes must be distinct"),
    "nodes_not_strings": (_meta(nodes=[1, 2, 3]), None, r"nodes must be a non-empty list of str"),
    "empty_nodes": (_meta(nodes=[]), None, r"nodes must be a non-empty list of str"),
    "meta_lacks_info": (_meta(info=None), None, r"'meta' lacks fields \['info'\]"),
    "meta_unknown_field": (_meta(extra=1), None, r"unexpected ones \['extra'\]"),
    "info_not_object": (_meta(info=[1, 2]), None, r"info must be a JSON object"),
    "future_version": (_meta(version=2), None, r"format version 2; this reads 1"),
    "bad_json": (_set("meta", '{"nodes": ["fc2", '), None, r"'meta' is not valid JSON"),
    "meta_json_list": (_set("meta", "[1, 2]"), None, r"'meta' is a JSON list, not an object"),
    "meta_not_string": (_set("meta", np.zeros(3)), None, r"'meta' is an array of float64"),
    "pickled_object_array": (
        _set("edges_0", np.array([_Payload()], dtype=object)),
        None,
        r"'edges_0' has dtype object, not floating point",
    ),
    "bit_rot": (None, _flip_edge_byte, r"Bad CRC-32 for file 'edges_0.npy'"),
    "truncated_half": (None, lambda data, _: data[: len(data) // 2], r"not a zip file"),
    "empty_file": (None, lambda data, _: b"", r"not a zip file"),
    "garbage": (None, lambda data, _: b"garbage " * 100, r"not a zip file"),
    "pickle_file": (None, lambda data, _: pickle.dumps(_Payload()), r"not a zip file"),
    "npy_file": (None, lambda data, _: _npy_bytes(), r"not a zip file"),
}


def _npy_bytes():
    buffer = io.BytesIO()
    np.save(buffer, np.ones(3))
    return buffer.getvalue()


def _savez(path, parts):
    """``np.savez`` (uncompressed, pickling object arrays) of the parts, ``meta`` as JSON."""
    arrays = dict(parts)
    if "meta" in arrays and not isinstance(arrays["meta"], np.ndarray):
        meta = arrays["meta"]
        arrays["meta"] = np.array(meta if isinstance(meta, str) else json.dumps(meta))
    np.savez(path, **arrays)


@pytest.mark.parametrize("case", list(TAMPERED))
def test_load_refuses_tampered(graph, tmp_path, case):
    tamper_parts, tamper_bytes, message = TAMPERED[case]
    path = tmp_path / "graph.npz"
    parts = _parts(graph)
    if tamper_parts is not None:
        tamper_parts(parts)
    _savez(path, parts)
    if tamper_bytes is not None:
        path.write_bytes(tamper_bytes(path.read_bytes(), parts))
    UNPICKLED.clear()
    with pytest.raises(ValueError) as caught:
        InteractionGraph.load(path)
    text = str(caught.value)
    assert text.startswith(f"{str(path)!r} is not a saved InteractionGraph: "), text
    assert re.search(message, text), text
    assert not UNPICKLED


def test_untampered_parts_load(graph, tmp_path):
    """The tampering test's baseline: the same parts, unchanged, load fine."""
    path = tmp_path / "graph.npz"
    _savez(path, _parts(graph))
    _assert_same_graph(InteractionGraph.load(path), graph)


def test_damaged_bytes_are_refused_or_read_exactly(tmp_path):
    """Cuts at every 10th byte and 200 random one-byte changes of a saved file.

    Each load raises ValueError or (a change in a field nothing reads, such as a
    timestamp) returns the very same graph: the data is CRC-checked.
    """
    graph = InteractionGraph(
        ["a", "b", "output"],
        {"a": np.array([2.0, 1.0]), "b": np.array([3.0, 2.0, 1.0]), "output": np.ones(2)},
        {("a", "b"): np.full((3, 2), 0.25), ("b", "output"): np.full((2, 3), 0.5)},
        {"x": 1},
    )
    path = tmp_path / "graph.npz"
    graph.save(path)
    data = path.read_bytes()
    rng = np.random.default_rng(0)
    damaged = [data[:n] for n in range(0, len(data), 10)]
    for i, value in zip(rng.integers(len(data), size=200), rng.integers(1, 256, size=200)):
        damaged.append(data[:i] + bytes([data[i] ^ value]) + data[i + 1 :])
    refused = 0
    for content in damaged:
        path.write_bytes(content)
        try:
            loaded = InteractionGraph.load(path)
        except ValueError as exc:
            assert "is not a saved InteractionGraph" in str(exc)
            refused += 1
        else:
            _assert_same_graph(loaded, graph)
    assert refused > len(damaged) // 2
