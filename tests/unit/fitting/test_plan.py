"""The fit's plan (``_fitting.plan``): its decisions, and that what it announces is what runs.

A toy model holds one section of every route: autograd (a product of two
functions of the input), the residual MLP formula, the Linear -> elementwise
formula (gathered in the statistics pass), and two affine sections.  Full
backward hooks on the sections' source modules count every backward pass
through them (they travel into the fit's private copy with the model); a
patched ``run_pass`` says which pass is running.  The counts must be the
plan's, for ``n_stochastic_sources`` None, an int and ``"auto"``.
"""

import collections
import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from sklearn_lib import LIBTransformer
from sklearn_lib._core.nodes import sections_of
from sklearn_lib._fitting import fit as fit_module
from sklearn_lib._fitting.fit import FitSettings
from sklearn_lib._fitting.plan import DENSE_FLOPS, dense_seconds, make_plan
from sklearn_lib._model.session import ModelSession
from sklearn_lib._routes.forms.base import ClosedForm
from sklearn_lib._routes.forms.final_linear import FinalLinear
from sklearn_lib._routes.table import RouteTable, SectionRoute, autograd_route

D, P, N, BATCH = 24, 3, 96, 32  # 3 * 24 = 72 exact rows: more than "auto" keeps exact
LAYERS = ["mix", "mlp", "chain.0", "chain.2", "head"]


class Mix(nn.Module):
    """``x + tanh(x) * cumsum(x W)``: neither affine nor a residual MLP, and a cumulative
    sum has no batched product in the traced section's table, so autograd serves it."""

    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.randn(D, D) / D**0.5)

    def forward(self, x):
        return x + torch.tanh(x) * torch.cumsum(x @ self.W, -1)


class Block(nn.Module):
    """``x + relu(x A + a) B``: the residual MLP formula serves it."""

    def __init__(self):
        super().__init__()
        self.A, self.a = nn.Parameter(torch.randn(D, 16) / 4), nn.Parameter(torch.randn(16))
        self.B = nn.Parameter(torch.randn(16, D) / 4)

    def forward(self, x):
        return x + torch.relu(x @ self.A + self.a) @ self.B


class Head(nn.Module):
    """``x W + b``: affine."""

    def __init__(self):
        super().__init__()
        self.W, self.b = nn.Parameter(torch.randn(D, 5)), nn.Parameter(torch.randn(5))

    def forward(self, x):
        return x @ self.W + self.b


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mix, self.mlp, self.head = Mix(), Block(), Head()
        # chain.0 -> chain.2 is Linear -> elementwise; chain.2 -> head is affine.
        self.chain = nn.Sequential(nn.Linear(D, 12), nn.Tanh(), nn.Linear(12, D))

    def forward(self, x):
        return self.head(self.chain(self.mlp(self.mix(x))))


ROUTES = {
    "mix": "autograd",
    "mlp": "closed form",
    "chain.0": "statistics pass",
    "chain.2": "affine",
    "head": "affine",
}


class Counter:
    """Backward passes through each source module, per pass over the data."""

    def __init__(self, model, monkeypatch):
        self.passes = []  # the passes' names, in order
        self.rows = collections.defaultdict(collections.Counter)  # pass index -> layer -> count
        self.current = None
        for name in LAYERS:
            module = model.get_submodule(name)
            module.register_full_backward_hook(self._hook(name))
        original = ModelSession.run_pass

        def run_pass(session, source, accumulators, what):
            self.passes.append(what)
            self.current = len(self.passes) - 1
            try:
                return original(session, source, accumulators, what)
            finally:
                self.current = None

        monkeypatch.setattr(ModelSession, "run_pass", run_pass)

    def _hook(self, name):
        def hook(module, grad_input, grad_output):
            if self.current is not None:
                self.rows[self.current][name] += 1

        return hook


@pytest.fixture
def plans(monkeypatch):
    """Every plan a fit makes, as it makes it."""
    made = []
    original = fit_module.plan_fit

    def plan_fit(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(fit_module, "plan_fit", plan_fit)
    import sklearn_lib._lib as lib_module

    monkeypatch.setattr(lib_module, "plan_fit", plan_fit)
    return made


def _fit(sources, monkeypatch, plans):
    model = Net().double()
    counter = Counter(model, monkeypatch)
    X = np.random.default_rng(0).normal(size=(N, P, D))
    lib = LIBTransformer(
        model,
        LAYERS[0],
        downstream_layers=LAYERS[1:],
        batch_size=BATCH,
        truncation_threshold=0.0,
        n_stochastic_sources=sources,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        lib.fit(X)
    (plan,) = plans
    return lib, plan, counter


@pytest.mark.parametrize("sources", [None, 4, "auto"])
def test_the_plan_counts_the_passes_and_rows_that_run(sources, monkeypatch, plans):
    lib, plan, counter = _fit(sources, monkeypatch, plans)
    n_batches = -(-N // BATCH)
    # The Linear -> elementwise slopes join the statistics pass unless sources are asked for.
    routes = {**ROUTES, "chain.0": "closed form" if isinstance(sources, int) else ROUTES["chain.0"]}
    assert {s.section.src: s.route for s in plan.sections} == routes
    # The passes: the statistics pass first, then one per section that does not join it
    # (rounds: at least the fewest), in backward order.
    assert counter.passes[0].startswith("activation statistics")
    own = [s for s in reversed(plan.sections) if not s.joins]
    # Rounds, and the exact pass of rounds that stopped at the exact cost.
    rounds = {src: r.rounds + r.exact for src, r in lib.stochastic_rounds_.items()}
    expected = [pass_ for s in own for pass_ in [s.section.src] * rounds.get(s.section.src, 1)]
    assert [what.split("'")[1] for what in counter.passes[1:]] == expected
    assert len(counter.passes) == plan.passes + sum(r - 4 for r in rounds.values())
    # The statistics pass gathers what the plan joins to it, and nothing else.
    joined = {s.section.src for s in plan.sections if s.joins}
    assert all(f"{name!r}" in counter.passes[0] for name in joined - {"chain.0"})
    assert ("slopes 'chain.0'" in counter.passes[0]) is (not isinstance(sources, int))
    # Backward rows: per pass, per section, as the plan says.
    for index, what in enumerate(counter.passes):
        counted = counter.rows[index]
        for s in plan.sections:
            src = s.section.src
            runs_here = (index == 0) == s.joins and (index == 0 or what.split("'")[1] == src)
            if not runs_here:
                assert counted[src] == 0, (what, src, counted)
            elif s.sources == "auto" and "(exact: cheaper" not in what:
                assert counted[src] == 16 * n_batches, (what, src)
            else:
                if s.sources == "auto":  # the rounds' exact pass
                    s = dataclasses.replace(s, sources=None)
                # Exact rows: the next node's kept features at each output position.
                kept = lib.bases_[s.section.dst].n_components
                assert counted[src] == s.rows_per_pass(n_batches, kept), (what, src, counted)
                assert counted[src] <= s.rows_per_pass(n_batches)  # the plan's bound
    if sources == "auto":
        assert set(rounds) == {"mix"}  # the only section of autograd rows, 72 > 64 of them
        # 72 rows: 4 rounds (64 sources), then the exact pass where 6 would cost 96.  (One
        # exact pass is priced below 4 rounds, but not by half: rounds.)
        mix = lib.stochastic_rounds_["mix"]
        assert mix.converged and (not mix.exact or mix.rounds == 4)
        assert lib.n_stochastic_sources_["mix"] == (None if mix.exact else 16 * mix.rounds)
    # What the fit reports is the plan's.
    expected_sources = {s.section.src: s.sources for s in plan.sections}
    for src, n in lib.n_stochastic_sources_.items():
        if src not in rounds:
            assert n == expected_sources[src]


def test_the_plan_counts_the_edges_pass_of_compute_graph(monkeypatch, plans):
    model = Net().double()
    counter = Counter(model, monkeypatch)
    X = np.random.default_rng(0).normal(size=(N, P, D))
    params = dict(downstream_layers=LAYERS[1:], batch_size=BATCH, truncation_threshold=0.0)
    LIBTransformer(model, LAYERS[0], compute_graph=True, **params).fit(X)
    (plan,) = plans
    assert len(counter.passes) == plan.passes
    # The sections whose M' kept no rows (closed forms) take the last pass; the others
    # (autograd and affine rows, all features kept) give their edges from their rows.
    kept = {s.section.src for s in plan.sections if s.keep_rows}
    assert kept == {"mix", "chain.2", "head"}
    edges = counter.passes[-1]
    assert edges.startswith("edges") and all(str(s) in edges for s in plan.edges_pass)
    assert {s.src for s in plan.edges_pass} == {"mlp", "chain.0"}


def test_the_plan_announced_is_the_plan_run(monkeypatch, plans, capsys):
    model = Net().double()
    X = np.random.default_rng(0).normal(size=(N, P, D))
    LIBTransformer(model, "mix", downstream_layers=LAYERS[1:], batch_size=BATCH, verbose=True).fit(
        X
    )
    (plan,) = plans
    line = next(line for line in capsys.readouterr().err.splitlines() if "fitting runs" in line)
    assert plan.with_batch_size(BATCH).describe() in line
    assert f"fitting runs {plan.passes} pass(es)" in line


def test_a_stream_is_announced_in_its_own_batches(plans, capsys):
    """A DataLoader brings its batches: the plan names no batch size of its own."""
    model = Net().double()
    X = torch.from_numpy(np.random.default_rng(0).normal(size=(N, P, D)))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X), batch_size=7)
    LIBTransformer(model, "mix", downstream_layers=LAYERS[1:], verbose=True).fit(loader)
    line = next(line for line in capsys.readouterr().err.splitlines() if "fitting runs" in line)
    assert f"over {N} samples in the stream's batches" in line
    assert "in batches of" not in line


# -- plans made from routes and settings alone ------------------------------------------
def test_the_plan_counts_passes_and_rows():
    sections = sections_of(["a", "b"], {"a": (16, 8), "b": (16, 4)}, (16, 10))
    routes = RouteTable([autograd_route(s) for s in sections])
    priced = make_plan("X", sections, routes, FitSettings(), 1000, batch_size=100)
    assert priced.passes == 2  # statistics (with b's M') and a's M'
    assert [s.backward_rows for s in priced.sections] == [16 * 4, 16 * 10]
    assert priced.seconds is None  # nothing timed: no estimate
    timed, asked = {"a": 1e-6, "b": 2e-6}, set()

    def price(route, n_rows, exact, repeats=None):
        asked.add(exact)
        return timed[route.section.src]

    priced = make_plan("X", sections, routes, FitSettings(), 1000, price=price)
    assert priced.seconds == pytest.approx(64 * 1000 * 1e-6 + 160 * 1000 * 2e-6)
    assert asked == {True}  # exact rows: priced as such
    sampled = FitSettings(n_stochastic_sources=8, output_basis="pca")
    priced = make_plan("X", sections, routes, sampled, 1000, price=price)
    assert asked == {True, False}
    assert priced.passes == 3 and [s.backward_rows for s in priced.sections] == [8, 8]
    assert "8 random sources per batch, a backward row each" in priced.describe()


def _final_map_route(section, shares_positions):
    """The route of a section that ends in a final linear map of 100 inputs (found so)."""
    form = FinalLinear(None, section, {"head": nn.Linear(100, section.dst_shape[-1])})
    form.final, form.shares_positions = "head", shares_positions
    return dataclasses.replace(autograd_route(section), gram=form)


def test_auto_keeps_a_final_map_exact_where_priced_at_half_the_fewest_rounds():
    """A final map whose 100 exact rows each serve every position: rounds by their count
    (100 > 4 x 16), but exact where the price says the exact pass costs at most half the
    fewest rounds (the last section then joins the statistics pass), and the plan says why.
    Other routes are never priced for it: their counts decide."""
    (section,) = sections_of(["a"], {"a": (16, 8)}, (16, 200))
    auto = FitSettings(n_stochastic_sources="auto")

    def plan_at(exact_price, sampled_price, shares_positions=True):
        def price(route, n_rows, exact, repeats=None):
            return exact_price if exact else sampled_price

        routes = RouteTable([_final_map_route(section, shares_positions)])
        return make_plan("X", [section], routes, auto, 256, price=price).sections[0]

    # 100 rows at 0.9 us against 4 rounds of 16 rows at 3 us: 90 us <= 192 us / 2, exact.
    cheap = plan_at(0.9e-6, 3e-6)
    assert cheap.sources is None and cheap.joins and cheap.backward_rows == 100
    assert cheap.why.startswith("exact: priced at") and "fewest rounds" in cheap.why
    assert cheap.seconds == pytest.approx(100 * 256 * 0.9e-6)
    # ... at 1.5 us: 150 us, cheaper than the rounds but not by half: rounds (timing noise
    # must not decide between them).
    dear = plan_at(1.5e-6, 3e-6)
    assert dear.sources == "auto" and not dear.joins and dear.seconds is None
    # No price (a failure on the probe): rounds, as the counts say.
    assert plan_at(None, 3e-6).sources == "auto"
    # Rows per position (1,600 of them): never priced for it.
    assert plan_at(0.001e-6, 3e-6, shares_positions=False).sources == "auto"


@pytest.mark.parametrize("n_samples, sources", [(256, 16), (1024, 4), (10_000, 1)])
def test_the_plan_says_the_draws_of_a_round_and_when_rounds_stop(n_samples, sources):
    """Sources drawn per sample (autograd's rows): a round takes as few as give 4,096 draws
    over the data; the plan says so, with the fewest and most rounds, the exact cap and
    the stopping rule, before any pass."""
    sections = sections_of(["a"], {"a": (16, 8)}, (16, 10))  # 160 exact rows
    routes = RouteTable([autograd_route(s) for s in sections])
    plan = make_plan(
        "X", sections, routes, FitSettings(n_stochastic_sources="auto"), n_samples, batch_size=64
    )
    (section,) = plan.sections
    assert section.sources == "auto" and section.per_sample
    assert section.round_sources == sources
    line = plan.describe()
    # Pairs of rounds (a pass each) while 16 rows a round stay within the 160 exact rows.
    assert (
        f"rounds of {sources} random sources per batch ({sources * n_samples:,} draws per "
        "round), 4 to 10, or the exact M' where cheaper (160 rows per batch at most)"
    ) in line
    assert "drawn for each sample apart" in line
    assert "within 1% of the largest and their subspace's cosine at least 0.99" in line


def test_a_long_fit_is_priced_by_what_a_row_adds():
    """One row's price carries the section's forward and the Gram's own work, paid once per
    sample; four rows' price says what a row adds.  Where noise leaves no such split, four
    rows' price per row."""
    sections = sections_of(["a"], {"a": (16, 8)}, (16, 10))  # 160 rows
    routes = RouteTable([autograd_route(s) for s in sections])

    def priced(one, four):
        def price(route, n_rows, exact, repeats=None):
            return one if n_rows == 1 else four

        return make_plan("X", sections, routes, FitSettings(), 100_000, price=price).seconds

    # one row 3 us per sample, four rows 1.5 us per row: a row adds 1 us, 2 us fixed
    assert priced(3e-6, 1.5e-6) == pytest.approx(100_000 * (2e-6 + 160 * 1e-6))
    assert priced(3e-6, 0.5e-6) == pytest.approx(100_000 * 160 * 0.5e-6)  # a row adds < 0
    assert priced(3e-6, 3e-6) == pytest.approx(100_000 * 160 * 3e-6)  # no fixed part


def test_rows_that_go_back_per_position_are_priced_once():
    """Exact rows that a form sends back per output position are timed as one next feature
    at every position, best of two: a timing with more rows would time the same."""

    class PerPosition:
        exact_per_position = True

    sections = sections_of(["a"], {"a": (4, 8)}, (4, 10))  # 4 output positions
    route = dataclasses.replace(autograd_route(sections[0]), rows=PerPosition())
    asked = []

    def price(route, n_rows, exact, repeats=None):
        asked.append((n_rows, repeats))
        return 1.0  # long: a plain route would be priced again with four rows

    make_plan("X", sections, RouteTable([route]), FitSettings(), 1000, price=price)
    assert asked == [(1, 2)]
    asked.clear()
    plain = RouteTable([autograd_route(sections[0])])
    make_plan("X", sections, plain, FitSettings(), 1000, price=price)
    assert asked == [(1, None), (1, 3), (4, None)]


class WithStatistics(ClosedForm):
    """A closed form whose statistics the statistics pass gathers (never run here)."""

    @classmethod
    def detect(cls, session, section):
        return cls()

    def vjp(self, x, points, cotangents, tangents=None):
        return NotImplemented

    def statistics(self, session, section, rule):
        return object()


def test_the_plan_names_the_sections_gathered_in_the_first_pass():
    sections = sections_of(["a", "b"], {"a": (8,), "b": (8,)}, (3,))
    routes = RouteTable(
        [SectionRoute(sections[0], gram=WithStatistics()), autograd_route(sections[1])]
    )
    priced = make_plan("X", sections, routes, FitSettings(), 100, batch_size=10)
    assert priced.passes == 1 and priced.gathered == ("a", "b")
    assert "'a' -> 'b': by closed form within the statistics pass" in priced.describe()


def test_the_bases_linear_algebra_is_priced_where_it_takes_seconds():
    """Two 4096-wide node layers: eigendecompositions and products of 4096 x 4096 matrices,
    about 30 d^3 operations each; 8-wide ones cost nothing worth saying."""
    wide = sections_of(["a", "b"], {"a": (4096,), "b": (4096,)}, (10,))
    routes = RouteTable([SectionRoute(s, gram=WithStatistics()) for s in wide])
    plan = make_plan("X", wide, routes, FitSettings(), 1000)
    expected = 2 * dense_seconds(4096)
    assert plan.linear_algebra == pytest.approx(expected)
    assert expected == pytest.approx(2 * 30 * 4096**3 / DENSE_FLOPS)
    assert plan.seconds == pytest.approx(expected)  # no rows: the linear algebra alone
    words = f"estimated {math.ceil(expected)} s ({math.ceil(expected)} s of it the bases' linear"
    assert words in plan.describe()
    pca = make_plan("X", wide, None, FitSettings(basis="pca"), 1000)
    assert pca.linear_algebra == pytest.approx(2 * 10 * 4096**3 / DENSE_FLOPS)
    narrow = sections_of(["a", "b"], {"a": (8,), "b": (8,)}, (10,))
    routes = RouteTable([SectionRoute(s, gram=WithStatistics()) for s in narrow])
    plan = make_plan("X", narrow, routes, FitSettings(), 1000)
    assert plan.seconds is None and "linear algebra" not in plan.describe()


def test_a_small_batch_says_why():
    from sklearn_lib._fitting.plan import FitPlan

    plan = FitPlan("LIBTransformer", 100).with_batch_size(4, "fewer fit the budget")
    assert "in batches of 4 (fewer fit the budget)" in plan.describe()
    assert FitPlan("LIBTransformer", 100).with_batch_size(64).describe().endswith("of 64")
