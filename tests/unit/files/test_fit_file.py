"""Saved fits (``_files.fit_file``): a SavedFit written and read back, and the model checked."""

import dataclasses
import json
import os
import zipfile

import numpy as np
import pytest
import torch
from torch import nn
from toy_models import tanh_mlp

from sklearn_lib import LIBTransformer
from sklearn_lib._files import fit_file, npz
from sklearn_lib._files.basis_file import FIELDS
from sklearn_lib._fitting.basis import NodeBasis
from sklearn_lib._fitting.stochastic import SourceRounds
from sklearn_lib._model.session import ModelSession

OWNER = "LIBTransformer"


@pytest.fixture(scope="module")
def saved():
    """The SavedFit of a small fit: fc2 -> fc3 -> output, with its interaction graph."""
    X = np.random.default_rng(0).normal(size=(60, 4))
    lib = LIBTransformer(
        tanh_mlp(), "fc2", downstream_layers=("fc3",), compute_graph=True, n_components=3
    ).fit(X)
    return lib._saved_fit()


def _round_trip(tmp_path, saved):
    path = str(tmp_path / "fit.lib")
    fit_file.write(path, saved, OWNER)
    return fit_file.read(path, OWNER)


def _assert_same(read, saved):
    for field in dataclasses.fields(fit_file.SavedFit):
        if field.name not in ("bases", "graph"):
            assert getattr(read, field.name) == getattr(saved, field.name), field.name
    assert list(read.bases) == list(saved.bases)
    for name, basis in saved.bases.items():
        got = read.bases[name]
        assert (got.shape, got.n_components, got.kind) == (
            basis.shape,
            basis.n_components,
            basis.kind,
        )
        for field in FIELDS:
            np.testing.assert_array_equal(getattr(got, field), getattr(basis, field))
    assert (read.graph is None) == (saved.graph is None)
    if saved.graph is not None:
        nodes, lambdas, edges, info = saved.graph
        assert read.graph[0] == nodes and read.graph[3] == info
        assert list(read.graph[2]) == list(edges)
        for node in nodes:
            np.testing.assert_array_equal(read.graph[1][node], lambdas[node])
        for key in edges:
            np.testing.assert_array_equal(read.graph[2][key], edges[key])


def test_a_fit_round_trips(tmp_path, saved):
    assert list(saved.bases) == ["fc2", "fc3", "output"] and saved.graph is not None
    read = _round_trip(tmp_path, saved)
    _assert_same(read, saved)
    assert read.params["downstream_layers"] == ("fc3",)  # a tuple again
    assert read.fingerprint == saved.fingerprint and "fc2.weight" in read.fingerprint
    assert os.listdir(tmp_path) == ["fit.lib"]


def test_the_file_is_float_arrays_and_meta(tmp_path, saved):
    path = tmp_path / "fit.npz"
    fit_file.write(path, saved, OWNER)
    expected = {"meta.npy"}
    expected |= {f"basis{i}_{field}.npy" for i in range(3) for field in FIELDS}
    expected |= {f"graph_lambdas_{i}.npy" for i in range(3)}
    expected |= {f"graph_edges_{i}.npy" for i in range(2)}
    with zipfile.ZipFile(path) as archive:
        assert set(archive.namelist()) == expected
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
    assert meta["format"] == "sklearn-lib LIBTransformer" and meta["version"] == 1
    assert [entry["name"] for entry in meta["bases"]] == ["fc2", "fc3", "output"]


def test_other_fields_round_trip(tmp_path, saved):
    other = dataclasses.replace(
        saved,
        params={**saved.params, "dtype": torch.float32, "device": torch.device("cpu")},
        input_shape={"input_ids": (5,), "attention_mask": (5,), "label": ()},
        input_dtypes={"input_ids": "int64", "attention_mask": "int64", "label": "float"},
        n_stochastic_sources={"fc2": None, "fc3": 16},
        rounds={"fc3": SourceRounds(16, 2, 0.01, 0.99, True)},
        inputs={"input_fields_": ["input_ids", "attention_mask", "label"]},
        graph=None,
        output_config={"transform": "pandas"},
    )
    read = _round_trip(tmp_path, other)
    # A torch dtype and device come back as they were, not as their names.
    assert read.params["dtype"] is torch.float32 and read.params["device"] == torch.device("cpu")
    _assert_same(read, other)


def test_named_input_features_round_trip(tmp_path, saved):
    names = np.array(["a", "b", "c", "d"], dtype=object)
    other = dataclasses.replace(saved, inputs={"n_features_in_": 4, "feature_names_in_": names})
    read = _round_trip(tmp_path, other)
    _assert_same(
        read, dataclasses.replace(other, inputs={**other.inputs, "feature_names_in_": list(names)})
    )


def test_a_parameter_json_cannot_hold_is_not_saved(tmp_path, saved):
    bad = dataclasses.replace(saved, params={**saved.params, "output": len})
    with pytest.raises(TypeError, match=r"Owner.save cannot store output=<built-in function len>"):
        fit_file.write(tmp_path / "fit", bad, "Owner")
    assert os.listdir(tmp_path) == []


def test_input_dtypes():
    assert fit_file.input_dtypes(torch.zeros(2, dtype=torch.float16)) == "float"
    assert fit_file.input_dtypes(torch.zeros(2, dtype=torch.int32)) == "int32"
    batch = {"ids": torch.zeros(2, dtype=torch.int64), "x": torch.zeros(2), "b": torch.ones(2) > 0}
    assert fit_file.input_dtypes(batch) == {"ids": "int64", "x": "float", "b": "bool"}


# -- refused files --------------------------------------------------------------------------
def _tampered(tmp_path, saved, meta=None, arrays=None):
    """A saved fit with its meta (a dict) and arrays edited by the given functions."""
    path = tmp_path / "fit"
    fit_file.write(path, saved, OWNER)
    with np.load(path, allow_pickle=False) as data:
        contents = dict(data)
    fields = json.loads(str(contents.pop("meta")))
    if meta:
        meta(fields)
    if arrays:
        arrays(contents)
    np.savez(path, meta=np.array(json.dumps(fields)), **contents)
    os.replace(f"{path}.npz", path)
    return str(path)


def _set(*keys, value):
    def edit(meta):
        for key in keys[:-1]:
            meta = meta[key]
        meta[keys[-1]] = value

    return edit


def _delete(*keys):
    def edit(meta):
        for key in keys[:-1]:
            meta = meta[key]
        del meta[keys[-1]]

    return edit


REFUSED = {
    "another format": (_set("format", value="x"), None, "does not name the format"),
    "version 2": (_set("version", value=2), None, "format version 2; this reads 1"),
    "params a list": (_set("params", value=[]), None, "'params' is missing or not a JSON dict"),
    "no bases": (_delete("bases"), None, "'bases' is missing or not a JSON list"),
    "a basis of another kind": (_set("bases", 0, "kind", value="x"), None, "known kind"),
    "no batch size": (_delete("fitted", "batch_size_"), None, "batch_size_"),
    "batch size 0": (_set("fitted", "batch_size_", value=0), None, "batch_size_ must be"),
    "output shape 0": (_set("fitted", "output_shape_", value=[0]), None, "output_shape_ must"),
    "n_features_in_ -1": (_set("fitted", "n_features_in_", value=-1), None, "n_features_in_"),
    "rounds malformed": (
        _set("fitted", "stochastic_rounds_", value={"fc3": {"x": 1}}),
        None,
        "unexpected keyword argument",
    ),
    "graph a list": (_set("graph", value=[]), None, "'meta' graph must hold 'nodes'"),
    "graph arrays missing": (
        None,
        lambda arrays: arrays.pop("graph_edges_1"),
        r"missing \['edges_1'\]",
    ),
    "an extra array": (None, lambda a: a.update(x=np.ones(1)), r"unexpected arrays \['x'\]"),
    "version true": (_set("version", value=True), None, "format version True"),
    "input shape a string": (_set("fitted", "input_shape_", value="abc"), None, "input_shape_"),
    "input shape of floats": (_set("fitted", "input_shape_", value=[4.0]), None, "input_shape_"),
    "input shape negative": (_set("fitted", "input_shape_", value=[-4]), None, "input_shape_"),
    "input dtype unknown": (_set("fitted", "input_dtypes", value="nope"), None, "'nope' is nei"),
    "input dtype floating": (_set("fitted", "input_dtypes", value="float32"), None, "saved as"),
    "output config a list": (_set("output_config", value=["pandas"]), None, "output_config"),
    "output config unknown": (
        _set("output_config", value={"transform": "xyz"}),
        None,
        "output_config transform must be one of",
    ),
    "input fields an int": (_set("fitted", "input_fields_", value=5), None, "input_fields_ must"),
    "graph nodes not names": (_set("graph", "nodes", value=[1, 2, 3]), None, "list of str"),
    "graph nodes repeated": (
        _set("graph", "nodes", value=["fc1", "fc1", "output"]),
        None,
        "nodes must be distinct",
    ),
    "an integer array": (
        None,
        lambda a: a.update(basis0_mean=np.zeros(8, dtype=int)),
        "'basis0_mean' has dtype int64, not floating point",
    ),
}


@pytest.mark.parametrize("meta, arrays, match", REFUSED.values(), ids=REFUSED.keys())
def test_tampered_files_are_refused_naming_the_file(tmp_path, saved, meta, arrays, match):
    path = _tampered(tmp_path, saved, meta, arrays)
    with pytest.raises(ValueError, match=f"{path!r} is not a saved {OWNER}: .*{match}"):
        fit_file.read(path, OWNER)


def test_a_file_without_meta_is_refused(tmp_path):
    path = str(tmp_path / "fit")
    with open(path, "wb") as file:
        np.savez(file, basis0_mean=np.zeros(2))
    with pytest.raises(ValueError, match=f"{path!r} is not a saved Owner: no 'meta' array"):
        fit_file.read(path, "Owner")


def test_an_empty_basis_shape_is_refused(tmp_path, saved):
    path = _tampered(tmp_path, saved, _set("bases", 0, "shape", value=[]))
    with pytest.raises(ValueError, match="is not a saved .*has an empty shape"):
        fit_file.read(path, OWNER)


# -- parameters -----------------------------------------------------------------------------
ROUND_TRIPS = {
    "a tuple": ("a", 1),
    "nested tuples": {"k": [(1, (2.5, None)), {"t": ()}]},
    "a dict like a tag": {"tuple": [1, 2]},
    "a dict like the dict tag": {"dict": {"tuple": (1,)}},
    "a device": torch.device("cuda", 1),
    "a dtype": torch.bfloat16,
    "NaN and infinities": [float("nan"), float("inf"), -float("inf"), -0.0],
    "a big int": 2**80,
    "a str": "x\u00e9\ud800",
}


@pytest.mark.parametrize("value", ROUND_TRIPS.values(), ids=ROUND_TRIPS)
def test_values_round_trip_through_json_with_their_types(value):
    back = fit_file.decode(json.loads(json.dumps(fit_file.encode(value))))
    assert fit_file._same(back, value)
    assert repr(back) == repr(value) or isinstance(value, list)  # NaN != NaN
    assert type(back) is type(value)


@pytest.mark.parametrize(
    "value, python",
    [(np.int64(3), 3), (np.float32(0.25), 0.25), (np.bool_(True), True), (np.str_("a"), "a")],
)
def test_numpy_scalars_are_saved_as_the_python_values_they_equal(value, python):
    encoded = fit_file.encode({"v": (value,)})
    assert encoded == {"v": {"tuple": [python]}} and type(encoded["v"]["tuple"][0]) is type(python)
    assert fit_file._same(python, value) and not fit_file._same(python, np.int8(7))


@pytest.mark.parametrize(
    "value, match",
    [
        ({"tuple": 3}, "a 'tuple' of a int"),
        ({"dict": [1]}, "a 'dict' of a list"),
        ({"torch.dtype": "float99"}, "dtype 'float99' is not the name of a torch dtype"),
        ({"torch.dtype": "Tensor"}, "dtype 'Tensor' is not the name of a torch dtype"),
        ({"torch.dtype": "float"}, "dtype 'float' is not the name"),  # an alias, never written
        ({"torch.device": "gpu"}, "device 'gpu' is not a torch device"),
        ({"torch.device": 0}, "a 'torch.device' of a int"),
    ],
)
def test_a_malformed_tag_is_refused(value, match):
    with pytest.raises(ValueError, match=f"saved parameter .*{match}"):
        fit_file.decode(value)


@pytest.mark.parametrize(
    "value, match",
    [
        (np.random.RandomState(0), "RandomState"),
        ({"a": np.ones(2)}, "array"),
        ({1: "a"}, r"it would load as \{'1': 'a'\}"),
        ({"s": {1}}, r"\{'s': \{1\}\}"),
        (np.float16(0.1) + 1j, "complex"),
    ],
)
def test_a_value_that_would_not_load_as_it_is_is_not_saved(tmp_path, saved, value, match):
    bad = dataclasses.replace(saved, params={**saved.params, "forward_kwargs": value})
    with pytest.raises(TypeError, match=f"Owner.save cannot store forward_kwargs=.*{match}"):
        fit_file.write(tmp_path / "fit", bad, "Owner")
    assert os.listdir(tmp_path) == []


def test_a_meta_longer_than_a_file_may_hold_is_not_saved(tmp_path, saved, monkeypatch):
    monkeypatch.setattr(npz, "MAX_META_CHARS", 1000)
    with pytest.raises(ValueError, match="Owner.save cannot store this fit, .* more than the 1000"):
        fit_file.write(tmp_path / "fit", saved, "Owner")
    assert os.listdir(tmp_path) == []


# -- the parts together ---------------------------------------------------------------------
def _without_graph(saved):
    return dataclasses.replace(saved, graph=None)


INCONSISTENT = {
    "n_features_in_ of another width": (
        lambda s: dataclasses.replace(s, inputs={"n_features_in_": 5}),
        r"one array of per-sample shape \(4,\), so n_features_in_ must be its width \(not 5\)",
    ),
    "no n_features_in_": (
        lambda s: dataclasses.replace(s, inputs={}),
        r"n_features_in_ must be its width \(not None\)",
    ),
    "feature names of another count": (
        lambda s: dataclasses.replace(s, inputs={"n_features_in_": 4, "feature_names_in_": ["a"]}),
        r"feature_names_in_ has 1 names, not n_features_in_=4",
    ),
    "input fields with one array": (
        lambda s: dataclasses.replace(s, inputs={"n_features_in_": 4, "input_fields_": ["x"]}),
        "input_fields_ cannot be set",
    ),
    "n_features_in_ with fields": (
        lambda s: dataclasses.replace(
            s,
            input_shape={"x": (4,)},
            input_dtypes={"x": "float"},
            inputs={"input_fields_": ["x"], "n_features_in_": 4},
        ),
        r"\['n_features_in_'\] cannot be set",
    ),
    "fields in another order": (
        lambda s: dataclasses.replace(
            s,
            input_shape={"x": (4,), "y": (1,)},
            input_dtypes={"x": "float", "y": "float"},
            inputs={"input_fields_": ["y", "x"]},
        ),
        r"input_fields_ must name them \(not \['y', 'x'\]\)",
    ),
    "another output shape": (
        lambda s: dataclasses.replace(s, output_shape=(2,)),
        r"output_shape_ \(2,\) is not the shape \(3,\) of the output's basis",
    ),
    "sources of a layer too few": (
        lambda s: dataclasses.replace(s, n_stochastic_sources={"fc2": None}),
        "must give each node layer of",
    ),
    "sources not a count": (
        lambda s: dataclasses.replace(s, n_stochastic_sources={"fc2": 0, "fc3": None}),
        "None or a positive int",
    ),
    "rounds of another layer": (
        lambda s: dataclasses.replace(s, rounds={"fc9": SourceRounds(16, 2, 0.01, 0.99, True)}),
        r"stochastic_rounds_ of \['fc9'\]",
    ),
    "layers the parameters do not name": (
        lambda s: dataclasses.replace(s, params={**s.params, "downstream_layers": ()}),
        r"the bases are of \['fc2', 'fc3', 'output'\], but the parameters name",
    ),
    "another kind": (
        lambda s: dataclasses.replace(s, params={**s.params, "output_basis": "pca"}),
        "'output' is of kind 'identity', not output_basis='pca'",
    ),
    "another n_components": (
        lambda s: _without_graph(dataclasses.replace(s, params={**s.params, "n_components": 2})),
        r"'fc2' keeps 3 features, but n_components=2 and truncation_threshold=1e-10 keep 2",
    ),
    "another threshold": (
        lambda s: _without_graph(
            dataclasses.replace(s, params={**s.params, "truncation_threshold": 0.5})
        ),
        r"truncation_threshold=0.5 keep",
    ),
    "a mean without centring": (
        lambda s: dataclasses.replace(s, params={**s.params, "center": False}),
        "'fc2' has a mean, but center=False fits none",
    ),
    "a graph of other Lambda": (
        lambda s: dataclasses.replace(
            s, graph=(s.graph[0], {**s.graph[1], "fc3": s.graph[1]["fc3"] * 2}, *s.graph[2:])
        ),
        "the graph's Lambda of 'fc3' are not the kept Lambda of its basis",
    ),
}


@pytest.mark.parametrize("change, match", INCONSISTENT.values(), ids=INCONSISTENT)
def test_parts_that_disagree_are_refused(tmp_path, saved, change, match):
    bad = change(saved)
    with pytest.raises(ValueError, match=match):
        fit_file.check_fit(bad)
    # Saving says so before writing: the file would not load.
    with pytest.raises(ValueError, match=f"Owner.save cannot store this fit, .*{match}"):
        fit_file.write(tmp_path / "fit", bad, "Owner")
    assert os.listdir(tmp_path) == []


def test_the_fit_and_its_variants_that_agree_pass(saved):
    fit_file.check_fit(saved)
    fit_file.check_fit(_without_graph(saved))
    # Parameters of the wrong type are left to the estimator's own checks.
    fit_file.check_fit(dataclasses.replace(saved, params={**saved.params, "n_components": "x"}))


def test_a_kept_count_that_disagrees_is_refused_on_reading(tmp_path, saved):
    path = _tampered(tmp_path, _without_graph(saved), _set("bases", 0, "n_components", value=2))
    with pytest.raises(ValueError, match="'fc2' keeps 2 features, but n_components=3"):
        fit_file.read(path, OWNER)


@pytest.mark.parametrize("kind", fit_file.INPUT_DTYPES)
def test_the_input_dtypes_a_fit_saves_read_back(tmp_path, saved, kind):
    assert _round_trip(tmp_path, dataclasses.replace(saved, input_dtypes=kind)).input_dtypes == kind


@pytest.mark.parametrize("kind", ["qint8", "quint4x2", "bits8", "complex64", "long", "cfloat", 3])
def test_other_input_dtypes_are_refused_clearly(tmp_path, saved, kind):
    path = _tampered(tmp_path, saved, _set("fitted", "input_dtypes", value=kind))
    with pytest.raises(ValueError, match=f"input dtype {kind!r} is neither 'float' nor one of"):
        fit_file.read(path, OWNER)


# -- arrays checked before they are read ----------------------------------------------------
def _garbage_members(tmp_path, saved, drop=(), extra=()):
    """A file of ``saved``'s meta whose arrays are all garbage (so that none may be read),
    less ``drop`` and with ``extra``."""
    path = tmp_path / "fit"
    fit_file.write(path, saved, OWNER)
    with zipfile.ZipFile(path) as archive:
        names = [name for name in archive.namelist() if name not in drop]
        meta = archive.read("meta.npy")
    with zipfile.ZipFile(path, "w") as archive:
        for name in [*names, *extra]:
            archive.writestr(name, meta if name == "meta.npy" else b"\x93NUMPY garbage")
    return str(path)


@pytest.mark.parametrize(
    "drop, extra, match",
    [
        (["basis1_pinv.npy"], [], "arrays of basis 'fc3' are missing"),
        (["graph_edges_0.npy"], [], r"missing \['edges_0'\]"),
        ([], ["graph_edges_7.npy"], r"unexpected \['edges_7'\]"),
        ([], ["x.npy"], r"unexpected arrays \['x'\]"),
    ],
)
def test_members_are_checked_before_any_is_read(tmp_path, saved, drop, extra, match):
    path = _garbage_members(tmp_path, saved, drop, extra)
    with pytest.raises(ValueError, match=f"is not a saved {OWNER}: .*{match}"):
        fit_file.read(path, OWNER)


def test_graph_lambda_of_another_length_are_refused_from_the_header(tmp_path, saved):
    # The graph's Lambda are the basis' kept ones: fc2 keeps 3.
    path = _tampered(tmp_path, saved, arrays=lambda a: a.update(graph_lambdas_0=np.ones(10**5)))
    with pytest.raises(ValueError, match=r"'lambdas_0' has shape \(100000,\), not \(3,\)"):
        fit_file.read(path, OWNER)


# -- the model ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_a_model_of_the_saved_shapes_fits(saved, seed):
    # Other weights only warn later (the fingerprint), they fit the bases.
    assert fit_file.check_model(ModelSession(tanh_mlp(seed=seed)), saved, "f") is None


@pytest.mark.parametrize(
    "model, match",
    [
        (
            tanh_mlp(hidden=9),
            r"layer 'fc2' has activations of shape \(9,\), the saved basis \(8,\)",
        ),
        (tanh_mlp(d_out=5), r"its output has shape \(5,\), the saved one \(3,\)"),
        (nn.Sequential(nn.Linear(4, 8), nn.Tanh()).double(), "fc2"),
    ],
)
def test_a_model_of_other_shapes_is_refused(saved, model, match):
    with pytest.raises(
        ValueError, match=f"The model does not fit the bases saved in 'f': .*{match}"
    ):
        fit_file.check_model(ModelSession(model), saved, "f")


class DictModel(nn.Module):
    """Token ids and a mask, recording what it is called with."""

    calls = []

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, input_ids, attention_mask):
        DictModel.calls.append((input_ids.clone(), attention_mask.clone()))
        return self.head(self.embed(input_ids) * attention_mask[..., None])


def _basis(name, shape):
    d = shape[-1]
    eye = np.eye(d)
    return NodeBasis(name, shape, np.zeros(d), eye, eye, np.ones(d), d, kind="identity")


def test_the_probe_is_zeros_of_the_saved_inputs_and_a_mask_of_ones(saved):
    dict_fit = dataclasses.replace(
        saved,
        bases={"head": _basis("head", (3, 4)), "output": _basis("output", (3, 2))},
        input_shape={"input_ids": (3,), "attention_mask": (3,)},
        input_dtypes={"input_ids": "int64", "attention_mask": "int32"},
        output_shape=(3, 2),
    )
    DictModel.calls = []
    fit_file.check_model(ModelSession(DictModel()), dict_fit, "f")
    first_ids, first_mask = DictModel.calls[0]
    assert first_ids.shape == first_mask.shape == (2, 3)  # two samples
    for ids, mask in DictModel.calls:  # and the checks' runs on parts of the probe
        assert ids.dtype == torch.int64 and mask.dtype == torch.int32
        assert ids.shape[1:] == mask.shape[1:] == (3,)
        assert not ids.any() and mask.eq(1).all()
    wrong = dataclasses.replace(dict_fit, output_shape=(3, 7))
    with pytest.raises(ValueError, match=r"its output has shape \(3, 2\), the saved one \(3, 7\)"):
        fit_file.check_model(ModelSession(DictModel()), wrong, "f")
