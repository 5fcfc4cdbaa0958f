"""Issue 24 (groups 5 and 8): saved fits prove their contents.

``LIBTransformer.load`` checks every invariant a fit leaves (Lambda and the
Gram eigenvalues, the pseudo-inverse, the fitted counts), neither loader
decompresses more than a file's legitimate contents, ``save`` round-trips
every parameter value ``fit`` accepts or refuses it before writing, and an
unknown dtype name in a file is a clear error.
"""

import io
import json
import math
import os
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest
import torch
from torch import nn
from toy_models import linear_chain, modadd_tokens, tanh_mlp, user_transformer

from sklearn_lib import InteractionGraph, LIBTransformer


class KeywordMLP(nn.Module):
    """tanh_mlp's layers behind keyword arguments: ``scales`` must be a tuple (as a user's
    model may insist), the others are ignored."""

    def __init__(self):
        super().__init__()
        self.mlp = tanh_mlp()

    def forward(self, x, scales=(1.0,), **ignored):
        if not isinstance(scales, tuple):
            raise TypeError(f"scales must be a tuple, not a {type(scales).__name__}")
        return self.mlp(x * scales[0])


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(0).normal(size=(80, 4))


def _round_trip(lib, model, path):
    lib.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a device this machine lacks, say
        return LIBTransformer.load(path, model)


# -- genuine fits load, bit for bit ---------------------------------------------------------
GENUINE = {
    "float64": (tanh_mlp, "fc1", ["fc2", "fc3"], {"compute_graph": True}),
    "float32": (lambda: tanh_mlp().float(), "fc1", ["fc2"], {"dtype": "float32"}),
    "n_components": (tanh_mlp, "fc2", ["fc3"], {"n_components": 3, "compute_graph": True}),
    "a fraction": (tanh_mlp, "fc2", ["fc3"], {"n_components": 0.9}),
    "a threshold": (tanh_mlp, "fc2", ["fc3"], {"truncation_threshold": 0.01}),
    "a threshold under n_components": (
        tanh_mlp,
        "fc2",
        ["fc3"],
        {"n_components": 6, "truncation_threshold": 0.05},
    ),
    "pca": (tanh_mlp, "fc1", ["fc2"], {"basis": "pca", "output_basis": "pca"}),
    "pca graph float32": (
        lambda: tanh_mlp().float(),
        "fc2",
        ["fc3"],
        {"basis": "pca", "compute_graph": True, "dtype": "float32"},
    ),
    "uncentred": (tanh_mlp, "fc2", [], {"center": False, "output_basis": "pca"}),
    "sources": (tanh_mlp, "fc1", ["fc2"], {"n_stochastic_sources": 2, "random_state": 0}),
    "null space": (lambda: linear_chain((5, 12, 9, 3)), "fc2", ["fc3"], {"output_basis": "pca"}),
    "tokens": (
        user_transformer,
        "blocks.0.attn",
        ["blocks.0.mlp", "unembed"],
        {"compute_graph": True, "n_stochastic_sources": "auto"},
    ),
}


@pytest.mark.parametrize("make, layer, downstream, params", GENUINE.values(), ids=GENUINE)
def test_a_genuine_fit_saves_and_loads_bit_for_bit(tmp_path, make, layer, downstream, params):
    model = make()
    if layer.startswith("blocks"):
        X = modadd_tokens(120)
    else:
        X = np.random.default_rng(0).normal(size=(120, model[0].in_features))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # n_components above the threshold's
        lib = LIBTransformer(model, layer, downstream_layers=downstream, **params).fit(X)
    back = _round_trip(lib, model, tmp_path / "fit.npz")
    for name, basis in lib.bases_.items():
        other = back.bases_[name]
        assert other.n_components == basis.n_components and other.kind == basis.kind
        for field in ("mean", "lambdas", "gram_eigenvalues"):
            np.testing.assert_array_equal(getattr(other, field), getattr(basis, field))
    np.testing.assert_array_equal(back.transform(X), lib.transform(X))


# -- files that lie -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_fit(X, tmp_path_factory):
    """The members of a saved fit of fc2 -> fc3 -> output, with its graph, ``meta`` a dict."""
    lib = LIBTransformer(tanh_mlp(), "fc2", downstream_layers=["fc3"], compute_graph=True).fit(X)
    path = tmp_path_factory.mktemp("fit") / "fit.npz"
    lib.save(path)
    with np.load(path, allow_pickle=False) as data:
        members = {key: data[key].copy() for key in data.files}
    members["meta"] = json.loads(str(members["meta"]))
    assert members["basis0_lambdas"].shape == (8,)  # fc2 keeps every one of its 8 features
    return members


def _lie(saved, tmp_path, edit):
    """The members ``saved`` with ``edit(members)`` applied, written as a tamperer would."""
    members = {key: value.copy() for key, value in saved.items() if key != "meta"}
    members["meta"] = json.loads(json.dumps(saved["meta"]))
    edit(members)
    path = tmp_path / "lie.npz"
    np.savez(path, meta=np.array(json.dumps(members.pop("meta"))), **members)
    return path


def _set(key, index, value):
    def edit(members):
        members[key][index] = value

    return edit


def _meta(*keys, value):
    def edit(members):
        place = members["meta"]
        for key in keys[:-1]:
            place = place[key]
        place[keys[-1]] = value

    return edit


def _swap_first_two(key):
    def edit(members):
        members[key][[0, 1]] = members[key][[1, 0]]

    return edit


def _scale(key, factor):
    def edit(members):
        members[key] = members[key] * factor

    return edit


LIES = {
    # Lambda: finite, non-negative, non-increasing; a node layer's positive.
    "negative Lambda": (_set("basis0_lambdas", -1, -1e-3), r"'fc2' has Lambda down to -0.001"),
    "zero Lambda": (_set("basis1_lambdas", -1, 0.0), r"'fc3' has Lambda down to 0; .* positive"),
    "ascending Lambda": (_swap_first_two("basis0_lambdas"), "Lambda rising from"),
    "identity Lambda not ones": (_scale("basis2_lambdas", 2.0), "Lambda are not ones"),
    # The pseudo-inverse inverts the matrix.
    "a pinv entry zeroed": (_set("basis0_pinv", (0, 0), 0), "pseudo-inverse does not invert"),
    "pinv off by 1%": (_scale("basis0_pinv", 1.01), "pseudo-inverse does not invert"),
    "matrix off by 1%": (_scale("basis1_matrix", 1.01), "pseudo-inverse does not invert"),
    # The Gram eigenvalues: valid, and at least as many as Lambda.
    "negative Gram eigenvalue": (
        _set("basis0_gram_eigenvalues", -1, -1e-9),
        "Gram eigenvalues down to",
    ),
    "ascending Gram eigenvalues": (
        _swap_first_two("basis1_gram_eigenvalues"),
        "Gram eigenvalues rising",
    ),
    # Fitted counts consistent with the arrays and the parameters.
    "n_features_in_": (_meta("fitted", "n_features_in_", value=5), r"n_features_in_ must be"),
    # (With a graph, of kept Lambda of another length: refused from the graph's header.)
    "kept count": (
        _meta("bases", 0, "n_components", value=3),
        r"(keeps 3 features, but|'lambdas_0' has shape \(8,\), not \(3,\))",
    ),
    "output shape": (_meta("fitted", "output_shape_", value=[4]), r"output_shape_ \(4,\) is not"),
    "sources of another layer": (
        _meta("fitted", "n_stochastic_sources_", value={"fc9": None}),
        "n_stochastic_sources_",
    ),
    "graph Lambda": (_scale("graph_lambdas_0", 2.0), "graph's Lambda of 'fc2' are not the kept"),
    "graph of other nodes": (
        _meta("graph", "nodes", value=["fc3", "fc2", "output"]),
        "graph nodes .* are not the bases",
    ),
    "center False": (_meta("params", "center", value=False), "'fc2' has a mean, but center=False"),
    "kind": (_meta("params", "basis", value="pca"), "'fc2' is of kind 'lib', not basis='pca'"),
}


@pytest.mark.parametrize("edit, match", LIES.values(), ids=LIES)
def test_a_file_that_lies_is_refused(saved_fit, tmp_path, edit, match):
    path = _lie(saved_fit, tmp_path, edit)
    with pytest.raises(ValueError, match=f"{str(path)!r} is not a saved LIBTransformer: .*{match}"):
        LIBTransformer.load(path, tanh_mlp())


def test_the_untouched_members_load(saved_fit, tmp_path):
    """The lies' baseline: the same members, rewritten unchanged, load."""
    path = _lie(saved_fit, tmp_path, lambda members: None)
    assert LIBTransformer.load(path, tanh_mlp()).bases_["fc2"].n_components == 8


def test_parameters_changed_after_the_fit_are_not_saved(X, tmp_path):
    """A file whose parameters do not give its bases would not load: save says so first."""
    lib = LIBTransformer(tanh_mlp(), "fc2", downstream_layers=["fc3"]).fit(X)
    lib.set_params(n_components=2)
    with pytest.raises(ValueError, match="cannot store this fit, which would not load: .*keeps 8"):
        lib.save(tmp_path / "fit.npz")
    lib.set_params(n_components=None, center=False)
    with pytest.raises(ValueError, match="center=False fits none"):
        lib.save(tmp_path / "fit.npz")
    assert os.listdir(tmp_path) == []


# -- parameters -----------------------------------------------------------------------------
class _Ints(int):
    pass


PARAMETERS = {
    "downstream tuple": {"downstream_layers": ("mlp.fc3",)},
    "downstream list": {"downstream_layers": ["mlp.fc3"]},
    "no downstream": {"downstream_layers": ()},
    "capture output": {"capture": "output"},
    "forward_kwargs tuple": {"forward_kwargs": {"scales": (2.0,)}},
    "forward_kwargs nested": {
        "forward_kwargs": {"scales": (1.5,), "deep": {"a": [(1, 2), [3, (4,)]], "b": None}}
    },
    "forward_kwargs like a tag": {"forward_kwargs": {"tuple": [1, 2]}},
    "forward_kwargs like a dict tag": {"forward_kwargs": {"dict": {"tuple": (1,)}}},
    "forward_kwargs numpy scalars": {"forward_kwargs": {"n": np.int32(2), "w": np.float32(0.5)}},
    "forward_kwargs NaN": {"forward_kwargs": {"nan": float("nan"), "inf": -math.inf}},
    "feature_axis int": {"feature_axis": -1},
    "feature_axis numpy": {"feature_axis": np.int64(-1)},
    "feature_axis dict": {"feature_axis": {"mlp.fc2": -1, "mlp.fc3": None}},
    "pca": {"basis": "pca", "output_basis": "pca"},
    "n_components int": {"n_components": 3},
    "n_components numpy int": {"n_components": np.int64(3)},
    "n_components float": {"n_components": 0.9},
    "n_components numpy float": {"n_components": np.float64(0.9)},
    "threshold": {"truncation_threshold": 0.0},
    "threshold numpy": {"truncation_threshold": np.float32(0.01)},
    "center numpy bool": {"center": np.bool_(False)},
    "whiten": {"whiten": True},
    "integration": {"integration": "trapezoidal", "n_intervals": np.int64(2)},
    "batch_size": {"batch_size": 16},
    "batch_size numpy": {"batch_size": np.int64(16)},
    "device": {"device": torch.device("cpu")},
    "device str": {"device": "cpu"},
    "dtype torch": {"dtype": torch.float32},
    "dtype str": {"dtype": "float32"},
    "sources": {"n_stochastic_sources": np.int64(2)},
    "sources auto": {"n_stochastic_sources": "auto"},
    "jacobian": {"jacobian": "autograd"},
    "graph numpy bool": {"compute_graph": np.bool_(True)},
    "random_state numpy": {"random_state": np.int64(3)},
    "verbose numpy": {"verbose": np.bool_(False)},
}


def _loads_as_saved(loaded, value):
    """``loaded`` is ``value`` itself: of its type (a numpy scalar: of the Python type it
    equals) and equal (NaN as NaN), through tuples, lists and dicts."""
    if isinstance(value, np.generic):
        assert type(loaded) is type(value.item()) and loaded == value.item()
    elif isinstance(value, (tuple, list)):
        assert type(loaded) is type(value) and len(loaded) == len(value)
        for a, b in zip(loaded, value):
            _loads_as_saved(a, b)
    elif isinstance(value, dict):
        assert type(loaded) is dict and list(loaded) == list(value)
        for key in value:
            _loads_as_saved(loaded[key], value[key])
    elif isinstance(value, float) and math.isnan(value):
        assert type(loaded) is float and math.isnan(loaded)
    else:
        assert type(loaded) is type(value) and loaded == value


@pytest.mark.parametrize("params", PARAMETERS.values(), ids=PARAMETERS)
def test_every_parameter_fit_takes_loads_as_it_was(X, tmp_path, params):
    params = {"downstream_layers": ["mlp.fc3"], **params}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        lib = LIBTransformer(KeywordMLP(), "mlp.fc2", **params).fit(X)
    back = _round_trip(lib, KeywordMLP(), tmp_path / "fit.npz")
    saved, loaded = lib.get_params(), back.get_params()
    for name, value in saved.items():
        if name != "model":
            _loads_as_saved(loaded[name], value)
    np.testing.assert_array_equal(back.transform(X), lib.transform(X))


NOT_SAVED = {
    "a callable output": ({"output": lambda out: out}, r"output=<function"),
    "a RandomState": ({"random_state": np.random.RandomState(0)}, "random_state=RandomState"),
    "a tensor": ({"forward_kwargs": {"t": torch.ones(2)}}, r"forward_kwargs=\{'t': tensor"),
    "an array": ({"forward_kwargs": {"a": np.ones(2)}}, r"forward_kwargs=\{'a': array"),
    "a set": ({"forward_kwargs": {"s": {1, 2}}}, r"forward_kwargs=\{'s': \{1, 2\}\}"),
    "bytes": ({"forward_kwargs": {"b": b"x"}}, r"forward_kwargs=\{'b': b'x'\}"),
    "an int subclass": ({"forward_kwargs": {"i": _Ints(3)}}, "it would load as {'i': 3}"),
}


@pytest.mark.parametrize("params, match", NOT_SAVED.values(), ids=NOT_SAVED)
def test_a_parameter_that_would_not_load_as_it_is_is_refused_before_writing(
    X, tmp_path, params, match
):
    lib = LIBTransformer(KeywordMLP(), "mlp.fc2", **params).fit(X)
    with pytest.raises(TypeError, match=f"LIBTransformer.save cannot store .*{match}"):
        lib.save(tmp_path / "fit.npz")
    assert os.listdir(tmp_path) == []


# -- unknown dtype names --------------------------------------------------------------------
@pytest.mark.parametrize(
    "edit, match",
    [
        (_meta("fitted", "input_dtypes", value="qint8"), "input dtype 'qint8' is neither"),
        (_meta("fitted", "input_dtypes", value="bits8"), "input dtype 'bits8' is neither"),
        (_meta("fitted", "input_dtypes", value="complex64"), "'complex64' is neither"),
        (_meta("params", "dtype", value={"torch.dtype": "float99"}), "'float99' is not the"),
        (_meta("params", "dtype", value={"torch.dtype": "load"}), "'load' is not the name"),
        (_meta("params", "device", value={"torch.device": "gpu7"}), "'gpu7' is not a torch"),
    ],
    ids=["quantized", "bits", "complex", "unknown", "not a dtype", "device"],
)
def test_an_unknown_dtype_name_is_a_clear_error(saved_fit, tmp_path, edit, match):
    path = _lie(saved_fit, tmp_path, edit)
    with pytest.raises(ValueError, match=f"is not a saved LIBTransformer: .*{match}"):
        LIBTransformer.load(path, tanh_mlp())


def _with_header(path, member, descr):
    """Rewrite ``member`` of the archive at ``path`` with a header of dtype ``descr``."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    header = io.BytesIO()
    shape = np.load(io.BytesIO(members[member])).shape
    np.lib.format.write_array_header_1_0(
        header, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    members[member] = header.getvalue() + b"\0" * 8 * math.prod(shape)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


@pytest.mark.parametrize("descr", ["<x8", "<f99", "float999", "|V8"])
def test_an_array_of_an_unknown_dtype_is_a_clear_error(saved_fit, X, tmp_path, descr):
    path = _lie(saved_fit, tmp_path, lambda members: None)
    _with_header(path, "basis0_mean.npy", descr)
    with pytest.raises(ValueError, match="is not a saved LIBTransformer: .*(descr|dtype)"):
        LIBTransformer.load(path, tanh_mlp())
    graph = LIBTransformer(tanh_mlp(), "fc2").fit(X).interaction_graph(X)
    graph.save(tmp_path / "graph.npz")
    _with_header(tmp_path / "graph.npz", "lambdas_0.npy", descr)
    with pytest.raises(ValueError, match="is not a saved InteractionGraph: .*(descr|dtype)"):
        InteractionGraph.load(tmp_path / "graph.npz")


# -- zip bombs ------------------------------------------------------------------------------
#: What a bomb decompresses to; a loader that reads it holds at least this much.
BOMB = 128 << 20
#: What a refusal may hold at most: the files' legitimate contents are kilobytes, and
#: the reader decompresses a mebibyte at a time.
MOST = 8 << 20


def _header(descr, shape):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def _bomb(path, source, name, head, zeros):
    """Copy the archive ``source`` to ``path`` with member ``name`` as ``head`` followed by
    ``zeros`` zero bytes, compressed (a few hundred kilobytes for ``BOMB``)."""
    with zipfile.ZipFile(source) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    members.pop(name, None)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member, data in members.items():
            archive.writestr(member, data)
        with archive.open(name, "w", force_zip64=True) as member:
            member.write(head)
            chunk = bytes(1 << 22)
            for start in range(0, zeros, len(chunk)):
                member.write(chunk[: zeros - start])
    assert os.path.getsize(path) < BOMB // 200
    return path


def _peak_of_refusal(load, path):
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="is not a saved"):
            load(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def fit_file(X, tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "fit.npz"
    LIBTransformer(tanh_mlp(), "fc2").fit(X).save(path)
    return path


@pytest.fixture(scope="module")
def graph_file(X, tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "graph.npz"
    LIBTransformer(tanh_mlp(), "fc2").fit(X).interaction_graph(X).save(path)
    return path


FIT_BOMBS = {
    # meta's header declares a string of BOMB bytes, all there.
    "meta": ("meta.npy", lambda: _header(f"<U{BOMB // 4}", ())),
    # An array the meta says is 8 wide claims BOMB bytes, all there.
    "an array": ("basis0_mean.npy", lambda: _header("<f8", (BOMB // 8,))),
    # An array of the right shape, with BOMB more bytes after its data.
    "data past the header": ("basis0_mean.npy", lambda: _header("<f8", (8,)) + bytes(64)),
    # A member no meta names.
    "a member not in meta": ("extra.npy", lambda: _header("<f8", (BOMB // 8,))),
}


@pytest.mark.parametrize("name, head", FIT_BOMBS.values(), ids=FIT_BOMBS)
def test_a_zip_bomb_fit_is_refused_holding_little(fit_file, tmp_path, name, head):
    path = _bomb(tmp_path / "bomb.npz", fit_file, name, head(), BOMB)
    model = tanh_mlp()
    peak = _peak_of_refusal(lambda p: LIBTransformer.load(p, model), path)
    assert peak < MOST, f"{peak / 2**20:.0f} MiB held to refuse a {os.path.getsize(path)} B file"


GRAPH_BOMBS = {
    "meta": ("meta.npy", lambda: _header(f"<U{BOMB // 4}", ())),
    # A node's Lambda claims BOMB bytes, all there, in a file without the edges it needs.
    "a graph without its edges": ("lambdas_0.npy", lambda: _header("<f8", (BOMB // 8,))),
    "data past the header": ("lambdas_1.npy", lambda: _header("<f8", (3,)) + bytes(24)),
}


@pytest.mark.parametrize("name, head", GRAPH_BOMBS.values(), ids=GRAPH_BOMBS)
def test_a_zip_bomb_graph_is_refused_holding_little(graph_file, tmp_path, name, head):
    path = tmp_path / "bomb.npz"
    if name == "lambdas_0.npy":
        source = tmp_path / "no edges.npz"
        with zipfile.ZipFile(graph_file) as archive, zipfile.ZipFile(source, "w") as out:
            for info in archive.infolist():
                if info.filename != "edges_0.npy":
                    out.writestr(info.filename, archive.read(info))
        graph_file = source
    _bomb(path, graph_file, name, head(), BOMB)
    peak = _peak_of_refusal(InteractionGraph.load, path)
    assert peak < MOST, f"{peak / 2**20:.0f} MiB held to refuse a {os.path.getsize(path)} B file"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
@pytest.mark.parametrize(
    "load", [lambda p: LIBTransformer.load(p, tanh_mlp()), InteractionGraph.load]
)
def test_a_fifo_or_a_folder_is_refused_without_blocking(tmp_path, load):
    """Issue 24's review: a FIFO that nothing writes to blocked both loaders forever."""
    import signal

    fifo = tmp_path / "fit.npz"
    os.mkfifo(fifo)
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the load blocked"))
    signal.alarm(10)
    try:
        with pytest.raises(ValueError, match="not a regular file"):
            load(fifo)
        with pytest.raises(ValueError, match="not a regular file"):
            load(tmp_path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_big_endian_file_loads(X, tmp_path):
    """Issue 24's review: arrays stored big-endian (valid .npy) reached torch, which
    takes no other byte order than the machine's."""
    lib = LIBTransformer(tanh_mlp(), "fc2", compute_graph=True).fit(X)
    path = tmp_path / "fit.npz"
    lib.save(path)
    with np.load(path, allow_pickle=False) as data:
        members = {key: data[key] for key in data.files}
    swapped = {
        key: value if key == "meta" else value.astype(value.dtype.newbyteorder(">"))
        for key, value in members.items()
    }
    np.savez_compressed(path, **swapped)
    back = LIBTransformer.load(path, tanh_mlp())
    np.testing.assert_array_equal(back.transform(X), lib.transform(X))
