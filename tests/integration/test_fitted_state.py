"""One fit's state at a time (issue 24): refits swap it in whole, and parameters that
change its meaning after a fit make calls refuse until a refit."""

import pickle
import sys
import threading
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from toy_models import tanh_mlp

from sklearn_lib import ActivationTransformer, LIBTransformer, ablation_curve


@pytest.fixture
def X(rng):
    return rng.normal(size=(120, 4))


# -- a refit racing with calls -----------------------------------------------------------
def _racing(lib, fits, call, n_calls):
    """Run ``call()`` ``n_calls`` times in this thread while another thread refits ``lib``
    on ``fits`` in turn; what every call returned (or raised)."""
    stop = threading.Event()

    def refit():
        while not stop.is_set():
            for X in fits:
                lib.fit(X)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    worker = threading.Thread(target=refit)
    worker.start()
    results = []
    try:
        for _ in range(n_calls):
            try:
                results.append(call())
            except Exception as exc:  # a mix of two fits may not even have one shape
                results.append(exc)
    finally:
        stop.set()
        worker.join()
        sys.setswitchinterval(switch)
    return results


def _matches_one(result, references):
    return not isinstance(result, Exception) and any(
        result.shape == r.shape and np.allclose(result, r, rtol=1e-12, atol=1e-12)
        for r in references
    )


def test_a_transform_racing_a_refit_sees_one_fit(X, rng):
    """28 of 435 calls mixed two fits' bases before: now every call's rows are those of
    one of the fits, exactly (the fits differ in their data, components and count)."""
    fits = [X[:60], 3.0 * rng.normal(size=(60, 4)) + 1.0]
    # Batches of 4: a call reads the state batch by batch (old code: rows of two fits).
    params = dict(downstream_layers=["fc3"], truncation_threshold=1e-3, batch_size=4)
    references = [
        LIBTransformer(tanh_mlp(), "fc2", **params).fit(data).transform(X[:20]) for data in fits
    ]
    assert references[0].shape != references[1].shape  # 6 and 5 kept features
    lib = LIBTransformer(tanh_mlp(), "fc2", **params).fit(fits[0])
    results = _racing(lib, fits, lambda: lib.transform(X[:20]), n_calls=150)
    mixed = [r for r in results if not _matches_one(r, references)]
    assert not mixed, f"{len(mixed)} of {len(results)} calls mixed two fits: {mixed[:2]}"


def test_every_reader_of_fitted_state_sees_one_fit(X, rng):
    fits = [X[:60], 3.0 * rng.normal(size=(60, 4)) + 1.0]
    lib = LIBTransformer(tanh_mlp(), "fc2", n_components=3, batch_size=4).fit(fits[0])
    calls = {
        "inverse_transform": lambda: lib.inverse_transform(np.ones((3, 3))),
        "score": lambda: np.array([lib.score(X[:20])]),
        "ablation_curve": lambda: ablation_curve(lib, X[:20], n_features=[1])[1],
    }
    for name, call in calls.items():
        references = []
        for data in fits:
            lib.fit(data)
            references.append(call())
        results = _racing(lib, fits, call, n_calls=25)
        mixed = [r for r in results if not _matches_one(r, references)]
        assert not mixed, (name, len(mixed), mixed[:2])


def test_a_failed_refit_leaves_the_old_state_untouched(X):
    lib = LIBTransformer(tanh_mlp(), "fc2").fit(X)
    before = dict(vars(lib))
    with pytest.raises(ValueError):
        lib.fit(np.full((50, 4), np.nan))
    assert vars(lib).keys() == before.keys()
    assert all(vars(lib)[k] is v for k, v in before.items())


def test_a_refit_keeps_no_attribute_of_the_fit_before(X):
    lib = LIBTransformer(tanh_mlp(), "fc2", compute_graph=True).fit(X)
    assert hasattr(lib, "interaction_graph_")
    lib.set_params(compute_graph=False).fit(X)
    assert not hasattr(lib, "interaction_graph_")


# -- parameters that change what a fitted state means ---------------------------------------
_CHANGES = {
    "layer": "fc3",
    "downstream_layers": [],
    "capture": "output",
    "output": 0,
    "forward_kwargs": {"unused": 1},
    "feature_axis": -1,
    "dtype": "float32",
}


@pytest.mark.parametrize("name", list(_CHANGES))
def test_set_params_of_a_fit_defining_parameter_refuses_until_a_refit(X, name):
    lib = LIBTransformer(tanh_mlp(), "fc2", downstream_layers=["fc3"]).fit(X)
    features = lib.transform(X[:5])
    old = lib.get_params()[name]
    lib.set_params(**{name: _CHANGES[name]})
    message = rf"fitted with other values of \['{name}'\].*set_params after fit.*fit again"
    for call in (lambda: lib.transform(X[:5]), lambda: lib.inverse_transform(features)):
        with pytest.raises(NotFittedError, match=message):
            call()
    with pytest.raises(NotFittedError, match=message):
        ablation_curve(lib, X[:5], n_features=[1])
    lib.set_params(**{name: old})  # back: the fit describes it again
    np.testing.assert_array_equal(lib.transform(X[:5]), features)


def test_a_refit_after_set_params_is_accepted(X):
    lib = LIBTransformer(tanh_mlp(), "fc2").fit(X)
    lib.set_params(layer="fc3")
    assert lib.fit(X).transform(X[:5]).shape[0] == 5


def test_equal_values_of_another_kind_are_no_change(X):
    lib = LIBTransformer(tanh_mlp(), "fc2", downstream_layers=["fc3"], dtype="float64").fit(X)
    lib.set_params(dtype=torch.float64, downstream_layers=("fc3",), forward_kwargs={})
    lib.set_params(output=np.int64(-1)).set_params(output=None)
    lib.transform(X[:5])


@pytest.mark.parametrize(
    "name, value", [("batch_size", 7), ("verbose", False), ("device", "cpu"), ("random_state", 3)]
)
def test_parameters_that_do_not_change_the_meaning_are_free(X, name, value):
    lib = LIBTransformer(tanh_mlp(), "fc2").fit(X)
    features = lib.transform(X[:5])
    lib.set_params(**{name: value})
    np.testing.assert_allclose(lib.transform(X[:5]), features, rtol=1e-12)


def test_tensor_forward_kwargs_are_compared_by_value(X):
    class Shifted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = tanh_mlp()

        def forward(self, x, shift):
            return self.mlp(x + shift)

    lib = LIBTransformer(
        Shifted(), "mlp.fc2", forward_kwargs={"shift": torch.zeros(4, dtype=torch.float64)}
    ).fit(X)
    lib.set_params(forward_kwargs={"shift": torch.zeros(4, dtype=torch.float64)})  # equal
    lib.transform(X[:5])
    lib.set_params(forward_kwargs={"shift": torch.ones(4, dtype=torch.float64)})
    with pytest.raises(NotFittedError, match="forward_kwargs"):
        lib.transform(X[:5])


def test_the_check_survives_pickling_and_loading(X, tmp_path):
    lib = LIBTransformer(tanh_mlp(), "fc2", downstream_layers=["fc3"]).fit(X)
    back = pickle.loads(pickle.dumps(lib))
    back.set_params(layer="fc3")
    with pytest.raises(NotFittedError, match="layer"):
        back.transform(X[:5])
    path = str(tmp_path / "fit.lib")
    lib.save(path)
    loaded = LIBTransformer.load(path, tanh_mlp())
    loaded.set_params(capture="output")
    with pytest.raises(NotFittedError, match="capture"):
        loaded.transform(X[:5])


def test_activation_transformer_refuses_too(X):
    acts = ActivationTransformer(tanh_mlp(), "fc2").fit(X)
    acts.set_params(layer="fc3")
    with pytest.raises(NotFittedError, match="layer"):
        acts.transform(X[:5])


def test_pipelines_grid_searches_and_clones_are_unaffected(X):
    pipe = Pipeline([("lib", LIBTransformer(tanh_mlp(), "fc2"))])
    search = GridSearchCV(
        pipe, {"lib__layer": ["fc2", "fc3"]}, cv=2, scoring=lambda est, X, y=None: 0.0
    )
    search.fit(X)
    assert search.best_estimator_.named_steps["lib"].transform(X[:3]).shape[0] == 3
    fitted = LIBTransformer(tanh_mlp(), "fc2").fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clone(fitted).set_params(layer="fc3").fit(X).transform(X[:3])
    html = fitted.set_params(layer="fc3")._repr_html_()  # sklearn asks "fitted?" and shows it
    assert "Not fitted" in html
