"""The spec's identities and independent references for the fitted bases."""

import numpy as np
import pytest
import torch
from _refs import (
    TOL,
    activations_of,
    assert_same_columns_up_to_sign,
    brute_force_m_prime,
    independent_rule,
    reference_lambdas,
    sqrtm_psd,
)
from sklearn.decomposition import PCA
from torch import nn
from toy_models import CASES, PositionMixer, linear_chain, tanh_mlp

from sklearn_lib import LIBTransformer


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("basis", ["lib", "pca"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lambda_equals_feature_variance(rng, case, basis, dtype):
    model, layer, downstream, X = CASES[case](rng)
    lib = LIBTransformer(model, layer, downstream_layers=downstream, basis=basis, dtype=dtype)
    Z = lib.fit(X).transform(X).reshape(len(X) * lib.n_positions_, lib.n_components_)
    second_moment = Z.T @ Z / len(Z)  # E[f_hat^T f_hat]; features are centred
    scale = lib.lambdas_[0]
    np.testing.assert_allclose(
        second_moment / scale, np.diag(lib.lambdas_) / scale, atol=TOL[dtype]["rtol"] * 10
    )
    np.testing.assert_allclose(Z.mean(0), 0, atol=TOL[dtype]["rtol"] * np.sqrt(scale) * 10)


@pytest.mark.parametrize("case", sorted(CASES))
def test_whitened_jacobian_gram_is_identity(rng, case):
    """``E[J_hat^T J_hat] = I`` with brute-force per-sample Jacobians."""
    model, layer, downstream, X = CASES[case](rng)
    lib = LIBTransformer(model, layer, downstream_layers=downstream).fit(X)
    acts = activations_of(model, layer, X)
    tail = dict(model.named_modules())[downstream[0]]
    next_basis = lib.bases_[downstream[0]]
    tail_fn = (lambda h: model.mix(h)) if case != "mlp" else (lambda h: model.act2(model.fc2(h)))
    del tail
    m_prime = brute_force_m_prime(tail_fn, acts, next_basis.kept_matrix)
    j_hat_gram = lib.inverse_components_ @ m_prime @ lib.inverse_components_.T
    np.testing.assert_allclose(j_hat_gram, np.eye(lib.n_components_), atol=1e-9)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(
    "integration, n_intervals", [("gradient", 0), ("trapezoidal", 3), ("gauss-legendre", 2)]
)
def test_lambdas_match_brute_force_jacobians(rng, case, integration, n_intervals):
    """Every node layer's Lambda against ``M'`` from full per-sample Jacobians."""
    model, layer, downstream, X = CASES[case](rng)
    lib = LIBTransformer(
        model, layer, downstream_layers=downstream, integration=integration, n_intervals=n_intervals
    ).fit(X)
    alphas, weights = independent_rule(integration, n_intervals)
    if case == "mlp":
        sections = {"fc2": lambda h: model.act2(model.fc2(h)), "fc3": model.fc3}
    else:
        sections = {"mix": model.mix, "head": model.head}
    names = [layer, *downstream]
    for name, next_name in zip(names, [*downstream, "output"]):
        acts = activations_of(model, name, X)
        m_prime = brute_force_m_prime(
            sections[name], acts, lib.bases_[next_name].kept_matrix, alphas, weights
        )
        expected = reference_lambdas(acts, m_prime)
        np.testing.assert_allclose(lib.bases_[name].lambdas, expected, rtol=1e-9, atol=1e-13)


def test_linear_section_closed_form(rng):
    """``Lambda = eig(Cov^1/2 W C_next C_next^T W^T Cov^1/2)`` for ``F(f) = f W``."""
    model = linear_chain()
    X = rng.normal(size=(200, 5))
    lib = LIBTransformer(model, "fc2", downstream_layers=["fc3"], truncation_threshold=0).fit(X)
    for name, next_name in [("fc2", "fc3"), ("fc3", "output")]:
        cov = np.cov(activations_of(model, name, X), rowvar=False, bias=True)
        W = dict(model.named_modules())[name].weight.detach().numpy().T  # rows: inputs
        C_next = lib.bases_[next_name].kept_matrix
        root = sqrtm_psd(cov)
        expected = np.sort(np.linalg.eigvalsh(root @ W @ C_next @ C_next.T @ W.T @ root))[::-1]
        got = lib.bases_[name].lambdas
        np.testing.assert_allclose(got, expected[: len(got)], rtol=1e-9)
        assert np.all(expected[len(got) :] < 1e-12 * expected[0])


def test_linear_chain_equals_product_of_weights(rng):
    model = linear_chain()
    X = rng.normal(size=(200, 5))
    layered = LIBTransformer(model, "fc2", downstream_layers=["fc3"]).fit(X)
    direct = LIBTransformer(model, "fc2").fit(X)
    cov = np.cov(activations_of(model, "fc2", X), rowvar=False, bias=True)
    W = (model.fc3.weight @ model.fc2.weight).detach().numpy().T  # product of the weights
    root = sqrtm_psd(cov)
    expected = np.sort(np.linalg.eigvalsh(root @ W @ W.T @ root))[::-1]
    k = layered.n_components_
    np.testing.assert_allclose(layered.lambdas_, expected[:k], rtol=1e-9)
    np.testing.assert_allclose(direct.lambdas_, expected[:k], rtol=1e-9)
    assert_same_columns_up_to_sign(
        layered.components_.T, direct.components_.T, rtol=1e-8, atol=1e-10
    )


def _with_rotated_output(model, seed=1):
    rot = nn.Linear(3, 3, bias=False).double()
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    rot.weight.data = torch.as_tensor(q)
    return nn.Sequential(*model, rot)


@pytest.mark.parametrize("output_basis", ["identity", "pca"])
def test_output_rotation_leaves_bases_unchanged(rng, output_basis):
    model = tanh_mlp()
    X = rng.normal(size=(150, 4))
    params = dict(downstream_layers=["fc3"], output_basis=output_basis)
    base = LIBTransformer(model, "fc2", downstream_layers=["fc3"]).fit(X)
    # Sequential(*model) renames layers to indices: fc2 -> "2", fc3 -> "4".
    rotated = LIBTransformer(
        _with_rotated_output(model), "2", **{**params, "downstream_layers": ["4"]}
    ).fit(X)
    for name, rot_name in [("fc2", "2"), ("fc3", "4")]:
        a, b = base.bases_[name], rotated.bases_[rot_name]
        np.testing.assert_allclose(a.lambdas, b.lambdas, rtol=1e-9)
        assert_same_columns_up_to_sign(a.matrix, b.matrix, rtol=1e-7, atol=1e-10)


def test_round_trip_exact_when_only_null_space_dropped(rng):
    # act1's input is fc1's output: rank 4 inside 8 dimensions, so the Gram
    # has a 4-dimensional null space; the nonlinear section keeps all others.
    model = tanh_mlp()
    X = rng.normal(size=(150, 4))
    lib = LIBTransformer(model, "act1", truncation_threshold=0).fit(X)
    assert lib.n_components_ == 4
    acts = activations_of(model, "act1", X)
    np.testing.assert_allclose(lib.inverse_transform(lib.transform(X)), acts, atol=1e-10)
    np.testing.assert_allclose(
        lib.inverse_transform(lib.transform_activations(acts)), acts, atol=1e-10
    )


@pytest.mark.parametrize("case", ["mlp", "positions"])
def test_pca_basis_matches_sklearn(rng, case):
    model, layer, downstream, X = CASES[case](rng)
    lib = LIBTransformer(model, layer, basis="pca").fit(X)
    rows = activations_of(model, layer, X)
    rows = rows.reshape(-1, rows.shape[-1])
    pca = PCA(svd_solver="full").fit(rows)
    k = lib.n_components_
    n = len(rows)
    np.testing.assert_allclose(lib.lambdas_, pca.explained_variance_[:k] * (n - 1) / n, rtol=1e-9)
    assert_same_columns_up_to_sign(lib.components_.T, pca.components_[:k].T, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(lib.mean_, pca.mean_, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.99])
def test_pca_fraction_selects_like_sklearn(rng, fraction):
    model, layer, _, X = CASES["mlp"](rng)
    lib = LIBTransformer(model, layer, basis="pca", n_components=fraction).fit(X)
    pca = PCA(n_components=fraction, svd_solver="full").fit(activations_of(model, layer, X))
    assert lib.n_components_ == pca.n_components_


def test_truncation_never_drops_directions_before_rotation(rng):
    # Straight to the output: with downstream layers the threshold also
    # truncates their bases, which legitimately changes this layer's Lambda.
    model, layer, _, X = CASES["mlp"](rng)
    fits = [LIBTransformer(model, layer, truncation_threshold=t).fit(X) for t in (0.0, 0.05, 0.3)]
    for fit in fits[1:]:
        np.testing.assert_array_equal(
            fit.bases_[layer].gram_eigenvalues, fits[0].bases_[layer].gram_eigenvalues
        )
        np.testing.assert_allclose(fit.bases_[layer].lambdas, fits[0].bases_[layer].lambdas)
    kept = [fit.n_components_ for fit in fits]
    assert kept[0] >= kept[1] >= kept[2] and kept[0] > kept[2]
    for fit, t in zip(fits, (0.0, 0.05, 0.3)):
        assert np.all(fit.lambdas_ >= t * fit.lambdas_[0])
        dropped = fit.bases_[layer].lambdas[fit.n_components_ :]
        assert np.all(dropped < t * fit.lambdas_[0])


@pytest.mark.parametrize("n_components, expected", [(3, 3), (1, 1), (0.999999, None)])
def test_n_components(rng, n_components, expected):
    model, layer, downstream, X = CASES["mlp"](rng)
    lib = LIBTransformer(model, layer, downstream_layers=downstream, n_components=n_components)
    lib.fit(X)
    lam = lib.bases_[layer].lambdas
    if expected is None:  # the fewest features holding that fraction of sum(Lambda)
        expected = int(np.searchsorted(np.cumsum(lam) / lam.sum(), n_components, side="right")) + 1
    assert lib.n_components_ == expected
    assert lib.components_.shape == (expected, 8)
    assert lib.transform(X).shape == (len(X), expected)


def test_uncentred_gram(rng):
    model, layer, downstream, X = CASES["mlp"](rng)
    X = X + 2.0  # a mean far from zero makes centring matter
    lib = LIBTransformer(model, layer, center=False).fit(X)
    np.testing.assert_array_equal(lib.mean_, 0)
    acts = activations_of(model, layer, X)
    m_prime = brute_force_m_prime(lambda h: model.fc3(model.act2(model.fc2(h))), acts, np.eye(3))
    expected = reference_lambdas(acts, m_prime, center=False)
    np.testing.assert_allclose(lib.bases_[layer].lambdas, expected, rtol=1e-9)
    centred = LIBTransformer(model, layer).fit(X)
    assert not np.allclose(centred.bases_[layer].lambdas[:3], lib.bases_[layer].lambdas[:3])


def test_stochastic_sources_converge_to_the_exact_basis(rng):
    """Random +-1 combinations of Jacobian rows give an unbiased M'; as many sources as
    the 3 x 3 exact rows are the exact rows themselves."""
    X = rng.normal(size=(120, 4, 3))
    model = PositionMixer(n_pos_out=3).double()
    exact = LIBTransformer(model, "mix", batch_size=30).fit(X)
    errors = []
    for sources in (1, 3, 8, 9):
        approx = LIBTransformer(
            model, "mix", batch_size=30, n_stochastic_sources=sources, random_state=0
        ).fit(X)
        k = min(len(approx.bases_["mix"].lambdas), len(exact.bases_["mix"].lambdas))
        top = exact.bases_["mix"].lambdas[:k]
        errors.append(np.abs(approx.bases_["mix"].lambdas[:k] - top).max() / top[0])
    assert errors[0] > errors[1] > errors[2] > 1e-6 and errors[2] < 0.02
    assert errors[3] < 1e-12
