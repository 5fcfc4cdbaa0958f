"""Fast routes for a user's own model (issue 12): each gives autograd's results.

- affine sections: rows from one sample, found by a probe at scaled points;
- the residual MLP formula, recognised by ``torch.fx`` in a user's module;
- ``compute_graph=True``: the edges from the fit's own Jacobian rows;
- ``batch_size="auto"``: a batch from a memory budget.
"""

import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from _sections import route_of
from sklearn.exceptions import ConvergenceWarning
from torch import nn
from toy_models import TanhThenLinear, modadd_tokens, tanh_mlp, user_transformer

from sklearn_lib import LIBTransformer, ablation_curve
from sklearn_lib._core.nodes import OUTPUT_NODE, Section
from sklearn_lib._fitting import jacobian_gram, stochastic
from sklearn_lib._model import batching as _batching
from sklearn_lib._model.session import ModelSession
from sklearn_lib._routes import autograd
from sklearn_lib._routes import jacobian as jacobian_module
from sklearn_lib._routes.forms import affine
from sklearn_lib._routes.forms import base as forms_base
from sklearn_lib._routes.forms.affine import Affine, is_affine_section
from sklearn_lib._routes.forms.residual_mlp import ResidualMLP
from sklearn_lib._routes.forms.traced_section import TracedSection
from sklearn_lib._routes.jacobian import SectionJacobian

LAYERS = ["blocks.0.attn", "blocks.0.mlp", "unembed"]


def relative(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def fit(model, X, layers, **params):
    lib = LIBTransformer(model, layers[0], downstream_layers=layers[1:], **params).fit(X)
    return lib


def assert_same_fit(fast, slow, rtol):
    for name in slow.bases_:
        np.testing.assert_allclose(
            fast.bases_[name].lambdas, slow.bases_[name].lambdas, rtol=rtol, atol=0
        )


def assert_same_graph(fast, slow, rtol):
    assert list(fast.edges) == list(slow.edges)
    for key in slow.edges:
        assert relative(fast.edges[key], slow.edges[key]) < rtol, key


class PassCounter:
    """Counts the passes over the data (``ModelSession.run_pass`` calls) and what they were."""

    def __init__(self, monkeypatch):
        self.names = []
        original = ModelSession.run_pass

        def run_pass(session, source, accumulators, what):
            self.names.append(what)
            return original(session, source, accumulators, what)

        monkeypatch.setattr(ModelSession, "run_pass", run_pass)


# -- a user's own transformer, by the default route ----------------------------------------
def test_a_user_transformer_by_the_default_route_equals_autograd():
    model, X = user_transformer(), modadd_tokens(120)
    slow = fit(model, X, LAYERS, jacobian="autograd", batch_size=32)
    fast = fit(model, X, LAYERS, compute_graph=True)
    assert_same_fit(fast, slow, 1e-9)
    assert_same_graph(fast.interaction_graph_, slow.interaction_graph(X), 1e-9)
    assert_same_graph(fast.interaction_graph(X), slow.interaction_graph(X), 1e-9)


def test_the_routes_the_user_transformer_takes():
    model, X = user_transformer(), modadd_tokens(40)
    session = ModelSession(model)
    # The MLP block is recognised; the attention is the traced section's; the
    # unembedding is affine.
    mlp = route_of(session, X, "blocks.0.mlp", "unembed")
    assert all(isinstance(mlp.form(kind), ResidualMLP) for kind in ("rows", "gram", "tangents"))
    assert mlp.m_prime == "closed form"
    attn = route_of(session, X, "blocks.0.attn", "blocks.0.mlp")
    assert attn.m_prime == "closed-form rows" and isinstance(attn.rows, TracedSection)
    assert [v.passed for v in attn.verdicts] == [True]
    unembed = route_of(session, X, "unembed")
    assert isinstance(unembed.rows, Affine) and unembed.gram is None and unembed.tangents is None
    assert unembed.m_prime == "affine"
    # The unembedding's rows are made once, for one sample.
    section = SectionJacobian(session, unembed)
    (f,) = session.read(X, ["unembed"])
    rows = torch.eye(8, dtype=torch.float64).reshape(8, 1, 8)
    ones = torch.ones(1, dtype=torch.float64)
    chunks = list(section.gradients(X, f, rows, ones))
    assert all(g.shape[1] == 1 for g in chunks)
    np.testing.assert_allclose(torch.cat(chunks)[:, 0, 0].T, model.unembed.W_U.detach())
    # The attention's are per sample.
    section = SectionJacobian(session, attn)
    (f,) = session.read(X, ["blocks.0.attn"])
    rows = torch.eye(8, dtype=torch.float64)[:3].reshape(3, 1, 8)
    assert all(g.shape[1] == len(X) for g in section.gradients(X, f, rows, ones))


# -- affine sections -----------------------------------------------------------------------
class AllPositive(nn.Module):
    """A ReLU section whose units all fire on positive data: linear there, not affine."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(3, 3)
        self.fc2 = nn.Linear(4, 2)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.eye(3))
            self.fc1.bias.zero_()
            self.fc2.weight.abs_()
            self.fc2.bias.fill_(0.5)

    def forward(self, x):
        h = self.fc1(x)  # the node layer 'fc2' reads relu(h) and its own copy of x[:, :1]
        return self.fc2(torch.relu(torch.cat([h, h[:, :1] ** 2], dim=1)))


def test_a_section_linear_on_the_probe_is_not_taken_for_affine():
    # All probe samples positive: every ReLU fires and the square's slope
    # varies, and flipping the points' sign shows the ReLU too.
    X = np.abs(np.random.default_rng(0).normal(size=(200, 3))) + 0.1
    model = AllPositive().double()
    session = ModelSession(model)
    fast = fit(model, X, ["fc1", "fc2"], batch_size=50, compute_graph=True)
    slow = fit(model, X, ["fc1", "fc2"], jacobian="autograd", batch_size=50)
    assert_same_fit(fast, slow, 1e-10)
    assert_same_graph(fast.interaction_graph_, slow.interaction_graph(X), 1e-10)
    # And the verdict itself: the code does not show it affine (fc1's output also
    # feeds a square), so the affine route is not asked, and its trace serves it.
    route = route_of(session, torch.as_tensor(X), "fc1", "fc2", kinds=("rows",))
    assert isinstance(route.rows, TracedSection)
    assert [v.form for v in route.verdicts] == [TracedSection.title]


def test_an_affine_head_is_served_by_one_sample(monkeypatch):
    # A linear head with positions: every sample's rows are the first one's.
    model = TanhThenLinear().double()
    X = np.random.default_rng(2).normal(size=(64, 6, 3))
    calls = []
    original = autograd.autograd_rows

    def counting(session, section, x, points, rows, weights, *, batched=None):
        calls.append(points.shape[0])
        yield from original(session, section, x, points, rows, weights, batched=batched)

    for module in (autograd, affine, forms_base, jacobian_module):
        monkeypatch.setattr(module, "autograd_rows", counting)
    fast = fit(model, X, ["head"], batch_size=16)
    # The check runs 16 samples at three scales, then the pass makes one sample's rows
    # once for all four batches.
    assert calls[-4:] == [16, 16, 16, 1]
    monkeypatch.undo()
    slow = fit(model, X, ["head"], jacobian="autograd", batch_size=16)
    assert_same_fit(fast, slow, 1e-10)


# -- compute_graph --------------------------------------------------------------------------
def test_compute_graph_reuses_the_fits_rows(monkeypatch):
    # No truncation drops variance here (all features kept), so the points of
    # the edges are the fit's: no section of autograd rows takes an edge pass.
    model, X = user_transformer(), modadd_tokens(120)
    passes = PassCounter(monkeypatch)
    fast = fit(model, X, LAYERS, compute_graph=True, truncation_threshold=0.0)
    assert all(fast.bases_[n].n_components == fast.bases_[n].lambdas.size for n in LAYERS[:1])
    edge_passes = [what for what in passes.names if what.startswith("edges")]
    # The attention's and the affine unembedding's edges come from the fit's rows;
    # only the section the residual MLP formula serves (no rows) takes a pass.
    assert edge_passes == ["edges 'blocks.0.mlp' -> 'unembed'"]
    monkeypatch.undo()
    slow = fit(model, X, LAYERS, jacobian="autograd", truncation_threshold=0.0)
    assert_same_graph(fast.interaction_graph_, slow.interaction_graph(X), 1e-9)


@pytest.mark.parametrize(
    "case", ["truncated", "over the budget", "integration rule", "stochastic M'"]
)
def test_compute_graph_falls_back_where_rows_cannot_serve(case, monkeypatch):
    model, X = tanh_mlp(d_in=4, hidden=8, d_out=3), np.random.default_rng(0).normal(size=(300, 4))
    params = dict(jacobian="autograd", batch_size=100)
    if case == "truncated":
        params["n_components"] = 2  # the kept features do not reconstruct the activations
    elif case == "over the budget":
        monkeypatch.setattr(jacobian_gram, "ROW_REUSE_BYTES", 20_000)
    elif case == "integration rule":
        params.update(integration="trapezoidal", n_intervals=2)
    else:
        params["n_stochastic_sources"] = 2
    passes = PassCounter(monkeypatch)
    fast = fit(model, X, ["fc1", "fc2", "fc3"], compute_graph=True, random_state=0, **params)
    assert any(what.startswith("edges") for what in passes.names)
    monkeypatch.undo()
    reference = fit(model, X, ["fc1", "fc2", "fc3"], random_state=0, **params)
    assert_same_fit(fast, reference, 1e-12)
    assert_same_graph(fast.interaction_graph_, reference.interaction_graph(X), 1e-9)


def test_compute_graph_of_a_pca_basis_equals_its_graph():
    model, X = tanh_mlp(), np.random.default_rng(0).normal(size=(80, 4))
    lib = fit(model, X, ["fc2", "fc3"], basis="pca", compute_graph=True)
    assert_same_graph(lib.interaction_graph_, lib.interaction_graph(X), 1e-12)


def test_compute_graph_off_leaves_no_graph():
    model, X = tanh_mlp(), np.random.default_rng(0).normal(size=(50, 4))
    lib = fit(model, X, ["fc2"], compute_graph=True)
    assert hasattr(lib, "interaction_graph_")
    lib.set_params(compute_graph=False).fit(X)
    assert not hasattr(lib, "interaction_graph_")


# -- batch_size="auto" ----------------------------------------------------------------------
def test_auto_batches_give_the_same_fit():
    model, X = user_transformer(), modadd_tokens(300)
    auto = fit(model, X, LAYERS)
    assert auto.get_params()["batch_size"] == "auto"
    # Small activations: one batch holds all samples, and the size is the budget's,
    # not this fit's sample count, for passes over more data later.
    assert auto.batch_size_ > 300 and auto.batch_size_ & (auto.batch_size_ - 1) == 0
    small = fit(model, X, LAYERS, batch_size=7)
    assert small.batch_size_ == 7
    assert_same_fit(auto, small, 1e-10)
    np.testing.assert_allclose(auto.transform(X), small.transform(X), rtol=1e-9, atol=1e-12)


def test_auto_batches_follow_the_budget(monkeypatch):
    model, X = tanh_mlp(d_in=4, hidden=8, d_out=3), np.random.default_rng(0).normal(size=(5000, 4))
    measured = []
    original = _batching.auto_batch_size

    def spy(per_sample, device, within_cache=None, most=None):
        measured.append(per_sample)
        return original(per_sample, device, within_cache, most)

    monkeypatch.setattr("sklearn_lib._base.auto_batch_size", spy)
    assert fit(model, X, ["fc2"]).batch_size_ == 4096
    # A budget of a few samples' working sets gives the smallest power of two above 64 that fits.
    monkeypatch.setattr(_batching, "CPU_BUDGET_BYTES", int(measured[0] * 4 * 200))
    assert fit(model, X, ["fc2"]).batch_size_ == 128
    monkeypatch.setattr(_batching, "CPU_BUDGET_BYTES", 1)
    assert fit(model, X, ["fc2"]).batch_size_ == 1  # not one sample fits: one at a time


def _conv_net():
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            c1=nn.Conv2d(3, 16, 3, padding=1), a1=nn.Tanh(),
            c2=nn.Conv2d(16, 16, 3, padding=1), a2=nn.Tanh(),
            pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), out=nn.Linear(16, 4),
        )
    )  # fmt: skip


@pytest.mark.parametrize("basis", ["pca", "lib"])
def test_auto_batches_keep_the_budget_of_a_pass(monkeypatch, basis):
    """Issue 24: a conv net's statistics pass held 1.4x its budget: its forward's maps
    (two alive at a time, without gradients) were not counted, only what autograd would
    save.  Every pass's tensors now stay within the budget (measured by what is alive
    at once), at a batch that still uses most of it."""
    from sklearn_lib import _lib

    budget = 24 << 20
    monkeypatch.setattr(_batching, "CPU_BUDGET_BYTES", budget)
    peaks = {}

    def metered(name, run):
        def wrapper(*args, **kwargs):
            with _batching._PeakBytes() as meter:
                result = run(*args, **kwargs)
            peaks[name] = meter.peak
            return result

        return wrapper

    # The fit's passes (the probe's checks before them are not a batch of a pass).
    monkeypatch.setattr(_lib, "fit_bases", metered("fit's passes", _lib.fit_bases))
    X = np.random.default_rng(0).normal(size=(96, 3, 24, 24)).astype(np.float32)
    lib = LIBTransformer(_conv_net(), "a1", basis=basis, feature_axis=1).fit(X)
    metered("transform", lib.transform)(X)
    metered("score", lib.score)(X)
    metered("ablation", ablation_curve)(lib, X, n_features=[1, 8])
    if basis == "lib":
        metered("graph", lib.interaction_graph)(X)
    assert 1 < lib.batch_size_ < 96
    assert all(peak <= budget for peak in peaks.values()), (lib.batch_size_, peaks)


def test_auto_batches_keep_traced_rows_within_the_cache(monkeypatch):
    # The attention's rows run in chunks of CACHED_ROWS: at 4096 samples, fewer.
    from sklearn_lib._routes.forms import traced_run

    monkeypatch.setattr(traced_run, "CACHED_ROWS", 1024)  # a bound within 16..4096
    model, X = user_transformer(), modadd_tokens(300)
    layers = ["blocks.0.attn", "blocks.0.mlp"]
    route = route_of(ModelSession(model), torch.as_tensor(X[:16]), *layers, kinds=("rows",))
    bound = route.rows.batch_within_cache()  # measured on the check's batch
    assert 16 < bound < 4096
    auto = fit(model, X, layers)
    assert auto.batch_size_ == 1 << (bound.bit_length() - 1)
    assert_same_fit(auto, fit(model, X, layers, batch_size=4096), 1e-9)


def test_auto_batches_with_stochastic_sources_stay_small(monkeypatch):
    model, X = tanh_mlp(), np.random.default_rng(0).normal(size=(600, 4))
    lib = fit(model, X, ["fc2"], n_stochastic_sources=2, random_state=0)
    assert lib.batch_size_ == stochastic.STOCHASTIC_BATCH_SIZE
    # ...and within the memory budget all the same (a language model at real width).
    monkeypatch.setattr(_batching, "CPU_BUDGET_BYTES", 1)
    assert fit(model, X, ["fc2"], n_stochastic_sources=2).batch_size_ == 1


def test_activation_transformer_batches_automatically():
    from sklearn_lib import ActivationTransformer

    model, X = tanh_mlp(), np.random.default_rng(0).normal(size=(70, 4))
    acts = ActivationTransformer(model, "fc2").fit(X)
    assert acts.batch_size_ == 4096  # 8 activations a sample: the largest batch
    np.testing.assert_allclose(
        acts.transform(X), ActivationTransformer(model, "fc2", batch_size=3).fit_transform(X)
    )
    # A fit on two samples must not leave later passes two samples at a time.
    assert ActivationTransformer(model, "fc2").fit(X[:2]).batch_size_ == 4096


def test_auto_sources_keep_cheap_exact_sections_exact():
    # A linear head of 12 positions x 8 outputs = 96 exact rows: rounds of
    # sources would run by autograd, but the affine route makes exact free.
    model = TanhThenLinear().double()
    model.head = nn.Linear(5, 8).double()
    X = np.random.default_rng(3).normal(size=(64, 12, 3))
    auto = fit(model, X, ["head"], n_stochastic_sources="auto", random_state=0)
    assert auto.n_stochastic_sources_ == {"head": None} and auto.stochastic_rounds_ == {}
    exact = fit(model, X, ["head"], batch_size=16)
    assert_same_fit(auto, exact, 1e-10)
    # With jacobian="autograd" the same section runs rounds (converged or not).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        rounds = fit(model, X, ["head"], n_stochastic_sources="auto", jacobian="autograd")
    assert rounds.stochastic_rounds_["head"].rounds >= 4


# -- what the review found ------------------------------------------------------------------
class Clip(nn.Module):
    """Piecewise linear, with kinks at +-3: no closed form, and not affine."""

    def forward(self, x):
        return torch.clamp(x, -3.0, 3.0)


@pytest.mark.parametrize("data", ["sorted by size", "blank first samples"])
def test_a_kink_the_probe_does_not_reach_is_never_taken_for_affine(data):
    # The first 16 samples, even at -1x and 2x, stay inside the linear range
    # (or are all zero): only the code can show the section is not affine.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), Clip(), nn.Linear(8, 3)).double()
    X = np.random.default_rng(0).normal(size=(400, 4))
    if data == "sorted by size":
        X = X[np.argsort(np.linalg.norm(X, axis=1))]
        X[200:] *= 5
    else:
        X[:32] = 0.0
        X[32:] *= 5
    fast = fit(model, X, ["1", "2"], compute_graph=True)
    slow = fit(model, X, ["1", "2"], jacobian="autograd")
    assert_same_fit(fast, slow, 1e-10)
    assert_same_graph(fast.interaction_graph_, slow.interaction_graph(X), 1e-9)


def test_affinity_is_shown_from_the_code():
    torch.manual_seed(0)
    clipped = nn.Sequential(nn.Linear(4, 8), Clip(), nn.Linear(8, 3)).double()
    assert not is_affine_section(clipped, Section("1", "2"))  # clamp is not affine
    assert is_affine_section(clipped, Section("2", OUTPUT_NODE))  # an nn.Linear is
    user = user_transformer()
    assert is_affine_section(user, Section("unembed", OUTPUT_NODE))  # x @ W_U + b_U
    assert not is_affine_section(user, Section("blocks.0.mlp", "unembed"))
    assert not is_affine_section(user, Section("blocks.0.attn", "blocks.0.mlp"))


class OwnFormsElsewhere(nn.Sequential):
    """A model whose own closed forms serve other node layers (NotImplemented here)."""

    def lib_section_vjp(self, params, src, dst, capture, points, cotangents, tangents=None):
        return NotImplemented


def test_auto_sources_count_only_closed_forms_that_serve():
    # 12 positions x 8 outputs = 96 exact rows through a clip: rounds, even
    # though the model has lib_section_vjp (it serves no section here).
    torch.manual_seed(0)
    model = OwnFormsElsewhere(nn.Linear(3, 8), Clip(), nn.Linear(8, 8)).double()
    X = np.random.default_rng(0).normal(size=(64, 12, 3)) * 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        lib = fit(model, X, ["1", "2"], n_stochastic_sources="auto", random_state=0)
    assert lib.n_stochastic_sources_["1"] is not None  # rounds of sources
    assert lib.n_stochastic_sources_["2"] is None  # an nn.Linear: affine, exact


def test_float32_drops_the_rounding_noise_of_activations_far_from_zero():
    # Activations spanning 4 of 8 dimensions at a mean of 100 and a spread of
    # 1, read by a layer that also weighs the 4 unused directions: float32
    # rounding gives those a variance near 1e-11 of the largest, which is
    # noise, not features.
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            up=nn.Linear(4, 8, bias=False), fc=nn.Linear(8, 8), act=nn.Tanh(), out=nn.Linear(8, 8)
        )
    ).double()
    W = model.up.weight.detach()
    Q, _ = torch.linalg.qr(torch.cat([W, torch.randn(8, 4, dtype=W.dtype)], 1))
    span, null = Q[:, :4], Q[:, 4:]
    with torch.no_grad():
        weight = 0.002 * torch.randn(8, 8, dtype=W.dtype) @ span @ span.T
        model.fc.weight.copy_(weight + torch.randn(8, 8, dtype=W.dtype) @ null @ null.T)
        model.fc.bias.copy_(-(model.fc.weight @ W).sum(1) * 100.0)
    X = 100 + np.random.default_rng(0).normal(size=(2000, 4))
    f64 = fit(model, X, ["fc", "out"])
    f32 = fit(model, X, ["fc", "out"], dtype="float32")
    assert f64.n_components_ == f32.n_components_ == 4
    np.testing.assert_allclose(f32.lambdas_, f64.lambdas_, rtol=1e-3)


def test_kept_rows_never_exceed_the_budget(monkeypatch):
    model, X = user_transformer(), modadd_tokens(120)
    budget = 200_000
    monkeypatch.setattr(jacobian_gram, "ROW_REUSE_BYTES", budget)
    held = []
    original = jacobian_gram.JacobianGram._keep

    def spy(self, g):
        result = original(self, g)
        held.append(self.kept_bytes if self.kept is not None else 0)
        return result

    monkeypatch.setattr(jacobian_gram.JacobianGram, "_keep", spy)
    fast = fit(model, X, LAYERS, compute_graph=True, truncation_threshold=0.0)
    assert held and max(held) <= budget
    monkeypatch.undo()
    slow = fit(model, X, LAYERS, jacobian="autograd", truncation_threshold=0.0)
    assert_same_graph(fast.interaction_graph_, slow.interaction_graph(X), 1e-9)


def test_the_plan_names_the_routes(capsys):
    model, X = user_transformer(), modadd_tokens(60)
    fit(model, X, LAYERS, verbose=True)
    plan = next(line for line in capsys.readouterr().err.splitlines() if "fitting runs" in line)
    assert "'blocks.0.attn' -> 'blocks.0.mlp': up to 8 rows per batch by closed-form rows" in plan
    assert "'blocks.0.mlp' -> 'unembed': by closed form" in plan
    assert "'unembed' -> 'output': affine, its rows made once, within the statistics" in plan
