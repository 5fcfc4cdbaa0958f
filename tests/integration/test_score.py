"""``score``: the model run on the reconstruction from the kept features."""

import copy

import numpy as np
import torch
from _refs import activations_of
from toy_models import tanh_mlp

from sklearn_lib import LIBTransformer


def _model_with_data(rng):
    model = tanh_mlp(d_in=4, hidden=8, d_out=3)
    X = rng.normal(size=(200, 4))
    with torch.no_grad():
        y = model(torch.as_tensor(X)).argmax(1).numpy()
    return model, X, y


def test_score_with_every_feature_reproduces_the_model(rng):
    model, X, y = _model_with_data(rng)
    lib = LIBTransformer(model, "fc2", truncation_threshold=0).fit(X)
    assert lib.score(X, y) == 1.0  # y are the model's own predictions
    assert lib.score(X) > 1 - 1e-12


def test_score_matches_a_manual_ablation(rng):
    """Keep k features: reconstruct with the first k rows of the *full*
    pseudo-inverse and run the rest of the model by hand."""
    model, X, y = _model_with_data(rng)
    lib = LIBTransformer(model, "fc2", n_components=2).fit(X)
    acts = activations_of(model, "fc2", X)
    C = lib.bases_["fc2"].matrix
    C_pinv = lib.bases_["fc2"].pinv
    rebuilt = (acts - lib.mean_) @ C[:, :2] @ C_pinv[:2] + lib.mean_
    tail = copy.deepcopy(model)[2:]  # fc2 onwards
    with torch.no_grad():
        ablated = tail(torch.as_tensor(rebuilt)).numpy()
        original = model(torch.as_tensor(X)).numpy()
    assert lib.score(X, y) == np.mean(ablated.argmax(1) == y)
    r2 = 1 - ((ablated - original) ** 2).sum() / ((original - original.mean(0)) ** 2).sum()
    np.testing.assert_allclose(lib.score(X), r2, rtol=1e-10)
    # Re-inverting the truncated C is a different (wrong) reconstruction.
    wrong = (acts - lib.mean_) @ C[:, :2] @ np.linalg.pinv(C[:, :2]) + lib.mean_
    assert not np.allclose(wrong, rebuilt, atol=1e-6)


def test_fewer_features_score_lower(rng):
    model, X, _ = _model_with_data(rng)
    scores = [LIBTransformer(model, "fc2", n_components=k).fit(X).score(X) for k in (1, 2, 4, 8)]
    assert scores[0] < scores[1] < scores[2] < scores[3]
    assert scores[3] > 1 - 1e-12
