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
from sklearn_lib._files import fit_file
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
    assert read.fingerprint[0] is torch.float64
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
        inputs={"n_features_in_": 4, "feature_names_in_": np.array(["a", "b"], dtype=object)},
        graph=None,
        output_config={"transform": "pandas"},
    )
    read = _round_trip(tmp_path, other)
    assert read.params["dtype"] == "float32" and read.params["device"] == "cpu"
    expected = dataclasses.replace(
        other,
        params={**other.params, "dtype": "float32", "device": "cpu"},
        inputs={"n_features_in_": 4, "feature_names_in_": ["a", "b"]},
    )
    _assert_same(read, expected)


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
