"""Fewer rows behind a final linear map (``_routes.forms.final_linear``): detection, the
factor's rows against all of autograd's, sampled rows, padding, and where it must not apply."""

import numpy as np
import pytest
import torch
from torch import nn

from sklearn_lib._core.identity import Identity
from sklearn_lib._core.nodes import OUTPUT_NODE, Section
from sklearn_lib._fitting.stochastic import m_prime_route
from sklearn_lib._model.session import ModelSession
from sklearn_lib._routes.autograd import autograd_rows
from sklearn_lib._routes.cotangents import Cotangents, scaled
from sklearn_lib._routes.forms.final_linear import FinalLinear, _factor, _is_identity
from sklearn_lib._routes.products import form_gram, gram_of
from sklearn_lib._routes.table import decide_routes

D_IN, D_OUT, P = 4, 9, 3


class Conv1D(nn.Module):
    """Hugging Face's ``Conv1D``: ``x @ weight + bias`` with ``weight`` of shape (nx, nf)."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.randn(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


class Head(nn.Module):
    """A sequence model's last section: a nonlinear mix of positions, then a wide map."""

    def __init__(self, head="linear", after=None, positions="mixed"):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(2, D_IN)
        self.mix = nn.Linear(D_IN, D_IN)
        self.head = nn.Linear(D_IN, D_OUT) if head == "linear" else Conv1D(D_OUT, D_IN)
        self.after = after
        self.positions = positions

    def forward(self, x):  # (n, P, 2) -> (n, P, D_OUT)
        h = self.mix(torch.tanh(self.embed(x)))
        if self.positions == "mixed":  # positions interact within the section
            h = torch.tanh(h + h.mean(1, keepdim=True))
        elif self.positions == "causal":  # position t reads positions <= t
            h = torch.tanh(h + h.cumsum(1))
        elif self.positions == "pair":  # position 1 alone reads position 3 too
            h = torch.nn.functional.layer_norm(h, (D_IN,))
            h = h + torch.nn.functional.pad(h[:, 3:4], (0, 0, 1, h.shape[1] - 2))
        else:  # each position apart (a final LayerNorm)
            h = torch.nn.functional.layer_norm(h, (D_IN,))
        y = self.head(self.block_input(h))
        return y if self.after is None else self.after(y)

    def block_input(self, h):
        return h


class Model(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.body = Head(**kwargs)

    def forward(self, x):
        return self.body(x)


SECTION = Section("body.mix", OUTPUT_NODE, (P, D_IN), (P, D_OUT))


def _session(model):
    return ModelSession(model.double(), dtype=torch.float64)


def _points(session, x, alphas=(1.0,)):
    (f,) = session.read(x, ["body.mix"])
    return scaled(f, torch.tensor(alphas, dtype=torch.float64)), torch.ones(len(alphas)) / len(
        alphas
    )


def _autograd_gram(session, x, points, weights, rows):
    chunks = autograd_rows(session, SECTION, x, points, rows, weights, batched=False)
    return gram_of(chunks, x.shape[0], D_IN)


@pytest.mark.parametrize("positions", ["mixed", "apart"])
@pytest.mark.parametrize("head", ["linear", "conv1d"])
@pytest.mark.parametrize("k_next", [D_OUT, 6, 2], ids=["identity", "wide basis", "narrow basis"])
def test_the_factors_rows_give_the_gram_of_all_rows(head, k_next, positions):
    """Exact rows: ``R R^T = A C C^T A^T`` with at most ``d_in`` columns, to 1e-12; where
    the map's input keeps positions apart, each at every position at once."""
    session = _session(Model(head=head, positions=positions))
    form = FinalLinear.detect(session, SECTION)
    assert form is not None
    x = torch.randn(5, P, 2, dtype=torch.float64)
    points, weights = _points(session, x, alphas=(0.5, 1.0))
    C = torch.eye(D_OUT, dtype=torch.float64)[:, :k_next] if k_next == D_OUT else None
    if C is None:
        C = torch.linalg.qr(torch.randn(D_OUT, k_next, dtype=torch.float64))[0]
    rows = Cotangents(C, P).rows
    got = form_gram(form, x, points, weights, rows)
    expected = _autograd_gram(session, x, points, weights, rows[:])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12 * expected.abs().max())
    assert form.width == D_IN and form.final == "body.head"
    assert form.shares_positions is (positions == "apart")


@pytest.mark.parametrize("positions, apart", [("mixed", False), ("causal", False), ("apart", True)])
def test_it_finds_whether_the_maps_input_keeps_positions_apart(positions, apart):
    """Causal mixing leaves the first position alone: the last position shows it."""
    session = _session(Model(positions=positions))
    form = FinalLinear.detect(session, SECTION)
    assert form.shares_positions is None  # found at the first run
    x = torch.randn(4, P, 2, dtype=torch.float64)
    points, weights = _points(session, x)
    form_gram(form, x, points, weights, Cotangents(torch.eye(D_OUT, dtype=torch.float64), P).rows)
    assert form.shares_positions is apart


def test_one_position_reading_one_other_is_found():
    """Of 5 positions, 1 reads 3 as well: positions 0, 2 and 4 (first, middle, last) read
    themselves alone, but 1 and 3 fall apart at the split by the second bit."""
    session = _session(Model(positions="pair"))
    section = Section("body.mix", OUTPUT_NODE, (5, D_IN), (5, D_OUT))
    form = FinalLinear.detect(session, section)
    x = torch.randn(4, 5, 2, dtype=torch.float64)
    (f,) = session.read(x, ["body.mix"])
    form_gram(form, x, f, torch.ones(1), Cotangents(torch.eye(D_OUT, dtype=torch.float64), 5).rows)
    assert form.shares_positions is False


def test_rows_at_every_position_cost_one_row_per_column_of_the_factor():
    """``EveryPositionRows``: D_IN rows, each a column of the factor at all P positions."""
    session = _session(Model(positions="apart"))
    form = FinalLinear.detect(session, SECTION)
    x = torch.randn(4, P, 2, dtype=torch.float64)
    points, weights = _points(session, x)
    rows = Cotangents(torch.eye(D_OUT, dtype=torch.float64), P).rows
    form_gram(form, x, points, weights, rows)
    made = form._input_rows(rows, session.model.body.head.weight.T)
    assert made.shape == (D_IN, P, D_IN)
    for r in range(D_IN):
        torch.testing.assert_close(made[r : r + 1][0], made.matrix[:, r].expand(P, -1))


def test_sampled_rows_go_through_the_map():
    session = _session(Model())
    form = FinalLinear.detect(session, SECTION)
    x = torch.randn(4, P, 2, dtype=torch.float64)
    points, weights = _points(session, x)
    rows = torch.randn(3, P, D_OUT, dtype=torch.float64)
    got = form_gram(form, x, points, weights, rows)
    expected = _autograd_gram(session, x, points, weights, rows)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12 * expected.abs().max())


def test_the_factor_has_the_fewest_columns():
    M = torch.randn(3, 8, dtype=torch.float64)
    R = _factor(M)
    assert R.shape == (3, 3)
    torch.testing.assert_close(R @ R.T, M @ M.T, rtol=1e-12, atol=1e-12)
    narrow = torch.randn(5, 2, dtype=torch.float64)
    assert _factor(narrow) is narrow
    low_rank = torch.randn(4, 1, dtype=torch.float64) @ torch.randn(1, 9, dtype=torch.float64)
    assert _factor(low_rank).shape == (4, 1)


def test_it_does_not_apply_where_the_output_is_not_the_maps():
    """tanh after the map: no candidate's output is the section's; a narrower output: none."""
    session = _session(Model(after=torch.tanh))
    form = FinalLinear.detect(session, SECTION)
    x = torch.randn(4, P, 2, dtype=torch.float64)
    points, weights = _points(session, x)
    assert form_gram(form, x, points, weights, Cotangents.identity((P, D_OUT), *_dd()).rows) is (
        NotImplemented
    )
    routes = decide_routes(session, x, [SECTION], (torch.ones(1), torch.ones(1)), {"gram"})
    assert routes[SECTION].m_prime == "autograd"
    to_layer = Section("body.embed", "body.mix", (P, 2), (P, D_IN))
    assert FinalLinear.detect(session, to_layer) is None  # only sections to the output


def _dd():
    return torch.float64, torch.device("cpu")


def test_the_route_table_takes_it_and_says_so():
    session = _session(Model())
    x = torch.randn(6, P, 2, dtype=torch.float64)
    routes = decide_routes(session, x, [SECTION], (torch.ones(1), torch.ones(1)), {"gram", "rows"})
    route = routes[SECTION]
    assert route.m_prime == "final linear" and not route.row_free
    assert "final linear map" in routes.summary()


@pytest.mark.parametrize("positions, rows", [("mixed", 8 * D_IN), ("apart", D_IN)])
def test_auto_sources_count_the_factors_rows(positions, rows):
    """8 positions x 9 logits = 72 rows would run rounds; 8 x 4 inputs of the map stay
    exact, and 4 where each serves every position."""
    session = _session(Model(positions=positions))
    section = Section("body.mix", OUTPUT_NODE, (8, D_IN), (8, D_OUT))
    x = torch.randn(6, 8, 2, dtype=torch.float64)
    routes = decide_routes(session, x, [section], (torch.ones(1), torch.ones(1)), {"gram"})
    route = routes[section]
    assert route.exact_rows == rows and section.exact_rows == 8 * D_OUT
    assert m_prime_route("auto", section, route.row_free, route.exact_rows)[0] is None
    assert m_prime_route("auto", section, route.row_free)[0] == "auto"


def test_the_factor_in_float32_agrees_with_autograd_to_float32_rounding():
    session = ModelSession(Model().float(), dtype=torch.float32)
    form = FinalLinear.detect(session, SECTION)
    x = torch.randn(5, P, 2)
    (f,) = session.read(x, ["body.mix"])
    rows = Cotangents.identity((P, D_OUT), torch.float32, torch.device("cpu")).rows
    got = form_gram(form, x, f, torch.ones(1), rows)
    chunks = autograd_rows(session, SECTION, x, f, rows[:], torch.ones(1), batched=False)
    expected = gram_of(chunks, 5, D_IN)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


# -- what the review found --------------------------------------------------------------------
class Capped(nn.Module):
    """``head(block(x))``, the logits clamped in place where they pass ``cap``, and copied for
    batches of fewer than ``copy_below`` samples: twice not the head's own output."""

    def __init__(self, cap=None, copy_below=0, zero_head=False):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.block, self.head = nn.Linear(3, D_IN), Mixer(), nn.Linear(D_IN, D_OUT)
        if zero_head:
            nn.init.zeros_(self.head.weight)
        self.cap, self.copy_below = cap, copy_below

    def forward(self, x):
        h = torch.tanh(self.emb(x))
        y = self.head(self.block(h))
        if self.cap is not None:
            y.clamp_(-self.cap, self.cap)
        return y.clone() if x.shape[0] < self.copy_below else y


class Mixer(nn.Module):
    """Positions interact: ``tanh(mix(h) + mean over positions of h)``."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Linear(D_IN, D_IN)

    def forward(self, h):
        return torch.tanh(self.mix(h) + h.mean(1, keepdim=True))


def _fits(model_of, X, **params):
    from sklearn_lib import LIBTransformer

    return [
        LIBTransformer(model_of(), "block", jacobian=jacobian, **params).fit(X)
        for jacobian in ("auto", "autograd")
    ]


def test_an_output_changed_in_place_after_the_map_is_not_the_maps():
    """A clamp_ the probe never reaches: the same tensor object, other values later."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(48, P, 3)) * 0.05
    X[16:] *= 60
    with torch.no_grad():
        cap = float(Capped().double()(torch.from_numpy(X[:16])).abs().max()) * 1.01
    auto, reference = _fits(lambda: Capped(cap=cap).double(), X)
    np.testing.assert_allclose(auto.lambdas_, reference.lambdas_, rtol=1e-10)


def test_a_batch_the_map_does_not_end_takes_autograd_rows():
    """The 4 samples of the last batch get a copy of the logits: those rows are autograd's."""
    X = np.random.default_rng(0).normal(size=(20, P, 3))
    auto, reference = _fits(lambda: Capped(copy_below=8).double(), X, batch_size=8)
    np.testing.assert_allclose(auto.lambdas_, reference.lambdas_, rtol=1e-10)


def test_a_map_of_zeros_is_named_as_autograd_names_it():
    X = np.random.default_rng(0).normal(size=(20, P, 3))
    for jacobian in ("auto", "autograd"):
        from sklearn_lib import LIBTransformer

        with pytest.raises(ValueError, match="all Jacobians vanish"):
            LIBTransformer(Capped(zero_head=True).double(), "block", jacobian=jacobian).fit(X)


def test_the_identity_basis_takes_the_maps_matrix_itself():
    A = torch.randn(D_IN, D_OUT, dtype=torch.float64)
    eye = torch.eye(D_OUT, dtype=torch.float64)
    assert _is_identity(eye) and not _is_identity(2 * eye) and not _is_identity(eye[:, :3])
    torch.testing.assert_close(_factor(A) @ _factor(A).T, A @ A.T, rtol=1e-12, atol=1e-12)


class Unembed(nn.Module):
    """The unembedding as a section of its own: the map reads the node layer's output,
    through a view and a full slice as Hugging Face's GPT-2 does (``scaled``: a copy)."""

    def __init__(self, scaled=False):
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Linear(2, D_IN)
        self.ln = nn.LayerNorm(D_IN)
        self.head = nn.Linear(D_IN, D_OUT, bias=False)
        self.scaled = scaled

    def forward(self, x):
        h = self.ln(torch.tanh(self.embed(x)))
        h = h.view(h.shape)[:, :, :]
        return self.head(2 * h if self.scaled else h)


@pytest.mark.parametrize("copy", [False, True], ids=["reads the start", "reads a copy"])
@pytest.mark.parametrize("k_next", [D_OUT, 2], ids=["identity", "narrow basis"])
def test_a_map_reading_the_sections_start_needs_no_rows(copy, k_next):
    """``J_z`` is the identity: the Gram is ``count (sum w)^2 R R^T``, as autograd's rows."""
    session = ModelSession(Unembed(copy).double(), dtype=torch.float64, capture="output")
    section = Section("ln", OUTPUT_NODE, (P, D_IN), (P, D_OUT))
    form = FinalLinear.detect(session, section)
    x = torch.randn(5, P, 2, dtype=torch.float64)
    (f,) = session.read(x, ["ln"])
    points = scaled(f, torch.tensor([0.5, 1.0], dtype=torch.float64))
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
    C = (
        Identity(D_OUT, torch.float64, "cpu")
        if k_next == D_OUT
        else torch.randn(D_OUT, k_next, dtype=torch.float64)
    )
    rows = Cotangents(C, P).rows
    got = form_gram(form, x, points, weights, rows)
    assert form.reads_start is not copy
    chunks = autograd_rows(session, section, x, points, rows, weights, batched=False)
    expected = gram_of(chunks, x.shape[0], D_IN)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12 * expected.abs().max())


# -- random sources drawn in the factor --------------------------------------------------------
def _hadamard(n):
    """Sylvester's ``n x n`` +-1 matrix with orthogonal columns (``n`` a power of two)."""
    H = torch.ones(1, 1, dtype=torch.int8)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


@pytest.mark.parametrize("positions", ["mixed", "apart"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_sources_drawn_in_the_factor_estimate_the_exact_gram(positions, per_sample):
    """Signs of ``d_in`` features, not the ``d_out`` logits' (``SampledRows.through``):
    16 sources with orthogonal columns over ``P x d_in = 12`` make the estimate exact, so
    the scaled Gram equals the exact rows' to rounding; an unbiased estimate, exactly."""
    session = _session(Model(positions=positions))
    form = FinalLinear.detect(session, SECTION)
    x = torch.randn(4, P, 2, dtype=torch.float64)
    points, weights = _points(session, x)
    exact = Cotangents.identity((P, D_OUT), *_dd())
    design = _hadamard(16)[:, : P * D_IN].reshape(16, P, D_IN)
    signs = design[:, None].expand(-1, 4, -1, -1) if per_sample else design
    sampled = Cotangents(exact.matrix, P, signs.contiguous())
    assert sampled.rows.narrowed and sampled.rows.shape[-1] == D_OUT
    got = form_gram(form, x, points, weights, sampled.rows) * sampled.scale
    expected = form_gram(form, x, points, weights, exact.rows)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12 * expected.abs().max())
    with pytest.raises(RuntimeError, match="drawn for a final map's factor"):
        sampled.rows[:1]  # not rows of the logits: only the map's factor takes them


def test_sources_in_the_factor_are_drawn_that_narrow():
    """The fit draws ``min(k_next, d_in)`` features per position (one byte each), and the
    route says how many; elsewhere the next basis' own."""
    from sklearn_lib._fitting.stochastic import m_prime_sources

    session = _session(Model())
    x = torch.randn(6, P, 2, dtype=torch.float64)
    routes = decide_routes(session, x, [SECTION], (torch.ones(1), torch.ones(1)), {"gram"})
    assert routes[SECTION].source_features == D_IN
    exact = Cotangents.identity((P, D_OUT), *_dd())
    drawn = m_prime_sources(exact, 5, torch.Generator().manual_seed(0), 6, features=D_IN)
    assert tuple(drawn.signs.shape) == (5, 6, P, D_IN) and drawn.signs.dtype == torch.int8
    narrow = Cotangents(torch.randn(D_OUT, 2, dtype=torch.float64), P)  # k_next = 2 < d_in
    assert m_prime_sources(narrow, 5, torch.Generator(), features=D_IN).signs.shape[-1] == 2
    to_layer = Section("body.embed", "body.mix", (P, 2), (P, D_IN))
    other = decide_routes(session, x, [to_layer], (torch.ones(1), torch.ones(1)), {"gram"})
    assert other[to_layer].source_features is None


def test_a_batch_the_map_does_not_end_widens_the_sources_in_its_factor(monkeypatch):
    """Sources drawn in the map's factor are no rows of the logits: a batch that the map
    does not end (the last 4 samples get a copy) takes autograd's rows with the drawn
    signs and the missing features' drawn then."""
    from sklearn_lib import LIBTransformer
    from sklearn_lib._routes.cotangents import SampledRows

    widened, widen = [], SampledRows._widen
    monkeypatch.setattr(SampledRows, "_widen", lambda self: widened.append(1) or widen(self))
    X = np.random.default_rng(0).normal(size=(20, P, 3))
    lib = LIBTransformer(
        Capped(copy_below=8).double(), "block", batch_size=8, n_stochastic_sources=4
    )
    assert np.all(np.isfinite(lib.fit(X).lambdas_)) and widened == [1]


def test_narrowed_signs_are_widened_from_their_generator():
    """The drawn features stay; the missing ones are +-1 from the same generator."""
    from sklearn_lib._fitting.stochastic import m_prime_sources

    exact = Cotangents.identity((P, D_OUT), *_dd())
    drawn = m_prime_sources(exact, 5, torch.Generator().manual_seed(0), 6, features=D_IN)
    rows, before = drawn.rows, drawn.signs.clone()
    assert rows.narrowed and rows.generator is not None
    made = rows[:2]  # (2, 6, P, D_OUT): rows of the identity basis, the signs themselves
    assert made.shape == (2, 6, P, D_OUT) and not rows.narrowed
    torch.testing.assert_close(made[..., :D_IN], before[:2].double())
    assert set(made.unique().tolist()) == {-1.0, 1.0}
    full = m_prime_sources(Cotangents(torch.eye(3, dtype=torch.float64), P), 5, torch.Generator())
    assert full.rows.generator is None  # full width: nothing to draw later
