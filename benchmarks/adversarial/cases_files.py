"""Saved fits and graphs: round trips, faults while saving, tampered and hostile files.

- round trips: a loaded fit transforms, scores and draws its graph bit for bit as the
  original, for every kind of fit (positions, conv maps, dict inputs, PCA, whitening,
  float32, compute_graph, set_output);
- faults while saving (``os.replace`` and ``fsync`` failing, ``KeyboardInterrupt``
  midway, a full disk by ``RLIMIT_FSIZE``, nothing to save, a graph that would not
  load): the file already at the path survives byte for byte, no temporary file is left;
- tampered, corrupted and hostile files (truncated, members missing or extra, wrong
  dtypes and shapes, NaN, pickled objects that would run code when unpickled, zip bombs,
  a deeply nested JSON, member names with ``..``, FIFOs): refused with a ``ValueError``
  naming the file, nothing unpickled, little memory, the file itself unchanged.
"""

import errno
import io
import json
import os
import pickle
import tempfile
import warnings
import zipfile

import numpy as np
import torch

from sklearn_lib import InteractionGraph, LIBTransformer, StaleBasisWarning

from . import fixtures as F
from . import models as M
from . import reference as R
from .harness import Raises, Trial, add, in_threads, temp_dir

TRIP = "files: round trips"
SAVE = "files: faults while saving"
FIT_FILE = "files: tampered fit files"
GRAPH_FILE = "files: tampered graph files"
LOAD = "files: loading with the wrong model or path"


def _folder():
    return temp_dir()


# -- round trips ------------------------------------------------------------------------------


def _fitted_state(lib):
    return {k: v for k, v in vars(lib).items() if k.endswith("_") and not k.startswith("_")}


def _same_state(a, b):
    """None if the fitted attributes of two estimators hold the same values."""
    sa, sb = _fitted_state(a), _fitted_state(b)
    if sa.keys() != sb.keys():
        return f"fitted attributes differ: {sorted(set(sa) ^ set(sb))}"
    for k in sa:
        x, y = sa[k], sb[k]
        if k == "bases_":
            for name in x:
                for field in ("mean", "matrix", "pinv", "lambdas", "gram_eigenvalues"):
                    u, v = np.asarray(getattr(x[name], field)), np.asarray(getattr(y[name], field))
                    if u.shape != v.shape or not np.array_equal(u, v):
                        return f"bases_[{name!r}].{field} differs"
                if x[name].n_components != y[name].n_components:
                    return f"bases_[{name!r}].n_components differs"
        elif k == "interaction_graph_":
            for s in x.sections:
                if not np.array_equal(x.edges[s], y.edges[s]):
                    return f"interaction_graph_ edges {s} differ"
        elif isinstance(x, np.ndarray):
            if x.shape != y.shape or not np.array_equal(x, y):
                return f"{k} differs"
        elif k not in ("stochastic_rounds_",) and x != y:
            return f"{k}: {x!r} != {y!r}"
    return None


def _trip(name, make, *, quick=False, graph=True):
    def setup():
        lib, X = make()
        path = os.path.join(_folder(), "fit.npz")
        want = lib.transform(X)
        want_score = lib.score(X)
        want_graph = lib.interaction_graph(X) if graph else None

        def action():
            lib.save(path)
            return LIBTransformer.load(path, lib.model)

        def check(loaded):
            problem = _same_state(lib, loaded)
            if problem:
                return problem
            got = loaded.transform(X)
            got = got.to_numpy() if hasattr(got, "to_numpy") else got
            w = want.to_numpy() if hasattr(want, "to_numpy") else want
            if got.shape != w.shape or not np.array_equal(got, w, equal_nan=True):
                return "transform differs after the round trip"
            if loaded.score(X) != want_score:
                return "score differs after the round trip"
            if want_graph is not None:
                g = loaded.interaction_graph(X)
                for s in want_graph.sections:
                    if not np.array_equal(g.edges[s], want_graph.edges[s]):
                        return f"edges {s} differ after the round trip"
            return None

        return Trial(action, check, watch={"model": lib.model, "estimator": lib})

    add(TRIP, name, setup, quick=quick)


def _fit(model, X, layer, downstream=(), **params):
    def make():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return LIBTransformer(model(), layer, downstream_layers=list(downstream), **params).fit(
                X()
            ), X()

    return make


def register_round_trips():
    X = lambda: M.mlp_data(60)  # noqa: E731
    _trip("tanh MLP", _fit(M.tanh_mlp, X, "fc2", ["fc3"]), quick=True)
    _trip("whiten", _fit(M.tanh_mlp, X, "fc2", ["fc3"], whiten=True))
    _trip("n_components=0.5", _fit(M.tanh_mlp, X, "fc2", ["fc3"], n_components=0.5))
    _trip("basis=pca", _fit(M.tanh_mlp, X, "fc2", ["fc3"], basis="pca"), graph=False)
    _trip("compute_graph", _fit(M.tanh_mlp, X, "fc1", ["fc2", "fc3"], compute_graph=True))
    _trip("float32", _fit(M.tanh_mlp, X, "fc2", ["fc3"], dtype="float32"))
    _trip(
        "trapezoidal", _fit(M.tanh_mlp, X, "fc2", ["fc3"], integration="trapezoidal", n_intervals=2)
    )
    _trip(
        "center=False, output_basis=pca",
        _fit(M.tanh_mlp, X, "fc2", ["fc3"], center=False, output_basis="pca"),
    )
    _trip(
        "n_stochastic_sources=4",
        _fit(M.tanh_mlp, X, "fc2", ["fc3"], n_stochastic_sources=4, random_state=0),
    )
    _trip("capture=output", _fit(M.tanh_mlp, X, "act1", ["act2"], capture="output"))
    _trip(
        "positions",
        _fit(lambda: M.PositionMixer().double(), lambda: M.positions_data(40), "mix", ["head"]),
    )
    _trip(
        "conv map, feature_axis=1",
        _fit(M.small_resnet, lambda: M.images(6), "pool", ["fc"], feature_axis=1),
        graph=False,
    )
    _trip(
        "feature_axis as a dict",
        _fit(M.small_resnet, lambda: M.images(6), "pool", ["fc"], feature_axis={"pool": 1}),
        graph=False,
    )
    _trip(
        "GPT-2, padded dict",
        _fit(
            M.gpt2_eval,
            lambda: F.padded(M.token_ids(12, 8), [8, 5, 3, 7] * 3),
            "transformer.h.1",
            ["transformer.ln_f"],
            output="logits",
            forward_kwargs=dict(M.KW),
        ),
        graph=False,
    )
    _trip(
        "output as an int of a tuple",
        _fit(lambda: M.WithOutputs("tuple").double(), X, "fc2", [], output=0),
    )

    def pandas_output():
        lib, X = F.mlp_fit()
        lib.set_output(transform="pandas")
        return lib, X

    _trip("set_output(pandas)", pandas_output, graph=False)

    def graph_trip(name, make_graph):
        def setup():
            g = make_graph()
            path = os.path.join(_folder(), "graph.npz")

            def action():
                g.save(path)
                return InteractionGraph.load(path)

            def check(h):
                if h.nodes != g.nodes:
                    return f"nodes {h.nodes}"
                for s in g.sections:
                    if not np.array_equal(h.edges[s], g.edges[s]):
                        return f"edges {s} differ"
                for n in g.nodes:
                    if not np.array_equal(h.lambdas[n], g.lambdas[n]):
                        return f"lambdas {n} differ"
                return None

            return Trial(action, check, watch={"graph": g})

        add(TRIP, f"graph: {name}", setup)

    graph_trip("of the MLP", lambda: F.mlp3_fit()[2])

    def odd_graph(nodes, info=None):
        def make():
            rng = np.random.default_rng(0)
            sizes = [3, 2, 4][: len(nodes)]
            lambdas = {n: rng.random(k) for n, k in zip(nodes, sizes)}
            edges = {
                (a, b): rng.random((kb, ka))
                for (a, ka), (b, kb) in zip(zip(nodes, sizes), list(zip(nodes, sizes))[1:])
            }
            return InteractionGraph(nodes, lambdas, edges, info or {})

        return make

    graph_trip("unicode and slashes in node names", odd_graph(["blöcke/0", "日本", "output"]))
    graph_trip("a node named ''", odd_graph(["", "b", "output"]))
    graph_trip(
        "numpy scalars in info", odd_graph(["a", "b"], {"n": np.int64(3), "x": np.float32(0.5)})
    )
    graph_trip("one node, no section", odd_graph(["output"]))
    graph_trip(
        "all-zero edges",
        lambda: InteractionGraph(
            ["a", "b"], {"a": np.ones(2), "b": np.ones(3)}, {("a", "b"): np.zeros((3, 2))}
        ),
    )
    graph_trip(
        "empty node (no feature)",
        lambda: InteractionGraph(
            ["a", "b"], {"a": np.ones(0), "b": np.ones(3)}, {("a", "b"): np.zeros((3, 0))}
        ),
    )


# -- faults while saving -------------------------------------------------------------------


class _Patched:
    """Replace ``obj.name`` by ``replacement`` for the duration of a call."""

    def __init__(self, obj, name, replacement):
        self.obj, self.name, self.replacement = obj, name, replacement

    def __call__(self, action):
        def run():
            original = getattr(self.obj, self.name)
            setattr(self.obj, self.name, self.replacement(original))
            try:
                return action()
            finally:
                setattr(self.obj, self.name, original)

        return run


def _raise_on(n, error):
    def replacement(original):
        calls = [0]

        def wrapped(*args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                raise error()
            return original(*args, **kwargs)

        return wrapped

    return replacement


def _existing(kind):
    """``(folder, path, saver)``: a valid file of ``kind`` at ``path`` and a saver of
    another fit or graph to the same path."""
    folder = _folder()
    path = os.path.join(folder, f"{kind}.npz")
    lib, X, g = F.mlp3_fit()
    other, _ = F.mlp_fit()
    if kind == "fit":
        lib.save(path)
        return folder, path, lambda p=path: other.save(p)
    g.save(path)
    g2 = other.interaction_graph(X)
    return folder, path, lambda p=path: g2.save(p)


FAULTS = {
    "os.replace fails (ENOSPC)": lambda act: _Patched(
        os, "replace", _raise_on(1, lambda: OSError(errno.ENOSPC, "No space left on device"))
    )(act),
    "fsync fails (EIO)": lambda act: _Patched(
        os, "fsync", _raise_on(1, lambda: OSError(errno.EIO, "Input/output error"))
    )(act),
    "KeyboardInterrupt in the 3rd array": lambda act: _Patched(
        np.lib.format, "write_array", _raise_on(3, KeyboardInterrupt)
    )(act),
    "MemoryError in the 2nd array": lambda act: _Patched(
        np.lib.format, "write_array", _raise_on(2, MemoryError)
    )(act),
    "os.fdopen fails": lambda act: _Patched(
        os, "fdopen", _raise_on(1, lambda: OSError(errno.EMFILE, "Too many open files"))
    )(act),
}


def register_save_faults():
    for kind in ("fit", "graph"):
        for fault, wrap in FAULTS.items():

            def setup(kind=kind, wrap=wrap, fault=fault):
                folder, path, save = _existing(kind)
                exc = (
                    KeyboardInterrupt
                    if "Keyboard" in fault
                    else (MemoryError if "Memory" in fault else OSError)
                )
                return Trial(wrap(save), raises=Raises("", types=(exc,)), files=[path])

            add(SAVE, f"{kind}: {fault}", setup, quick=fault.startswith("os.replace"))

        def disk_full(kind=kind):
            import resource
            import signal

            folder, path, save = _existing(kind)
            big = LIBTransformer(M.tanh_mlp(), "fc2", downstream_layers=["fc3"])

            def action():
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (1500, resource.RLIM_INFINITY))
                if kind == "fit":
                    big.fit(M.mlp_data(60)).save(path)
                else:
                    F.mlp3_fit()[2].save(path)

            return Trial(action, raises=Raises("", types=(OSError,)), files=[path])

        add(
            SAVE,
            f"{kind}: a full disk (RLIMIT_FSIZE of 1.5 kB)",
            disk_full,
            isolate=True,
            timeout=60,
        )

    def unsaveable(name, make):
        def setup():
            folder, path, _ = _existing("fit")
            save, match = make(path)
            # Errors about the path keep their OSError types (IsADirectoryError, ...).
            return Trial(save, raises=Raises(match, (ValueError, TypeError, OSError)), files=[path])

        add(SAVE, f"fit: {name}", setup)

    def unfitted(path):
        return lambda: LIBTransformer(M.tanh_mlp(), "fc2").save(path), r"fit"

    def callable_output(path):
        lib = LIBTransformer(M.tanh_mlp(), "fc2", output=lambda o: o).fit(M.mlp_data(30))
        return lambda: lib.save(path), r"output|callable|JSON"

    def tensor_kwargs(path):
        lib = LIBTransformer(
            M.EditsKwargs().double(), "fc2", forward_kwargs={"shift": torch.zeros(6)}
        ).fit(M.mlp_data(30))
        return lambda: lib.save(path), r"forward_kwargs|tensor|JSON|shift"

    def random_state_instance(path):
        lib = LIBTransformer(M.tanh_mlp(), "fc2", random_state=np.random.RandomState(0)).fit(
            M.mlp_data(30)
        )
        return lambda: lib.save(path), r"random_state|RandomState|JSON"

    def bytes_path(path):
        lib, _ = F.mlp_fit()
        return lambda: lib.save(path.encode()), r"path|bytes|str"

    def folder_path(path):
        lib, _ = F.mlp_fit()
        return lambda: lib.save(os.path.dirname(path)), r"folder|directory"

    def dev_full(path):
        lib, _ = F.mlp_fit()
        return lambda: lib.save("/dev/full"), r"regular file|dev/full"

    def parent_is_file(path):
        lib, _ = F.mlp_fit()
        return lambda: lib.save(os.path.join(path, "x.npz")), r"folder|directory|x.npz|fit.npz"

    for name, make in [
        ("not fitted", unfitted),
        ("a callable output", callable_output),
        ("a tensor in forward_kwargs", tensor_kwargs),
        ("a RandomState instance", random_state_instance),
        ("a bytes path", bytes_path),
        ("a folder as the path", folder_path),
        ("/dev/full as the path", dev_full),
        ("a path under a file", parent_is_file),
    ]:
        unsaveable(name, make)

    def graph_nan():
        folder, path, _ = _existing("graph")
        g = F.mlp3_fit()[2]
        g.edges[("fc1", "fc2")][0, 0] = np.nan
        return Trial(lambda: g.save(path), raises=Raises(r"nan|finite"), files=[path])

    add(SAVE, "graph: edited to NaN", graph_nan)

    def graph_bad_info():
        folder, path, _ = _existing("graph")
        g = F.mlp3_fit()[2]
        g.info["model"] = M.tanh_mlp()
        return Trial(
            lambda: g.save(path), raises=Raises(r"info|JSON|Sequential|serial"), files=[path]
        )

    add(SAVE, "graph: info JSON cannot store", graph_bad_info)

    def symlink():
        folder, path, save = _existing("fit")
        link = os.path.join(folder, "link.npz")
        os.symlink(path, link)
        lib, X = F.mlp_fit()

        def action():
            lib.save(link)
            return os.path.islink(link), LIBTransformer.load(path, lib.model).transform(X)

        return Trial(
            action,
            lambda r: (
                None
                if r[0] and R.close(r[1], lib.transform(X), 0, 0) is None
                else "the link or its target is not the new fit"
            ),
        )

    add(SAVE, "fit: a symbolic link is followed, kept a link", symlink)

    def two_savers():
        folder = _folder()
        path = os.path.join(folder, "fit.npz")
        a, X = F.mlp_fit()
        b, _ = F.mlp_fit(n_components=2)

        def action():
            def save(lib):
                for _ in range(5):
                    lib.save(path)

            in_threads(lambda: save(a), lambda: save(b), timeout=60)
            return LIBTransformer.load(path, a.model).n_components_, sorted(os.listdir(folder))

        return Trial(
            action,
            lambda r: (
                None
                if r[0] in (a.n_components_, 2) and r[1] == ["fit.npz"]
                else f"loaded {r[0]} features, folder {r[1]}"
            ),
        )

    add(SAVE, "fit: two threads saving to one path", two_savers, isolate=True)


# -- tampered files ------------------------------------------------------------------------


def _members(path):
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i.filename) for i in z.infolist()}


def _write_zip(path, members, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)


def _npy(array):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(array), allow_pickle=True)
    return buf.getvalue()


def _read_npy(data):
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def _meta(members):
    return json.loads(str(_read_npy(members["meta.npy"])))


def _with_meta(members, edit):
    meta = _meta(members)
    edit(meta)
    return {**members, "meta.npy": _npy(np.array(json.dumps(meta)))}


def _replace(key, value):
    def edit(members):
        return {**members, key: _npy(value(_read_npy(members[key])))}

    return edit


MARKER = os.path.join(tempfile.gettempdir(), f"adversarial-unpickled-marker-{os.getpid()}")


class _Payload:
    """Unpickling it creates :data:`MARKER`: proof that a loader unpickled."""

    def __reduce__(self):
        return (open, (MARKER, "w"))


def _pickled(members, key):
    array = np.empty(1, dtype=object)
    array[0] = _Payload()
    return {**members, key: _npy(array)}


def _bomb_matrix(shape=(6000, 6000)):
    """A float64 .npy of zeros of ``shape`` (288 MB), deflated to a few hundred kB."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": shape}
    )
    return header.getvalue(), int(np.prod(shape)) * 8


def _write_bomb(path, members, key, shape=(6000, 6000)):
    header, size = _bomb_matrix(shape)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            if name != key:
                z.writestr(name, data)
        with z.open(key, "w", force_zip64=True) as f:
            f.write(header)
            chunk = bytes(1 << 20)
            for _ in range(size >> 20):
                f.write(chunk)


def _meta_bomb(members):
    text = "x" * (5 * 10**6)
    return {**members, "meta.npy": _npy(np.array(text))}


#: name -> edit of the members (a dict name -> bytes), or a raw edit of the file's bytes
FIT_EDITS = {
    "member missing: basis0_matrix": lambda m: {
        k: v for k, v in m.items() if k != "basis0_matrix.npy"
    },
    "member missing: meta": lambda m: {k: v for k, v in m.items() if k != "meta.npy"},
    "extra member": lambda m: {**m, "extra.npy": _npy(np.ones(3))},
    "meta not JSON": lambda m: {**m, "meta.npy": _npy(np.array("{not json"))},
    "meta a JSON list": lambda m: {**m, "meta.npy": _npy(np.array("[1, 2]"))},
    "meta of another format": lambda m: _with_meta(m, lambda d: d.update(format="other")),
    "meta of version 99": lambda m: _with_meta(m, lambda d: d.update(version=99)),
    "layer renamed fc9": lambda m: _with_meta(m, lambda d: d["params"].update(layer="fc9")),
    "n_components '3'": lambda m: _with_meta(m, lambda d: d["params"].update(n_components="3")),
    "truncation_threshold NaN": lambda m: _with_meta(
        m, lambda d: d["params"].update(truncation_threshold=float("nan"))
    ),
    "downstream_layers emptied": lambda m: _with_meta(
        m, lambda d: d["params"].update(downstream_layers=[])
    ),
    "a basis shape of 9": lambda m: _with_meta(m, lambda d: d["bases"][0].update(shape=[9])),
    "n_components of a basis 99": lambda m: _with_meta(
        m, lambda d: d["bases"][0].update(n_components=99)
    ),
    "batch_size_ -1": lambda m: _with_meta(m, lambda d: d["fitted"].update(batch_size_=-1)),
    "n_features_in_ 5": lambda m: _with_meta(m, lambda d: d["fitted"].update(n_features_in_=5)),
    "a fingerprint digest removed": lambda m: _with_meta(
        m, lambda d: d["fitted"]["model_fingerprint"]["digests"].pop("fc2.weight")
    ),
    "meta with an unknown key": lambda m: _with_meta(m, lambda d: d.update(surprise=1)),
    "params with an unknown key": lambda m: _with_meta(m, lambda d: d["params"].update(surprise=1)),
    "integer matrix": _replace("basis0_matrix.npy", lambda a: a.astype(np.int64)),
    "complex matrix": _replace("basis0_matrix.npy", lambda a: a.astype(complex)),
    "NaN in a matrix": _replace("basis0_matrix.npy", lambda a: np.where(a == a.max(), np.nan, a)),
    "inf in the mean": _replace("basis0_mean.npy", lambda a: a + np.inf),
    "transposed matrix": _replace("basis0_matrix.npy", lambda a: a.T.copy()),
    "negative lambdas": _replace("basis0_lambdas.npy", lambda a: -a),
    "lambdas ascending": _replace("basis0_lambdas.npy", lambda a: a[::-1].copy()),
    "float16 matrix": _replace("basis0_matrix.npy", lambda a: a.astype(np.float16)),
    "big-endian matrix": _replace("basis0_matrix.npy", lambda a: a.astype(">f8")),
    "a 0-d lambdas": _replace("basis0_lambdas.npy", lambda a: np.float64(1.0)),
    "pickled object array (runs code when unpickled)": lambda m: _pickled(m, "basis0_mean.npy"),
    "pickled object meta": lambda m: _pickled(m, "meta.npy"),
    "meta of 5M characters": _meta_bomb,
    "deeply nested JSON": lambda m: {**m, "meta.npy": _npy(np.array("[" * 200000 + "]" * 200000))},
    "member named ../evil.npy": lambda m: {**m, "../evil.npy": _npy(np.ones(2))},
    "duplicate member (second NaN)": None,  # written specially
    "zip bomb: a 288 MB matrix": None,
    "stored, not deflated": None,
}


def _tampered(kind, name, edit):
    def setup():
        folder = _folder()
        path = os.path.join(folder, f"{kind}.npz")
        lib, X, g = F.mlp3_fit()
        (lib.save if kind == "fit" else g.save)(path)
        members = _members(path)
        target = "basis0_matrix.npy" if kind == "fit" else "edges_0.npy"
        if name == "duplicate member (second NaN)":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _write_zip(path, members)
                with zipfile.ZipFile(path, "a") as z:
                    bad = _read_npy(members[target]).copy()
                    bad.flat[0] = np.nan
                    z.writestr(target, _npy(bad))
        elif name == "zip bomb: a 288 MB matrix":
            _write_bomb(path, members, target)
        elif name == "stored, not deflated":
            _write_zip(path, members, zipfile.ZIP_STORED)
        else:
            _write_zip(path, edit(members))
        if os.path.exists(MARKER):
            os.remove(MARKER)
        load = (
            (lambda: LIBTransformer.load(path, lib.model))
            if kind == "fit"
            else (lambda: InteractionGraph.load(path))
        )
        either = name in (
            "big-endian matrix",
            "stored, not deflated",
            "float16 matrix",
            "meta with an unknown key",
            "params with an unknown key",
            "a fingerprint digest removed",
        )
        want = lib.transform(X) if kind == "fit" else g

        def check(loaded):
            if name == "a fingerprint digest removed":
                return None  # a later call may warn: the file says the model differs
            if kind == "fit":
                return R.close(loaded.transform(X), want, 1e-12, 0, what="transform")
            return (
                None
                if all(np.array_equal(loaded.edges[s], want.edges[s]) for s in want.sections)
                else "edges differ"
            )

        def after():
            if os.path.exists(MARKER):
                return "the file was unpickled: the marker exists"
            if os.path.exists(os.path.join(os.path.dirname(folder), "evil.npy")):
                return "a member was extracted outside the folder"
            return None

        return Trial(
            load,
            check,
            raises=Raises(r"not a saved|saved|" + os.path.basename(path)),
            either=either,
            files=[path],
            after=after,
            mem_mb=150,
        )

    return setup


def _raw(kind, name, make_bytes, match=r"not a saved|saved"):
    def setup():
        folder = _folder()
        path = os.path.join(folder, f"{kind}.npz")
        lib, X, g = F.mlp3_fit()
        (lib.save if kind == "fit" else g.save)(path)
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(make_bytes(data))
        load = (
            (lambda: LIBTransformer.load(path, lib.model))
            if kind == "fit"
            else (lambda: InteractionGraph.load(path))
        )
        return Trial(load, raises=Raises(match), files=[path], mem_mb=150)

    return setup


RAW = {
    "truncated to half": lambda d: d[: len(d) // 2],
    "truncated to 100 bytes": lambda d: d[:100],
    "empty": lambda d: b"",
    "random bytes": lambda d: np.random.default_rng(0).bytes(len(d)),
    "every 50th byte flipped": lambda d: bytes(
        b ^ 0xFF if i % 50 == 25 else b for i, b in enumerate(d)
    ),
    "a pickle of the estimator": lambda d: pickle.dumps({"meta": "x"}),
}


def register_tampered():
    for name, edit in FIT_EDITS.items():
        add(
            FIT_FILE,
            name,
            _tampered("fit", name, edit),
            quick=name.startswith(("pickled object array", "zip bomb")),
            isolate=name.startswith("zip bomb"),
            timeout=120,
        )
    graph_edits = {
        "member missing: edges_0": lambda m: {k: v for k, v in m.items() if k != "edges_0.npy"},
        "meta without nodes": lambda m: _with_meta(m, lambda d: d.pop("nodes")),
        "a node renamed to a duplicate": lambda m: _with_meta(
            m, lambda d: d["nodes"].__setitem__(1, d["nodes"][0])
        ),
        "one node less": lambda m: _with_meta(m, lambda d: d["nodes"].pop()),
        "negative edges": _replace("edges_0.npy", lambda a: -a - 1),
        "NaN edges": _replace("edges_0.npy", lambda a: a * np.nan),
        "integer edges": _replace("edges_0.npy", lambda a: (a * 1e6).astype(np.int64)),
        "transposed edges": _replace("edges_0.npy", lambda a: a.T.copy()),
        "pickled object array (runs code when unpickled)": lambda m: _pickled(m, "edges_0.npy"),
        "meta of 5M characters": _meta_bomb,
        "deeply nested JSON": FIT_EDITS["deeply nested JSON"],
        "info a list": lambda m: _with_meta(m, lambda d: d.update(info=[1])),
        "duplicate member (second NaN)": None,
        "zip bomb: a 288 MB matrix": None,
    }
    for name, edit in graph_edits.items():
        add(
            GRAPH_FILE,
            name,
            _tampered("graph", name, edit),
            isolate=name.startswith("zip bomb"),
            timeout=120,
        )
    for name, make in RAW.items():
        add(FIT_FILE, f"raw: {name}", _raw("fit", name, make))
        add(GRAPH_FILE, f"raw: {name}", _raw("graph", name, make))

    def cross(kind):
        def setup():
            folder = _folder()
            path = os.path.join(folder, "file.npz")
            lib, X, g = F.mlp3_fit()
            (g.save if kind == "fit" else lib.save)(path)
            load = (
                (lambda: LIBTransformer.load(path, lib.model))
                if kind == "fit"
                else (lambda: InteractionGraph.load(path))
            )
            return Trial(load, raises=Raises(r"not a saved|saved|file.npz"), files=[path])

        return setup

    add(FIT_FILE, "a saved graph given to LIBTransformer.load", cross("fit"))
    add(GRAPH_FILE, "a saved fit given to InteractionGraph.load", cross("graph"))

    def fifo(kind):
        def setup():
            path = os.path.join(_folder(), "fifo.npz")
            os.mkfifo(path)
            load = (
                (lambda: LIBTransformer.load(path, M.tanh_mlp()))
                if kind == "fit"
                else (lambda: InteractionGraph.load(path))
            )
            return Trial(load, raises=Raises(r"fifo|regular|file|not a saved"))

        return setup

    add(FIT_FILE, "a FIFO (nothing writes to it)", fifo("fit"), isolate=True, timeout=15)
    add(GRAPH_FILE, "a FIFO (nothing writes to it)", fifo("graph"), isolate=True, timeout=15)


# -- loading with the wrong model or path ---------------------------------------------------


def register_load():
    def saved():
        lib, X = F.mlp_fit()
        path = os.path.join(_folder(), "fit.npz")
        lib.save(path)
        return lib, X, path

    def case(
        name,
        load,
        match=None,
        *,
        warns=None,
        check=None,
        types=(ValueError, TypeError),
        stale_ok=False,
    ):
        def setup():
            lib, X, path = saved()
            return Trial(
                lambda: load(lib, X, path),
                check,
                files=[path],
                raises=Raises(match, types) if match else None,
                warns=warns,
                stale_ok=stale_ok or warns is StaleBasisWarning,
            )

        add(LOAD, name, setup)

    case(
        "another architecture",
        lambda lib, X, p: LIBTransformer.load(p, M.PositionMixer().double()),
        r"does not fit|fc2|layer",
    )
    case(
        "the same layers, other widths",
        lambda lib, X, p: LIBTransformer.load(p, M.linear_chain((4, 8, 5, 3))),
        r"does not fit|shape|fc2|width",
    )
    case(
        "other weights: loads, then warns",
        lambda lib, X, p: LIBTransformer.load(p, M.tanh_mlp(seed=5)).transform(X),
        warns=StaleBasisWarning,
    )
    # The same values in float32: a warning is allowed (the bytes differ), a refusal is not.
    case(
        "the model as float32: loads",
        lambda lib, X, p: LIBTransformer.load(p, M.float32_mlp()).transform(X),
        stale_ok=True,
    )
    case("model=None", lambda lib, X, p: LIBTransformer.load(p, None), r"model")
    case("model a string", lambda lib, X, p: LIBTransformer.load(p, "fc2"), r"model")
    case(
        "a missing file",
        lambda lib, X, p: LIBTransformer.load(p + ".missing", lib.model),
        r"missing|No such",
        types=(FileNotFoundError,),
    )
    case(
        "a folder",
        lambda lib, X, p: LIBTransformer.load(os.path.dirname(p), lib.model),
        r"folder|directory|Is a",
        types=(IsADirectoryError, ValueError, PermissionError),
    )
    case(
        "device='cuda' on a machine without",
        lambda lib, X, p: (
            LIBTransformer.load(p, lib.model, device="cuda")
            if not torch.cuda.is_available()
            else _raise_cuda()
        ),
        r"device|cuda",
    )
    case(
        "device='cpu'",
        lambda lib, X, p: LIBTransformer.load(p, lib.model, device="cpu").transform(X),
        check=lambda Z: None,
    )
    case(
        "a pathlib.Path",
        lambda lib, X, p: LIBTransformer.load(__import__("pathlib").Path(p), lib.model).transform(
            X
        ),
        check=lambda Z: None,
    )
    case(
        "a file object",
        lambda lib, X, p: LIBTransformer.load(open(p, "rb"), lib.model),
        r"path|str|file",
    )


def _raise_cuda():
    raise ValueError("device cuda is available here: the case does not apply")
