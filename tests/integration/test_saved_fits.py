"""LIBTransformer.save / load (issue 13, part 1): the bases without the model, never unpickled."""

import os
import pickle
import subprocess
import sys
import warnings
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from torch import nn
from toy_models import modadd_tokens, tanh_mlp, user_transformer

from sklearn_lib import LIBTransformer
from sklearn_lib.exceptions import StaleBasisWarning

LAYERS = ["blocks.0.attn", "blocks.0.mlp", "unembed"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def fitted():
    X = modadd_tokens(120)
    lib = LIBTransformer(
        user_transformer(),
        LAYERS[0],
        downstream_layers=tuple(LAYERS[1:]),
        compute_graph=True,
        n_components=5,
        random_state=3,
    ).fit(X)
    return lib, X


def test_a_fresh_process_gives_bit_identical_features(fitted, tmp_path):
    lib, X = fitted
    path = str(tmp_path / "lib.npz")
    lib.save(path)
    np.save(tmp_path / "X.npy", X.numpy())
    script = f"""
import sys, numpy as np
sys.path.insert(0, {os.path.join(ROOT, "tests")!r})
from toy_models import user_transformer
from sklearn_lib import LIBTransformer
lib = LIBTransformer.load({path!r}, user_transformer())
np.save({str(tmp_path / "Z.npy")!r}, lib.transform(np.load({str(tmp_path / "X.npy")!r})))
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)
    assert np.array_equal(np.load(tmp_path / "Z.npy"), lib.transform(X))


def test_everything_fitted_comes_back(fitted, tmp_path):
    lib, X = fitted
    path = tmp_path / "lib.npz"
    lib.save(path)
    back = LIBTransformer.load(path, user_transformer())
    params, saved = back.get_params(), lib.get_params()
    assert params.pop("model") is not saved.pop("model")
    assert params == saved and params["downstream_layers"] == tuple(LAYERS[1:])
    for name in ("lambdas_", "components_", "inverse_components_", "mean_"):
        assert np.array_equal(getattr(back, name), getattr(lib, name)), name
    for name in ("n_components_", "activation_shape_", "n_positions_", "output_shape_"):
        assert getattr(back, name) == getattr(lib, name), name
    for name in ("input_shape_", "n_features_in_", "batch_size_", "n_stochastic_sources_"):
        assert getattr(back, name) == getattr(lib, name), name
    assert list(back.bases_) == list(lib.bases_)
    for name, basis in lib.bases_.items():
        other = back.bases_[name]
        assert other.shape == basis.shape and other.n_components == basis.n_components
        assert np.array_equal(other.matrix, basis.matrix) and np.array_equal(other.pinv, basis.pinv)
    graph, saved_graph = back.interaction_graph_, lib.interaction_graph_
    assert graph.nodes == saved_graph.nodes and graph.info == saved_graph.info
    for key, edges in saved_graph.edges.items():
        assert np.array_equal(graph.edges[key], edges)
    # A loaded estimator is an estimator: it clones, scores and makes graphs.
    assert clone(back).get_params()["n_components"] == 5
    assert back.score(X) == pytest.approx(lib.score(X), rel=1e-12)


def test_the_file_is_the_size_of_the_bases_not_of_the_model(tmp_path):
    # A 2.2M-parameter model whose node layer is 8 wide.
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(4, 8),
            act1=nn.Tanh(),
            fc2=nn.Linear(8, 1500),
            act2=nn.Tanh(),
            fc3=nn.Linear(1500, 1500),
            act3=nn.Tanh(),
            out=nn.Linear(1500, 3),
        )
    ).double()
    X = np.random.default_rng(0).normal(size=(200, 4))
    lib = LIBTransformer(model, "fc2").fit(X)
    lib.save(tmp_path / "lib.npz")
    size = os.path.getsize(tmp_path / "lib.npz")
    assert size < 10_000
    assert size * 1000 < len(pickle.dumps(lib))


def test_keyword_inputs_and_their_mask(tmp_path):
    from test_model_inputs import MaskedMixer, _sequences

    X = _sequences(np.random.default_rng(0))
    lib = LIBTransformer(MaskedMixer().double(), "block").fit(X)
    lib.save(tmp_path / "lib.npz")
    back = LIBTransformer.load(tmp_path / "lib.npz", MaskedMixer().double())
    assert back.input_shape_ == lib.input_shape_ and back.input_fields_ == lib.input_fields_
    np.testing.assert_array_equal(back.transform(X), lib.transform(X))  # NaN where padded


def test_what_cannot_be_saved_is_refused(tmp_path):
    X = np.random.default_rng(0).normal(size=(50, 4))
    with pytest.raises(NotFittedError):
        LIBTransformer(tanh_mlp(), "fc2").save(tmp_path / "a.npz")
    lib = LIBTransformer(tanh_mlp(), "fc2", output=lambda out: out).fit(X)
    with pytest.raises(TypeError, match="cannot store output="):
        lib.save(tmp_path / "b.npz")
    assert not os.path.exists(tmp_path / "b.npz")


@pytest.fixture()
def saved_mlp(tmp_path):
    X = np.random.default_rng(0).normal(size=(60, 4))
    lib = LIBTransformer(tanh_mlp(), "fc1", downstream_layers=["fc2"]).fit(X)
    path = tmp_path / "lib.npz"
    lib.save(path)
    return lib, X, path


def test_a_model_that_does_not_fit_the_bases_is_refused(saved_mlp):
    _, _, path = saved_mlp
    with pytest.raises(ValueError, match=r"layer 'fc2' has activations of shape \(9,\)"):
        LIBTransformer.load(path, tanh_mlp(hidden=9))
    with pytest.raises(ValueError, match="output has shape"):
        LIBTransformer.load(path, tanh_mlp(d_out=4))
    no_fc2 = nn.Sequential(OrderedDict(fc1=nn.Linear(4, 8), act=nn.Tanh(), out=nn.Linear(8, 3)))
    with pytest.raises(ValueError, match="does not fit the bases.*'fc2'"):
        LIBTransformer.load(path, no_fc2.double())


def test_other_weights_load_and_then_warn(saved_mlp):
    lib, X, path = saved_mlp
    back = LIBTransformer.load(path, tanh_mlp(seed=1))
    with pytest.warns(StaleBasisWarning, match="changed since"):
        back.transform(X)
    same = LIBTransformer.load(path, tanh_mlp())
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleBasisWarning)
        np.testing.assert_array_equal(same.transform(X), lib.transform(X))


def _rewrite(path, change):
    """Rewrite the archive at ``path`` with ``change(name, data) -> data or None (drop)``."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            data = change(name, data)
            if data is not None:
                archive.writestr(name, data)


def _npy(array):
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "damage, match",
    [
        ("truncated", "not a saved LIBTransformer"),
        ("not a zip", "not a saved LIBTransformer"),
        ("meta not JSON", "not valid JSON"),
        ("another format", "does not name the format"),
        ("wrong shape", r"matrix has shape"),
        ("integer array", "not floating point"),
        ("pickled object", "not floating point"),
        ("missing array", "are missing"),
        ("extra array", "unexpected arrays"),
        ("non-finite", "non-finite"),
    ],
)
def test_damaged_files_are_refused(saved_mlp, damage, match):
    _, _, path = saved_mlp
    if damage == "truncated":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
    elif damage == "not a zip":
        open(path, "wb").write(b"hello")
    elif damage == "meta not JSON":
        _rewrite(path, lambda n, d: _npy(np.array("{no")) if n == "meta.npy" else d)
    elif damage == "another format":
        _rewrite(path, lambda n, d: _npy(np.array('{"format": "x"}')) if n == "meta.npy" else d)
    elif damage == "wrong shape":
        _rewrite(path, lambda n, d: _npy(np.zeros((3, 3))) if n == "basis0_matrix.npy" else d)
    elif damage == "integer array":
        _rewrite(
            path, lambda n, d: _npy(np.zeros(4, dtype=np.int64)) if n == "basis0_mean.npy" else d
        )
    elif damage == "pickled object":
        obj = np.array([{"a": 1}], dtype=object)
        _rewrite(path, lambda n, d: _pickled(obj) if n == "basis0_mean.npy" else d)
    elif damage == "missing array":
        _rewrite(path, lambda n, d: None if n == "basis1_pinv.npy" else d)
    elif damage == "extra array":
        _rewrite(path, lambda n, d: d)
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr("surprise.npy", _npy(np.zeros(2)))
    else:

        def nan(n, d):
            return _npy(np.full(4, np.nan)) if n == "basis0_mean.npy" else d

        _rewrite(path, nan)
    with pytest.raises(ValueError, match=match):
        LIBTransformer.load(path, tanh_mlp())


def _pickled(obj):
    import io

    buffer = io.BytesIO()
    np.save(buffer, obj, allow_pickle=True)
    return buffer.getvalue()


def test_a_path_that_is_not_there_keeps_its_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        LIBTransformer.load(tmp_path / "nothing.npz", tanh_mlp())


def _edit_meta(path, edit):
    """Rewrite the saved JSON with ``edit(meta)`` applied, as a tamperer would."""
    import json

    def change(name, data):
        if name != "meta.npy":
            return data
        import io

        meta = json.loads(str(np.load(io.BytesIO(data))[()]))
        edit(meta)
        return _npy(np.array(json.dumps(meta)))

    _rewrite(path, change)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m["params"].update(batch_size="lots"), "batch_size"),
        (lambda m: m["params"].update(truncation_threshold=-1.0), "truncation_threshold"),
        (lambda m: m["params"].update(downstream_layers=["fc1"]), r"parameters name"),
        (lambda m: m["params"].update(layer="fc2"), r"parameters name"),
        (lambda m: m["fitted"].update(batch_size_=-3), "batch_size_"),
        (lambda m: m["fitted"].update(n_features_in_=0), "n_features_in_"),
    ],
    ids=["batch_size", "threshold", "downstream", "layer", "batch_size_", "n_features_in_"],
)
def test_tampered_parameters_are_refused_at_load(saved_mlp, edit, match):
    _, _, path = saved_mlp
    _edit_meta(path, edit)
    with pytest.raises(ValueError, match=match):
        LIBTransformer.load(path, tanh_mlp())


def test_a_file_of_an_earlier_version_loads_and_says_it_cannot_be_checked(saved_mlp, tmp_path):
    """Before issue 24 files held checksums of values in the compute dtype, which this
    version does not compare: the file loads, with a warning, and saved again stays so."""
    lib, X, path = saved_mlp
    earlier = {"dtype": "float64", "checksums": {"fc1.weight": [32, 0.1, 0.2, 0.3, 0]}}
    _edit_meta(path, lambda m: m["fitted"].update(model_fingerprint=earlier))
    with pytest.warns(UserWarning, match="saved by an earlier version"):
        back = LIBTransformer.load(path, tanh_mlp(seed=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleBasisWarning)  # nothing to compare with
        np.testing.assert_array_equal(back.transform(X), lib.transform(X))
    again = str(tmp_path / "again.lib")
    back.save(again)
    with pytest.warns(UserWarning, match="saved by an earlier version"):
        LIBTransformer.load(again, tanh_mlp())


@pytest.mark.parametrize("digests", [[1, 2], {"fc1.weight": 3}, "abc"])
def test_a_tampered_fingerprint_is_refused(saved_mlp, digests):
    _, _, path = saved_mlp
    _edit_meta(path, lambda m: m["fitted"].update(model_fingerprint={"digests": digests}))
    with pytest.raises(ValueError, match="model_fingerprint must map names to digests"):
        LIBTransformer.load(path, tanh_mlp())


def test_a_gpu_fit_loads_on_a_machine_without_one(saved_mlp):
    lib, X, path = saved_mlp
    _edit_meta(path, lambda m: m["params"].update(device="cuda:7"))
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.warns(UserWarning, match=r"saved with device='cuda:7'.*loaded with device='auto'"):
        back = LIBTransformer.load(path, tanh_mlp())
    assert back.device == "auto"
    np.testing.assert_array_equal(back.transform(X), lib.transform(X))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chosen = LIBTransformer.load(path, tanh_mlp(), device="cpu")
    assert chosen.device == "cpu"
    np.testing.assert_array_equal(chosen.transform(X), lib.transform(X))
    with pytest.raises(ValueError, match="not a device"):
        LIBTransformer.load(path, tanh_mlp(), device="abacus")


def test_set_output_survives_the_round_trip(saved_mlp, tmp_path):
    pd = pytest.importorskip("pandas")
    lib, X, _ = saved_mlp
    lib = clone(lib).set_output(transform="pandas").fit(X)
    lib.save(tmp_path / "pandas.npz")
    back = LIBTransformer.load(tmp_path / "pandas.npz", tanh_mlp())
    out = back.transform(X)
    assert isinstance(out, pd.DataFrame)
    pd.testing.assert_frame_equal(out, lib.transform(X))
