"""The paper's data split, models, checkpoints, trainers and Fourier analysis."""

import numpy as np
import pytest
import torch
from torch import nn

from sklearn_lib import LIBTransformer
from sklearn_lib.datasets import load_digit_images, make_modular_addition
from sklearn_lib.fourier import dominant_frequencies
from sklearn_lib.models import (
    ImageMLP,
    ModularAdditionTransformer,
    accuracy,
    find_checkpoint,
    load_modular_addition,
    train_image_mlp,
    train_modular_addition,
)

P = 113


def test_split_matches_the_spec():
    X_train, X_test, y_train, y_test = make_modular_addition()
    perm = torch.randperm(P * P, generator=torch.Generator().manual_seed(0)).numpy()
    assert len(X_train) == int(P * P * 0.3) == 3830 and len(X_test) == P * P - 3830
    # Row i of the full list is (i // p, i % p, p): x is the outer loop.
    for X, y, idx in [(X_train, y_train, perm[:3830]), (X_test, y_test, perm[3830:])]:
        np.testing.assert_array_equal(X[:, 0], idx // P)
        np.testing.assert_array_equal(X[:, 1], idx % P)
        np.testing.assert_array_equal(X[:, 2], P)
        np.testing.assert_array_equal(y, (idx // P + idx % P) % P)
        assert X.dtype == np.int64
    pairs = {tuple(row) for row in np.concatenate([X_train, X_test])[:, :2]}
    assert len(pairs) == P * P


def test_model_has_the_published_layout():
    model = ModularAdditionTransformer()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["embed.W_E"] == (114, 128) and shapes["pos_embed.W_pos"] == (3, 128)
    assert shapes["blocks.0.attn.W_Q"] == (4, 128, 32) and shapes["blocks.0.attn.W_O"] == (
        4,
        32,
        128,
    )
    assert shapes["blocks.0.attn.mask"] == (3, 3) and shapes["blocks.0.attn.IGNORE"] == ()
    assert shapes["blocks.0.mlp.W_in"] == (128, 512) and shapes["unembed.W_U"] == (128, 114)
    assert len(shapes) == 18  # the keys of the published state dicts
    out = model(torch.as_tensor(make_modular_addition()[0][:5]))
    assert out.shape == (5, 114)


@pytest.mark.skipif(find_checkpoint(0) is None, reason="SKLEARN_LIB_CHECKPOINTS not set")
@pytest.mark.parametrize("seed", range(5))
def test_published_checkpoint_loads_and_fits_the_train_split(seed):
    X_train, X_test, y_train, y_test = make_modular_addition()
    model = load_modular_addition(seed)  # strict=True inside
    assert accuracy(model, X_train, y_train) == 1.0
    assert accuracy(model, X_test, y_test) > 0.998
    if seed == 0:
        assert accuracy(model, X_test, y_test) == pytest.approx(0.9996, abs=1e-4)


@pytest.mark.skipif(find_checkpoint(0) is None, reason="SKLEARN_LIB_CHECKPOINTS not set")
def test_paper_node_layers_are_cuts_with_the_expected_shapes():
    X_train = make_modular_addition()[0][:200]
    lib = LIBTransformer(
        load_modular_addition(0), "blocks.0.attn", downstream_layers=["blocks.0.mlp", "unembed"]
    ).fit(X_train)
    assert lib.activation_shape_ == (3, 128)
    assert lib.bases_["blocks.0.mlp"].shape == (128,) and lib.bases_["unembed"].shape == (128,)
    assert lib.output_shape_ == (114,)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    assert find_checkpoint(0, tmp_path) is None
    with pytest.raises(FileNotFoundError, match="No modadd_seed3.pt in"):
        load_modular_addition(3, tmp_path)


@pytest.mark.slow
def test_fast_configuration_learns_the_task():
    """Measured: test accuracy 1.0 after the fast configuration's 600 epochs."""
    X_train, X_test, y_train, y_test = make_modular_addition()
    model, history = train_modular_addition(X_train, y_train, fast=True, seed=0)
    assert accuracy(model, X_train, y_train) == 1.0
    assert accuracy(model, X_test, y_test) >= 0.98
    assert history["loss"][-1] < 0.01
    assert not model.training


@pytest.mark.slow
def test_image_mlp_trainer_learns_digits():
    """Measured: about 0.97 test accuracy with (64, 64) hidden units."""
    X, y = load_digit_images()
    assert X.shape == (1797, 1, 8, 8) and X.dtype == np.float32 and X.max() == 1.0
    model, _ = train_image_mlp(X[:1200], y[:1200], epochs=300)
    assert isinstance(model, ImageMLP) and model.node_layers == ["fc1", "fc2", "out"]
    assert accuracy(model, X[1200:], y[1200:]) > 0.9


class PlantedFrequency(nn.Module):
    """Token ids (x, y, =) -> a readout that uses only frequency ``k`` of x + y.

    The node layer ``readout``'s input holds the wave (cos, sin of frequency
    ``k`` of ``x + y``) next to a louder distractor (a wave of ``x`` alone)
    that the readout ignores.
    """

    def __init__(self, k=17, distractor=5, p=P):
        super().__init__()
        self.k, self.distractor, self.p = k, distractor, p
        j = torch.arange(p, dtype=torch.float64)
        angle = 2 * torch.pi * k * j / p
        readout = torch.zeros(4, p, dtype=torch.float64)
        readout[0], readout[1] = torch.cos(angle), torch.sin(angle)
        self.readout = nn.Linear(4, p, bias=False).double()
        self.readout.weight.data = readout.T.contiguous()

    def forward(self, tokens):
        x, y = tokens[:, 0].double(), tokens[:, 1].double()
        wave = 2 * torch.pi * self.k * (x + y) / self.p
        loud = 2 * torch.pi * self.distractor * x / self.p
        h = torch.stack(
            [torch.cos(wave), torch.sin(wave), 5 * torch.cos(loud), 5 * torch.sin(loud)], 1
        )
        return self.readout(h)  # logit j = cos(2 pi k (x + y - j) / p): argmax j = x + y


def test_fourier_analysis_finds_a_planted_frequency():
    X_train, X_test, y_train, y_test = make_modular_addition()
    X_all, z = np.concatenate([X_train, X_test]), np.concatenate([y_train, y_test])
    model = PlantedFrequency()
    assert accuracy(model, X_test, y_test) == 1.0
    lib = LIBTransformer(model, "readout").fit(X_train)
    report = dominant_frequencies(lib.transform(X_all), z, P)
    assert lib.n_components_ == 2  # the distractor does not matter to the output
    np.testing.assert_array_equal(report.frequency, [17, 17])
    np.testing.assert_allclose(report.share, 1.0, atol=1e-9)
    assert report.pairs() == {17: [0, 1]}
    # PCA ranks the louder distractor first; it is no wave of x + y at all.
    pca = LIBTransformer(model, "readout", basis="pca").fit(X_train)
    pca_report = dominant_frequencies(pca.transform(X_all), z, P)
    assert pca_report.sum_share[0] < 1e-3 and pca_report.sum_share[2] > 0.99


@pytest.mark.skipif(find_checkpoint(0) is None, reason="SKLEARN_LIB_CHECKPOINTS not set")
def test_a_float32_fit_keeps_the_attention_input_gram_in_float64(capsys):
    """Variances at 1e-11 of the largest: float32 products fail their certificate."""
    X_train = make_modular_addition()[0][:1000]
    lib = LIBTransformer(
        load_modular_addition(0),
        "blocks.0.attn",
        downstream_layers=["blocks.0.mlp"],
        dtype="float32",
        verbose=True,
    ).fit(X_train)
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "Gram products of activations" in line)
    assert "'blocks.0.attn'" in line and "float64 (float32 products not within 1e-05" in line
    assert lib.lambdas_[0] > 0
