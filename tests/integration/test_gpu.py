"""GPU == CPU to float64 tolerance (skipped without CUDA)."""

import numpy as np
import pytest
import torch
from toy_models import PositionMixer, modadd_tokens, small_modadd, tanh_mlp

from sklearn_lib import LIBTransformer
from sklearn_lib.datasets import make_modular_addition
from sklearn_lib.models import load_modular_addition

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("basis", ["lib", "pca"])
def test_gpu_matches_cpu(rng, basis):
    for model, layer, downstream, X in [
        (tanh_mlp(), "fc2", ["fc3"], rng.normal(size=(300, 4))),
        (PositionMixer().double(), "mix", ["head"], rng.normal(size=(200, 4, 3))),
    ]:
        fits = {
            device: LIBTransformer(
                model, layer, downstream_layers=downstream, basis=basis, device=device
            ).fit(X)
            for device in ("cpu", "cuda")
        }
        cpu, gpu = fits["cpu"], fits["cuda"]
        np.testing.assert_allclose(gpu.lambdas_, cpu.lambdas_, rtol=1e-9)
        np.testing.assert_allclose(gpu.transform(X), cpu.transform(X), rtol=1e-8, atol=1e-10)
        assert next(model.parameters()).device.type == "cpu"


MODADD = ["blocks.0.attn", "blocks.0.mlp", "unembed"]


def _fit_with_graph(model, X, device, structured=True, **params):
    jacobian = "auto" if structured else "autograd"
    lib = LIBTransformer(
        model, MODADD[0], downstream_layers=MODADD[1:], device=device, jacobian=jacobian, **params
    ).fit(X)
    return lib, lib.interaction_graph(X)


def _assert_same(a, b, rtol):
    """Lambda and edges agree, each relative to the largest of its node or section.

    Float64 sums in another order move the smallest Lambda by ~1e-6 of
    themselves (seen on an H200), while staying ~1e-12 of the largest.
    """
    for name in MODADD:
        lam = b[0].bases_[name].lambdas
        np.testing.assert_allclose(a[0].bases_[name].lambdas, lam, rtol=rtol, atol=rtol * lam[0])
    for key, E in b[1].edges.items():
        np.testing.assert_allclose(a[1].edges[key], E, rtol=rtol, atol=rtol * E.max())


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("structured", [True, False])
def test_gpu_graph_matches_cpu(structured):
    """Bases and edges on CUDA: closed-form sections, and vmapped autograd rows."""
    model, X = small_modadd(), modadd_tokens(80).numpy()
    params = dict(batch_size=32, truncation_threshold=0)
    cpu = _fit_with_graph(model, X, "cpu", structured, **params)
    gpu = _fit_with_graph(model, X, "cuda", structured, **params)
    _assert_same(gpu, cpu, rtol=1e-8)


def test_gpu_float32_is_close_to_float64():
    model, X = small_modadd(), modadd_tokens(80).numpy()
    exact = LIBTransformer(model, MODADD[0], downstream_layers=MODADD[1:], device="cuda").fit(X)
    fast = LIBTransformer(
        model, MODADD[0], downstream_layers=MODADD[1:], device="cuda", dtype="float32"
    ).fit(X)
    top = exact.lambdas_[:5]
    np.testing.assert_allclose(fast.lambdas_[:5], top, rtol=1e-3)


def test_gpu_paper_checkpoint_matches_cpu():
    try:
        model = load_modular_addition(0)
    except FileNotFoundError:
        pytest.skip("the paper's checkpoints are not available")
    X = make_modular_addition()[0][:512]
    _assert_same(_fit_with_graph(model, X, "cuda"), _fit_with_graph(model, X, "cpu"), rtol=1e-7)


def test_feature_dashboard_on_the_gpu_equals_the_cpu(rng):
    """The example search and the single-feature ablations run on the estimator's device."""
    from sklearn_lib import FeatureDashboard

    model, X = PositionMixer().double(), rng.normal(size=(120, 4, 3))
    pages = {}
    for device in ("cpu", "cuda"):
        lib = LIBTransformer(model, "mix", downstream_layers=["head"], device=device).fit(X)
        pages[device] = FeatureDashboard.from_estimator(
            lib, X, n_features=3, n_examples=5, ablation=True, scoring="r2", graph=None
        )
    for node, found in pages["cpu"].examples["LIB"].items():
        gpu = pages["cuda"].examples["LIB"][node]
        np.testing.assert_array_equal(gpu.samples, found.samples)
        np.testing.assert_allclose(gpu.values, found.values, rtol=1e-9)
    cards = [
        [c["ablation"] for n in page.data["views"][0]["nodes"] for c in n["features"]]
        for page in pages.values()
    ]
    np.testing.assert_allclose(cards[1], cards[0], rtol=1e-3, atol=1e-9)
