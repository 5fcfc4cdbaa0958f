"""The fit as functions (``_fitting.fit``): inspect, price, plan and fit, against brute force.

Every basis is compared with the textbook steps of :mod:`_refs`: activations
by a plain hook, ``M'`` from full per-sample Jacobians, Lambda by numpy.
"""

import dataclasses
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from _refs import (
    activations_of,
    brute_force_edges,
    brute_force_m_prime,
    independent_rule,
    reference_lambdas,
)
from _sections import route_of
from torch import nn
from toy_models import PositionMixer, ResidualMLP, tanh_mlp

from sklearn_lib import LIBTransformer, integration_rule
from sklearn_lib._core.nodes import Section, sections_of
from sklearn_lib._fitting.basis import NodeBasis
from sklearn_lib._fitting.fit import (
    FitResult,
    FitSettings,
    bytes_per_sample,
    fit_bases,
    inspect,
    plan_fit,
    row_seconds,
    statistics_bytes,
)
from sklearn_lib._fitting.plan import make_plan
from sklearn_lib._fitting.stochastic import AUTO_MIN_ROUNDS, AUTO_SOURCES, STOCHASTIC_BATCH_SIZE
from sklearn_lib._model.batching import WORKING_SET_FACTOR
from sklearn_lib._model.session import ModelSession
from sklearn_lib._model.sources import ArraySource
from sklearn_lib._routes.integration import rule_tensors
from sklearn_lib._routes.table import RouteTable, autograd_route, decide_routes

TOL = dict(rtol=1e-9, atol=1e-13)


def fit(model, names, X, settings=None, compute_graph=False, batch_size=16):
    """The estimator's steps: inspect, routes, plan, then :func:`fit_bases`."""
    settings = settings or FitSettings()
    session = ModelSession(model, random_state=0)
    source = ArraySource(X, batch_size)
    probe = session.inputs(X[:16])
    sections = inspect(session, probe, names, settings)
    routes = None
    if settings.basis == "lib":
        rule = rule_tensors(settings.rule, session.device)
        kinds = ("gram", "rows", "tangents") if compute_graph else ("gram", "rows")
        routes = decide_routes(session, probe, sections, rule, kinds, jacobian=settings.jacobian)
    plan = plan_fit(session, source, probe, sections, routes, settings, compute_graph=compute_graph)
    return fit_bases(session, source, sections, plan, routes, settings)


def check_basis(basis, acts, m_prime, center=True):
    """Lambda by the textbook steps, and ``E[f_hat^T f_hat] = diag(Lambda)`` on the data."""
    expected = reference_lambdas(acts, m_prime, center=center)
    np.testing.assert_allclose(basis.lambdas, expected, **TOL)
    rows = acts.reshape(-1, acts.shape[-1])
    f_hat = (rows - basis.mean) @ basis.matrix
    np.testing.assert_allclose(f_hat.T @ f_hat / len(rows), np.diag(basis.lambdas), **TOL)


# -- FitSettings -------------------------------------------------------------------------
def test_fit_settings_defaults_are_the_estimators():
    settings = FitSettings()
    # The estimator's own defaults, turned into settings as its fit does.
    lib = LIBTransformer(tanh_mlp(), "fc2")
    defaults = lib.get_params()
    expected = {name: defaults[name] for name in dataclasses.asdict(settings) if name in defaults}
    expected["rule"] = integration_rule(defaults["integration"], defaults["n_intervals"])
    assert dataclasses.asdict(settings) == expected == lib._settings().__dict__
    assert settings == FitSettings() and hash(settings) == hash(FitSettings())
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.basis = "pca"


# -- inspect -----------------------------------------------------------------------------
def test_inspect_gives_the_sections_with_their_shapes(rng):
    session = ModelSession(tanh_mlp())
    probe = session.inputs(rng.normal(size=(16, 4)))
    sections = inspect(session, probe, ["fc1", "fc2", "fc3"], FitSettings())
    assert sections == (
        Section("fc1", "fc2", (4,), (8,)),
        Section("fc2", "fc3", (8,), (8,)),
        Section("fc3", "output", (8,), (3,)),
    )
    mixer = ModelSession(PositionMixer().double())
    probe = mixer.inputs(rng.normal(size=(16, 4, 3)))
    assert inspect(mixer, probe, ["mix", "head"], FitSettings()) == (
        Section("mix", "head", (4, 5), (2, 5)),
        Section("head", "output", (2, 5), (2, 3)),
    )


def test_inspect_refuses_a_node_layer_named_output(rng):
    model = nn.Sequential(OrderedDict(hidden=nn.Linear(4, 3), output=nn.Linear(3, 2))).double()
    session = ModelSession(model)
    probe = session.inputs(rng.normal(size=(8, 4)))
    with pytest.raises(ValueError, match="A node layer may not be called 'output'"):
        inspect(session, probe, ["hidden", "output"], FitSettings())


def test_inspect_refuses_a_node_layer_that_a_residual_bypasses(rng):
    session = ModelSession(ResidualMLP().double(), random_state=0)
    probe = session.inputs(rng.normal(size=(16, 4)))
    with pytest.raises(ValueError, match=r"Layer 'block.fc' is not a cut: the model output"):
        inspect(session, probe, ["block.fc"], FitSettings())
    # Layers that carry the whole stream are cuts.
    sections = inspect(session, probe, ["block", "out"], FitSettings())
    assert [(s.src, s.dst) for s in sections] == [("block", "out"), ("out", "output")]
    # PCA needs no Jacobians, so no cut: it takes any layer.
    (pca,) = inspect(session, probe, ["block.fc"], FitSettings(basis="pca"))
    assert pca == Section("block.fc", "output", (6,), (3,))


# -- bytes_per_sample and row_seconds ----------------------------------------------------
def _plan(sections, settings):
    """A plan of autograd routes for ``sections`` (no data is read)."""
    routes = RouteTable([autograd_route(s) for s in sections])
    return make_plan("test", sections, routes, settings, None)


def test_bytes_per_sample(rng):
    X = rng.normal(size=(16, 4))
    measured = {}
    for hidden in (8, 64):
        session = ModelSession(tanh_mlp(hidden=hidden))
        probe = session.inputs(X)
        sections = inspect(session, probe, ["fc2", "fc3"], FitSettings())
        plan = _plan(sections, FitSettings())
        lib = bytes_per_sample(session, probe, sections, plan)
        pca = bytes_per_sample(session, probe, sections, _plan(sections, FitSettings(basis="pca")))
        # PCA runs forward passes only: autograd saves nothing there, a LIB pass does.
        assert lib > 0 and 0 <= pca <= lib
        # At most over the sections: both sections cost no less than the last alone.
        assert lib >= bytes_per_sample(session, probe, sections[1:], plan)
        measured[hidden] = lib, pca
        # A fit that asks for stochastic sources measures alike, and caps its batch,
        # also under "auto" where every section ends exact (here 8 rows each).
        for sources in (3, "auto"):
            plan = _plan(sections, FitSettings(n_stochastic_sources=sources))
            # Sources drawn per sample add their signs, a byte per source, output
            # position and next feature, held for the batch.
            signs = [
                (3 if sources == 3 else 16) * math.prod(s.section.dst_shape)
                for s in plan.sections
                if s.per_sample
            ]
            assert bool(signs) is (sources == 3)  # "auto" stays exact: 8 rows a section
            expected = lib + max(signs, default=0) / WORKING_SET_FACTOR
            assert bytes_per_sample(session, probe, sections, plan) == pytest.approx(expected)
            assert plan.most_batch_size == STOCHASTIC_BATCH_SIZE
        assert _plan(sections, FitSettings()).most_batch_size is None
    # Wider activations, more bytes saved per sample.
    assert measured[64][0] > measured[8][0] and measured[64][1] >= measured[8][1]


class Unreversible(torch.autograd.Function):
    """The identity, whose backward pass fails."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("no backward here")


class FailsBackward(nn.Module):
    def forward(self, x):
        return Unreversible.apply(x)


@pytest.mark.parametrize("n_rows", [1, 4])
def test_row_seconds_is_a_positive_time_per_row_and_sample(rng, n_rows):
    session = ModelSession(tanh_mlp())
    probe = session.inputs(rng.normal(size=(16, 4)))
    route = autograd_route(Section("fc2", "fc3", (8,), (8,)))
    seconds = row_seconds(session, probe, FitSettings(), route, n_rows)
    assert isinstance(seconds, float) and 0 < seconds < 1


@pytest.mark.parametrize("exact", [False, True])
def test_row_seconds_times_exact_rows_where_they_go_back_per_position(monkeypatch, exact):
    """A traced section's exact rows cost less than random ones: an exact fit is priced on
    the exact rows of ``n_rows`` next features at every position; any other on sources."""
    from sklearn_lib._routes.cotangents import ExactRows
    from sklearn_lib._routes.jacobian import SectionJacobian

    model = PositionMixer().double()
    session = ModelSession(model)
    probe = session.inputs(torch.randn(8, 4, 3).double())  # (n, P, d_in)
    route = route_of(session, probe, "mix", kinds=("rows", "gram"))
    timed = []
    monkeypatch.setattr(SectionJacobian, "gram_sum", lambda self, x, f, c, rule: timed.append(c))
    seconds = row_seconds(session, probe, FitSettings(), route, 4, exact=exact)
    assert seconds is not None and len(timed) == (2 if exact else 3)
    assert type(route.form("rows")).__name__ == "TracedSection"  # traced by fx
    assert isinstance(timed[0].rows, ExactRows) == exact
    assert timed[0].rows.shape[0] == (timed[0].n_positions if exact else 4)  # one feature


def test_row_seconds_prices_whole_rows_where_the_width_would_not_go_per_position(monkeypatch):
    """Priced on one feature, rows per position fit; the fit's width of them would not, and
    takes whole rows: so is it priced (found in review)."""
    from sklearn_lib._routes.cotangents import ExactRows
    from sklearn_lib._routes.jacobian import SectionJacobian

    monkeypatch.setattr("sklearn_lib._routes.forms.traced_run.PER_POSITION_BYTES", 1)
    session = ModelSession(PositionMixer().double())
    probe = session.inputs(torch.randn(8, 4, 3).double())
    route = route_of(session, probe, "mix", kinds=("rows", "gram"))
    timed = []
    original = SectionJacobian.gram_sum

    def spy(self, x, f, c, rule):
        timed.append(c)
        return original(self, x, f, c, rule)

    monkeypatch.setattr(SectionJacobian, "gram_sum", spy)
    assert row_seconds(session, probe, FitSettings(), route, 4, exact=True) is not None
    assert isinstance(timed[0].rows, ExactRows)  # one feature first: it fits
    assert not isinstance(timed[-1].rows, ExactRows) and timed[-1].rows.shape[0] == 4


def test_row_seconds_is_none_when_the_model_fails_and_says_so(rng):
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(fc1=nn.Linear(4, 5), bad=FailsBackward(), fc2=nn.Linear(5, 2))
    ).double()
    session = ModelSession(model)
    probe = session.inputs(rng.normal(size=(8, 4)))
    route = autograd_route(Section("fc1", "output", (4,), (2,)))
    said = r"Timing the section 'fc1' -> the model output on the probe failed \(RuntimeError: "
    for n_rows in (1, 4):
        with pytest.warns(RuntimeWarning, match=said + "no backward here") as caught:
            assert row_seconds(session, probe, FitSettings(), route, n_rows) is None
        assert caught[0].filename == __file__  # the caller's line, past the package's


class FailsOnce(nn.Module):
    """The identity, whose backward pass raises ``error`` (once)."""

    def __init__(self, error):
        super().__init__()
        self.error = error

    def forward(self, x):
        return FailingBackward.apply(x, self)

    def __deepcopy__(self, memo):  # the session's copy raises the same error
        return self


class FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, owner):
        ctx.owner = owner
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        error, ctx.owner.error = ctx.owner.error, None
        if error is not None:
            raise error
        return grad, None


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        MemoryError(),
        KeyboardInterrupt(),
    ],
    ids=["OutOfMemoryError", "cuda-message", "MemoryError", "KeyboardInterrupt"],
)
def test_row_seconds_lets_out_of_memory_and_stops_through(rng, error):
    """Pricing never stops a fit, except where nothing may be swallowed (the README's
    promise: out of memory is never swallowed)."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(4, 5), bad=FailsOnce(error))).double()
    session = ModelSession(model)
    probe = session.inputs(rng.normal(size=(8, 4)))
    route = autograd_route(Section("fc1", "output", (4,), (5,)))
    with pytest.raises(type(error)) as info:
        row_seconds(session, probe, FitSettings(), route, 1)
    assert info.value is error
    assert row_seconds(session, probe, FitSettings(), route, 1) > 0  # a one-time fault


# -- fit_bases ---------------------------------------------------------------------------
RULES = {"gradient": ("gradient", 0), "trapezoidal": ("trapezoidal", 2)}


@pytest.mark.parametrize("jacobian", ["auto", "autograd"])
@pytest.mark.parametrize("integration", list(RULES))
def test_fit_bases_equals_the_textbook_steps(rng, jacobian, integration):
    model = tanh_mlp()
    X = rng.normal(size=(24, 4))
    alphas, weights = independent_rule(*RULES[integration])
    rule = tuple(tuple(float(v) for v in values) for values in (alphas, weights))
    result = fit(model, ["fc1", "fc2", "fc3"], X, FitSettings(rule=rule, jacobian=jacobian))
    assert isinstance(result, FitResult)
    assert list(result.bases) == ["fc1", "fc2", "fc3", "output"]
    assert result.rounds == {} and result.edges == {}
    bases = result.bases
    assert all(isinstance(b, NodeBasis) and b.name == n for n, b in bases.items())
    # The output: the identity, never truncated, with the outputs' mean.
    out = bases["output"]
    assert out.kind == "identity" and out.n_components == 3
    np.testing.assert_array_equal(out.matrix, np.eye(3))
    with torch.no_grad():
        outputs = model(torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(out.mean, outputs.mean(0), **TOL)
    # Backwards from the output, each basis from the next one's kept matrix.
    tails = {
        "fc3": model.fc3,
        "fc2": lambda z: model.act2(model.fc2(z)),
        "fc1": lambda z: model.act1(model.fc1(z)),
    }
    for name in ("fc3", "fc2", "fc1"):
        acts = activations_of(model, name, X)
        nxt = {"fc3": "output", "fc2": "fc3", "fc1": "fc2"}[name]
        m_prime = brute_force_m_prime(
            tails[name], acts, bases[nxt].kept_matrix, alphas=alphas, weights=weights
        )
        check_basis(bases[name], acts, m_prime)
        np.testing.assert_allclose(bases[name].mean, acts.mean(0), **TOL)
        assert bases[name].kind == "lib"


def test_fit_bases_with_positions(rng):
    model = PositionMixer().double()
    X = rng.normal(size=(16, 4, 3))
    bases = fit(model, ["mix", "head"], X).bases
    assert [b.shape for b in bases.values()] == [(4, 5), (2, 5), (2, 3)]
    acts = activations_of(model, "head", X)
    check_basis(bases["head"], acts, brute_force_m_prime(model.head, acts, np.eye(3)))
    acts = activations_of(model, "mix", X)
    m_prime = brute_force_m_prime(model.mix, acts, bases["head"].kept_matrix)
    check_basis(bases["mix"], acts, m_prime)


def test_n_components_truncates_the_first_node_only(rng):
    X = rng.normal(size=(60, 4))
    full = fit(tanh_mlp(), ["fc1", "fc2"], X).bases
    cut = fit(tanh_mlp(), ["fc1", "fc2"], X, FitSettings(n_components=2)).bases
    assert cut["fc1"].n_components == 2 and full["fc1"].n_components == 4
    assert cut["fc2"].n_components == full["fc2"].n_components == 8
    for name in ("fc1", "fc2"):
        np.testing.assert_allclose(cut[name].lambdas, full[name].lambdas, **TOL)


def test_uncentred_fit(rng):
    model = tanh_mlp()
    X = rng.normal(size=(60, 4)) + 1.0
    bases = fit(model, ["fc3"], X, FitSettings(center=False)).bases
    np.testing.assert_array_equal(bases["fc3"].mean, np.zeros(8))
    acts = activations_of(model, "fc3", X)
    m_prime = brute_force_m_prime(model.fc3, acts, np.eye(3))
    check_basis(bases["fc3"], acts, m_prime, center=False)


def test_pca_bases_are_the_activations_principal_axes(rng):
    model = tanh_mlp()
    X = rng.normal(size=(60, 4))
    result = fit(model, ["fc2", "fc3"], X, FitSettings(basis="pca"))
    assert result.rounds == {} and result.edges == {}
    for name in ("fc2", "fc3"):
        acts = activations_of(model, name, X)
        variances = np.sort(np.linalg.eigvalsh(np.cov(acts, rowvar=False, bias=True)))[::-1]
        basis = result.bases[name]
        assert basis.kind == "pca"
        np.testing.assert_allclose(basis.lambdas, variances[: len(basis.lambdas)], **TOL)
        np.testing.assert_allclose(
            basis.matrix.T @ basis.matrix, np.eye(len(basis.lambdas)), atol=1e-13
        )


def test_a_pca_output_basis_leaves_the_node_layers_as_they_are(rng):
    model = tanh_mlp()
    X = rng.normal(size=(60, 4))
    identity = fit(model, ["fc2", "fc3"], X).bases
    rotated = fit(model, ["fc2", "fc3"], X, FitSettings(output_basis="pca")).bases
    out = rotated["output"]
    with torch.no_grad():
        outputs = model(torch.as_tensor(X)).numpy()
    variances = np.sort(np.linalg.eigvalsh(np.cov(outputs, rowvar=False, bias=True)))[::-1]
    assert out.kind == "pca" and out.n_components == 3
    np.testing.assert_allclose(out.lambdas, variances, **TOL)
    for name in ("fc2", "fc3"):
        np.testing.assert_allclose(rotated[name].lambdas, identity[name].lambdas, **TOL)


class PerPosition(nn.Module):
    """``(n, 70, 2) -> (n, 70, 1)``, position by position: 70 exact rows, over the 64 of "auto"."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.act, self.fc2 = nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def test_auto_sources_run_rounds_and_report_them(rng):
    """Position-wise with one output feature: every +-1 source is exact, so rounds agree at once."""
    X = rng.normal(size=(16, 70, 2))
    settings = FitSettings(jacobian="autograd")
    exact = fit(PerPosition().double(), ["fc1"], X, settings)
    auto = fit(
        PerPosition().double(),
        ["fc1"],
        X,
        dataclasses.replace(settings, n_stochastic_sources="auto"),
    )
    (rounds,) = auto.rounds.values()
    assert list(auto.rounds) == ["fc1"]
    assert rounds.converged and rounds.rounds == AUTO_MIN_ROUNDS
    assert rounds.n_sources == AUTO_MIN_ROUNDS * AUTO_SOURCES
    np.testing.assert_allclose(auto.bases["fc1"].lambdas, exact.bases["fc1"].lambdas, **TOL)
    assert exact.rounds == {}


def test_kept_rows_give_the_edges_of_the_sections_they_reconstruct(rng):
    """With ``compute_graph``, exact autograd rows serve the edges where the basis keeps every
    direction of the activations (``fc2``); ``fc3`` keeps 3 of 8, so its edges need a pass."""
    model = tanh_mlp()
    X = rng.normal(size=(60, 4))
    settings = FitSettings(jacobian="autograd")
    result = fit(model, ["fc2", "fc3"], X, settings, compute_graph=True)
    bases = result.bases
    assert bases["fc2"].n_components == 8 and bases["fc3"].n_components == 3
    assert list(result.edges) == [("fc2", "fc3")]
    E, n = result.edges[("fc2", "fc3")]
    assert n == 60
    acts = activations_of(model, "fc2", X)
    tail = lambda z: model.act2(model.fc2(z))  # noqa: E731
    expected = brute_force_edges(tail, acts, bases["fc2"], bases["fc3"])
    np.testing.assert_allclose(E, expected, **TOL)
    # The bases are those of a fit without the graph.
    plain = fit(model, ["fc2", "fc3"], X, settings).bases
    for name in ("fc2", "fc3"):
        np.testing.assert_allclose(bases[name].lambdas, plain[name].lambdas, **TOL)


def test_a_wide_layer_says_its_linear_algebra_as_it_starts(capsys):
    """1024 features: the seconds of eigendecompositions are announced, not silent."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 1024), torch.nn.Tanh(), torch.nn.Linear(1024, 2))
    X = np.random.default_rng(0).normal(size=(40, 3))
    LIBTransformer(model, "2", verbose=True).fit(X)
    err = capsys.readouterr().err
    assert "basis of '2': M' and the eigendecompositions of 1024 x 1024 matrices (about" in err
    # Then each step as it starts: none runs for long unannounced.
    steps = [
        "M' from the slopes gathered in the statistics pass",
        "the eigendecomposition of the activations' Gram",
        "M in whitened coordinates",
        "the eigendecomposition of M",
        "C and its pseudo-inverse",
    ]
    said = [
        line.split("basis of '2': ")[1] for line in err.splitlines() if "basis of '2': " in line
    ]
    assert said[1:] == steps
    LIBTransformer(model, "2", basis="pca", verbose=True).fit(X)
    said = [
        line.split("basis of '2': ")[1]
        for line in capsys.readouterr().err.splitlines()
        if "basis of '2': " in line
    ]
    assert said == ["the eigendecomposition of 1024 x 1024 matrices (about 1 s)", steps[1]]
    narrow = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    LIBTransformer(narrow, "2", verbose=True).fit(X)
    assert "basis of" not in capsys.readouterr().err


def _relu_chain(widths=(16, 48, 48, 4)):
    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:]), start=1):
        layers += [(f"fc{i}", nn.Linear(a, b)), (f"act{i}", nn.ReLU())]
    return nn.Sequential(OrderedDict(layers[:-1]))


def test_a_float32_fit_takes_certified_grams_in_float32_and_says_so(capsys, monkeypatch):
    """Lambda within the certificate's bound of the same fit's with float64 products.

    Each Gram moves each Lambda by at most ``LOW_PRECISION_RTOL`` relative;
    down a chain of three node layers the next bases carry their own, so
    three times that.
    """
    import sklearn_lib._core.gram_sum as gram_sum

    # A certificate 10 times looser than the default: how close float32 products of
    # these ReLU layers come is the CPU's (1e-5 passed on one Xeon, 3e-5 was needed on
    # an AVX-512 one), and this test is about what a certified Gram does.
    monkeypatch.setattr(gram_sum, "LOW_PRECISION_RTOL", 1e-4)
    model, X = _relu_chain(), np.random.default_rng(0).normal(size=(3000, 16)).astype(np.float32)
    fit32 = lambda: LIBTransformer(  # noqa: E731
        model, "fc1", downstream_layers=["fc2", "fc3"], dtype="float32", verbose=True
    ).fit(X)
    low = fit32()
    err = capsys.readouterr().err
    assert "Grams multiplied in float32 where a Gram's first rows certify them" in err
    assert (
        "Gram products of activations 'fc1', activations 'fc2', activations 'fc3': "
        "float32 (certified within 0.0001 on its first 3,000 rows)" in err
    )
    assert "Gram products of slopes 'fc1', slopes 'fc2', slopes 'fc3': float32 (exact" in err
    certified = gram_sum.LOW_PRECISION_RTOL
    monkeypatch.setattr(gram_sum, "LOW_PRECISION_RTOL", 0.0)  # no certificate passes
    exact = fit32()
    assert "activations 'fc3': float64 (float32 products not within 0 " in capsys.readouterr().err
    for name in ("fc1", "fc2", "fc3"):
        got, expected = low.bases_[name].lambdas, exact.bases_[name].lambdas
        assert not np.array_equal(got, expected)  # the products did differ
        np.testing.assert_allclose(got, expected, rtol=3 * certified)


def test_a_float64_fit_says_nothing_of_gram_products(capsys):
    model, X = _relu_chain(), np.random.default_rng(0).normal(size=(300, 16))
    LIBTransformer(model, "fc1", downstream_layers=["fc2"], verbose=True).fit(X)
    err = capsys.readouterr().err
    assert "Gram products" not in err and "Grams multiplied" not in err


def test_auto_batches_of_a_statistics_pass_hold_its_activations():
    """Closed forms gathered by the statistics pass build no graph, so their batches are
    bounded by what the pass holds: 64 positions of 548 values in float64, and the
    float64 rows and centred rows of the widest layer, with the forward's own tensors
    (twice: scoring runs the model twice a batch), which halve the batch here."""
    from sklearn_lib._model.batching import auto_batch_size

    model = _relu_chain((32, 256, 256, 4))
    X = np.random.default_rng(0).normal(size=(300, 64, 32)).astype(np.float32)
    lib = LIBTransformer(model, "fc1", downstream_layers=["fc2", "fc3"]).fit(X)
    sections = sections_of(
        ["fc1", "fc2", "fc3"], {"fc1": (64, 32), "fc2": (64, 256), "fc3": (64, 256)}, (64, 4)
    )
    held = statistics_bytes(sections, 8)
    assert held == (8 * 64 * (32 + 256 + 256 + 4) + 16 * 64 * 256) / 4
    assert auto_batch_size(held, "cpu") == 512 and lib.batch_size_ == 256


def test_a_wide_output_counts_once_in_its_dtype_unless_it_takes_a_gram():
    """A language model's logits: read, their mean summed as read; a Gram only for PCA."""
    sections = sections_of(["h"], {"h": (16, 32)}, (16, 5000))
    logits = statistics_bytes(sections, 4)
    assert logits == (4 * 16 * (32 + 5000) + 16 * 16 * 32) / 4
    assert statistics_bytes(sections, 4, output_gram=True) == logits + 16 * 16 * (5000 - 32) / 4


def test_the_inspection_and_cut_checks_run_on_the_first_samples_of_the_probe(monkeypatch):
    """Structural checks: the first ``CHECK_SAMPLES`` of the probe's 64, for the node
    layers and every section (a path around a node layer, or samples that interact,
    still show: ``tests/integration/test_errors.py``)."""
    from sklearn_lib._fitting import fit as fit_module

    seen, inspect = [], fit_module.inspect_node_layers
    monkeypatch.setattr(
        fit_module,
        "inspect_node_layers",
        lambda s, x, names: seen.append(len(x)) or inspect(s, x, names),
    )
    monkeypatch.setattr(fit_module, "check_cut", lambda s, x, section, rng: seen.append(len(x)))
    monkeypatch.setattr(fit_module, "check_gradient_flow", lambda s, x, sec: seen.append(len(x)))
    X = np.random.default_rng(0).normal(size=(100, 4))
    LIBTransformer(tanh_mlp(), "fc2", downstream_layers=["fc3"]).fit(X)
    assert seen == [fit_module.CHECK_SAMPLES] * 5 and fit_module.CHECK_SAMPLES < 64
