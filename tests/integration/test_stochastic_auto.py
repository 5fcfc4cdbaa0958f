"""``n_stochastic_sources="auto"``: rounds of sources until the basis stops moving (issue 12).

The reference is the exact fit (no sources) of the same model and data.
"""

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from sklearn_lib import LIBTransformer


class WideMixer(nn.Module):
    """Many output positions: ``out_t = head(tanh(sum_s A_ts mix(x)_s))``."""

    def __init__(self, positions=12, width=10, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.mix = nn.Linear(width, width)
        self.A = nn.Parameter(torch.randn(positions, positions) / positions**0.5)
        self.head = nn.Linear(width, width)

    def forward(self, x):  # (n, P, d) -> (n, P, d)
        return self.head(torch.tanh(torch.einsum("ts,nsd->ntd", self.A, self.mix(x))))


@pytest.fixture(scope="module")
def fits():
    X = np.random.default_rng(0).normal(size=(160, 12, 10))
    model = WideMixer().double()
    common = dict(downstream_layers=["head"], batch_size=16, device="cpu")
    exact = LIBTransformer(model, "mix", **common).fit(X)
    auto = LIBTransformer(model, "mix", n_stochastic_sources="auto", random_state=0, **common)
    return exact, auto.fit(X)


def test_auto_sources_converge_to_the_exact_basis(fits):
    exact, auto = fits
    for name in ("mix", "head"):
        rounds = auto.stochastic_rounds_[name]
        assert rounds.converged and rounds.rounds >= 4 and rounds.rounds % 2 == 0
        assert rounds.lambda_error <= 0.01 and rounds.cosine >= 0.99
        assert auto.n_stochastic_sources_[name] == rounds.n_sources == 16 * rounds.rounds
        a, b = exact.bases_[name], auto.bases_[name]
        k = 5
        error = np.max(np.abs(a.lambdas[:k] - b.lambdas[:k])) / a.lambdas[0]
        cosine = np.cos(scipy.linalg.subspace_angles(a.matrix[:, :k], b.matrix[:, :k])).min()
        # Converged means an estimated error <= 1% and cosine >= 0.99 (the estimate
        # is a statistical one, twice the standard error: a margin of 1.5 here).
        assert error <= 0.015, (name, error, rounds)
        assert cosine >= 0.99, (name, cosine, rounds)
        assert error <= 1.5 * rounds.lambda_error, (name, error, rounds)


def test_exact_and_fixed_sources_report_what_they_used(fits):
    exact, _ = fits
    assert exact.n_stochastic_sources_ == {"mix": None, "head": None}
    assert exact.stochastic_rounds_ == {}
    X = np.random.default_rng(1).normal(size=(40, 12, 10))
    fixed = LIBTransformer(WideMixer().double(), "mix", n_stochastic_sources=8, device="cpu")
    assert fixed.fit(X).n_stochastic_sources_ == {"mix": 8}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # 48 samples
def test_auto_is_reproducible_with_a_seed():
    X = np.random.default_rng(2).normal(size=(48, 12, 10))
    model = WideMixer().double()
    params = dict(n_stochastic_sources="auto", random_state=3, batch_size=16, device="cpu")
    a = LIBTransformer(model, "mix", **params).fit(X)
    b = LIBTransformer(model, "mix", **params).fit(X)
    np.testing.assert_array_equal(a.lambdas_, b.lambdas_)
    assert a.stochastic_rounds_ == b.stochastic_rounds_


def test_auto_that_runs_out_of_rounds_says_so():
    from sklearn.exceptions import ConvergenceWarning

    X = np.random.default_rng(0).normal(size=(40, 12, 10))  # too few samples for 1%
    lib = LIBTransformer(
        WideMixer().double(), "mix", n_stochastic_sources="auto", batch_size=20, device="cpu"
    )
    with pytest.warns(ConvergenceWarning, match=r"did not converge .* after 64 rounds"):
        lib.fit(X)
    rounds = lib.stochastic_rounds_["mix"]
    assert not rounds.converged and rounds.rounds == 64 and rounds.lambda_error > 0.01
