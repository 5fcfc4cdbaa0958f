"""The route table (``_routes.table``): which closed form serves which product, decided once."""

import warnings

import pytest
import torch
from _faults import FATAL
from _sections import section_of
from linear_form import LinearForm
from torch import nn
from toy_models import TanhThenLinear, modadd_tokens, tanh_mlp, user_transformer

from sklearn_lib._core.nodes import OUTPUT_NODE, Section
from sklearn_lib._model.session import ModelSession
from sklearn_lib._routes import table
from sklearn_lib._routes.forms import (
    Affine,
    ClosedForm,
    LinearElementwise,
    ResidualMLP,
    TracedSection,
    register,
)
from sklearn_lib._routes.forms.base import unregister
from sklearn_lib._routes.integration import rule_tensors
from sklearn_lib._routes.products import KINDS
from sklearn_lib._routes.table import (
    JACOBIAN_ROUTES,
    RouteTable,
    SectionRoute,
    Verdict,
    autograd_route,
    decide_routes,
)

PLAIN = ((1.0,), (1.0,))
TRAPEZOID = ((0.25, 0.75), (0.5, 0.5))


def _decide(model, x, pairs, kinds=KINDS, rule=PLAIN, jacobian="auto", **session):
    session = ModelSession(model, **session)
    sections = [section_of(session, x, src, dst) for src, dst in pairs]
    routes = decide_routes(
        session, x, sections, rule_tensors(rule, "cpu"), kinds, jacobian=jacobian
    )
    return routes, sections


def _kinds_served(route):
    return {kind: type(route.form(kind)).__name__ if route.form(kind) else None for kind in KINDS}


def test_the_jacobian_values():
    assert JACOBIAN_ROUTES == ("auto", "autograd")


# -- which form serves which kind ----------------------------------------------------------
@pytest.mark.filterwarnings("error::RuntimeWarning")  # every check passes
@pytest.mark.parametrize("rule", [PLAIN, TRAPEZOID], ids=["gradient", "trapezoid"])
def test_an_mlp_is_served_by_the_linear_elementwise_formula(rule):
    x = torch.randn(20, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pairs = [("fc1", "fc2"), ("fc2", "fc3"), ("fc3", OUTPUT_NODE)]
    routes, sections = _decide(tanh_mlp(), x, pairs, rule=rule)
    assert len(routes) == 3
    for section in sections:
        route = routes[section]
        # Its Gram and directional derivatives; rows are not needed (and not checked).
        assert _kinds_served(route) == {
            "rows": None,
            "gram": "LinearElementwise",
            "tangents": "LinearElementwise",
        }
        assert [(v.form, v.kind, v.passed) for v in route.verdicts] == [
            ("The Linear -> elementwise formula", kind, True) for kind in ("gram", "tangents")
        ]
        assert route.m_prime == "closed form" and route.gathers_statistics
        # Asked for alone, rows are decided: the formula serves them too.
        rows, _ = _decide(tanh_mlp(), x, [(section.src, section.dst)], kinds=("rows",), rule=rule)
        assert isinstance(rows[section].rows, LinearElementwise)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_transformer_is_served_by_its_trace_the_residual_formula_and_the_affine_route():
    pairs = [("blocks.0.attn", "blocks.0.mlp"), ("blocks.0.mlp", "unembed"), ("unembed", "output")]
    routes, (attn, mlp, head) = _decide(user_transformer(), modadd_tokens(20), pairs)
    # Attention: its trace serves the rows (the Gram and directional derivatives
    # are made from them).
    assert _kinds_served(routes[attn]) == {"rows": "TracedSection", "gram": None, "tangents": None}
    assert routes[attn].verdicts == (Verdict(TracedSection.title, "rows", True),)
    assert routes[attn].m_prime == "closed-form rows"
    # The residual MLP block: its formula serves the Gram and the directional
    # derivatives, so its rows are never needed.
    assert _kinds_served(routes[mlp]) == {
        "rows": None,
        "gram": "ResidualMLP",
        "tangents": "ResidualMLP",
    }
    assert all(v.passed and v.form == ResidualMLP.title for v in routes[mlp].verdicts)
    assert routes[mlp].m_prime == "closed form" and not routes[mlp].gathers_statistics
    # The unembedding is affine: its rows are served, nothing else.
    assert _kinds_served(routes[head]) == {"rows": "Affine", "gram": None, "tangents": None}
    assert routes[head].verdicts == (Verdict(Affine.title, "rows", True),)
    assert routes[head].m_prime == "affine"


def test_forms_that_gain_nothing_on_random_rows_are_not_tried_for_them(monkeypatch):
    """``sampled``: every row a random source.  The trace (whose gain is exact rows'
    structure) is neither detected nor checked: the attention takes autograd and says
    why; forms that gain on any rows (the residual formula, the affine route) stay."""
    detected = []
    monkeypatch.setattr(
        TracedSection, "detect", classmethod(lambda cls, *a: detected.append(a) or None)
    )
    pairs = [("blocks.0.attn", "blocks.0.mlp"), ("blocks.0.mlp", "unembed"), ("unembed", "output")]
    session = ModelSession(user_transformer())
    x = modadd_tokens(20)
    sections = [section_of(session, x, src, dst) for src, dst in pairs]
    rule = rule_tensors(PLAIN, "cpu")
    routes = decide_routes(session, x, sections, rule, {"gram", "rows"}, sampled=True)
    attn, mlp, head = sections
    assert not detected and routes[attn].m_prime == "autograd" and not routes[attn].verdicts
    assert any("cost what autograd's cost where all are random" in s for s in routes[attn].skipped)
    assert routes[mlp].m_prime == "closed form" and routes[head].m_prime == "affine"
    assert not TracedSection.sampled_rows_gain and ResidualMLP.sampled_rows_gain
    decide_routes(session, x, sections[:1], rule, {"gram", "rows"})
    assert len(detected) == 1  # tried where rows may be exact


def test_a_fit_with_a_number_of_sources_leaves_the_trace_out_and_says_so(capsys):
    """An integer ``n_stochastic_sources`` without a graph: the attention's rows are
    autograd's (the plan's route lines say why); with ``compute_graph`` the trace stays
    (the edges' rows are exact per feature)."""
    from sklearn_lib import LIBTransformer

    X = modadd_tokens(64).numpy()
    params = dict(downstream_layers=["blocks.0.mlp"], n_stochastic_sources=2, random_state=0)
    LIBTransformer(user_transformer(), "blocks.0.attn", verbose=True, **params).fit(X)
    err = capsys.readouterr().err
    assert "'blocks.0.attn' -> 'blocks.0.mlp': M' by autograd" in err
    assert "its rows cost what autograd's cost where all are random sources" in err
    graph = LIBTransformer(user_transformer(), "blocks.0.attn", compute_graph=True, **params)
    graph.set_params(verbose=True).fit(X)
    assert "'blocks.0.attn' -> 'blocks.0.mlp': M' by closed-form rows" in capsys.readouterr().err


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize(
    "kinds, decided",
    [
        (("rows",), ("rows",)),
        (("gram",), ("gram",)),
        (("tangents",), ("tangents",)),
        # Rows are decided only where an asked product falls back to them.
        (("rows", "tangents"), ("tangents",)),
        (("gram", "rows"), ("gram",)),
    ],
)
def test_kinds_not_asked_for_stay_autograd_and_are_not_checked(kinds, decided):
    x = torch.randn(20, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    routes, (section,) = _decide(tanh_mlp(), x, [("fc2", "fc3")], kinds=kinds)
    route = routes[section]
    for kind in KINDS:
        assert isinstance(route.form(kind), LinearElementwise) is (kind in decided)
    assert [v.kind for v in route.verdicts] == [
        k for k in ("gram", "tangents", "rows") if k in decided
    ]


class WrongRows(LinearForm):
    """The nn.Linear formula whose rows are off: never checked where its Gram serves."""

    title = "Wrong rows"

    def vjp(self, x, points, cotangents, tangents=None):
        out = super().vjp(x, points, cotangents, tangents)
        return out if tangents is not None else 2 * out


def test_rows_a_gram_makes_unneeded_are_not_checked():
    register(WrongRows, first=True)
    try:
        x = torch.randn(20, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no check of the wrong rows
            routes, (section,) = _decide(
                TanhThenLinear().double(), x, [("head", OUTPUT_NODE)], kinds=("gram", "rows")
            )
        assert isinstance(routes[section].gram, WrongRows) and routes[section].rows is None
        with pytest.warns(RuntimeWarning, match="Wrong rows is not used"):
            _decide(TanhThenLinear().double(), x, [("head", OUTPUT_NODE)], kinds=("rows",))
    finally:
        unregister(WrongRows)


# -- jacobian="autograd" -----------------------------------------------------------------------
def test_jacobian_autograd_runs_no_check_and_serves_nothing(monkeypatch):
    def no_forms(*args, **kwargs):
        raise AssertionError("a form was looked for")

    monkeypatch.setattr(table, "applicable_forms", no_forms)
    x = torch.randn(20, 4, dtype=torch.float64)
    pairs = [("fc1", "fc2"), ("fc3", OUTPUT_NODE)]
    routes, sections = _decide(tanh_mlp(), x, pairs, jacobian="autograd")
    assert [routes[s] for s in sections] == [SectionRoute(s) for s in sections]
    for section in sections:
        assert _kinds_served(routes[section]) == dict.fromkeys(KINDS)
        assert routes[section].verdicts == () and routes[section].m_prime == "autograd"
    with pytest.raises(AssertionError, match="a form was looked for"):  # "auto" would look
        _decide(tanh_mlp(), x, pairs)


# -- wrong forms warn once and fall back --------------------------------------------------------
class WrongGram(LinearForm):
    """The nn.Linear formula with a Gram off by 1%: only the Gram fails its check."""

    title = "A wrong Gram"

    def gram(self, x, points, weights, cotangents):
        return 1.01 * super().gram(x, points, weights, cotangents)


class Raises(LinearForm):
    title = "A raising form"

    def vjp(self, x, points, cotangents, tangents=None):
        raise KeyError("W_in")


@pytest.fixture
def registered(request):
    form = request.param
    register(form, first=True)
    try:
        yield form
    finally:
        unregister(form)


@pytest.mark.parametrize("registered", [WrongGram], indirect=True)
def test_a_wrong_form_warns_once_and_is_a_failed_verdict(registered):
    x = torch.randn(30, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with pytest.warns(RuntimeWarning) as record:
        routes, (section,) = _decide(TanhThenLinear().double(), x, [("head", OUTPUT_NODE)])
    messages = [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1
    assert messages[0].startswith("A wrong Gram is not used on the section 'head' -> the model")
    assert "disagrees with autograd" in messages[0] and messages[0].endswith("autograd instead")
    route = routes[section]
    # Its rows and directional derivatives are right, and serve; the Gram falls back.
    assert isinstance(route.rows, WrongGram) and isinstance(route.tangents, WrongGram)
    assert route.gram is None and route.m_prime == "closed-form rows"
    gram_verdicts = [v for v in route.verdicts if v.kind == "gram"]
    assert len(gram_verdicts) == 1
    (verdict,) = gram_verdicts
    assert verdict.form == "A wrong Gram" and verdict.passed is False
    assert verdict.why.startswith("it disagrees with autograd (relative error 1.0")
    assert "A wrong Gram for gram: failed, it disagrees" in routes.summary()


@pytest.mark.parametrize("registered", [Raises], indirect=True)
def test_a_raising_form_falls_back_to_the_next_form(registered):
    x = torch.randn(30, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with pytest.warns(RuntimeWarning, match=r"A raising form is not used.*raised KeyError"):
        routes, (section,) = _decide(
            TanhThenLinear().double(), x, [("head", OUTPUT_NODE)], kinds=["rows"]
        )
    route = routes[section]
    assert isinstance(route.rows, Affine)  # the next form that offers rows, and passes
    assert [(v.form, v.passed) for v in route.verdicts] == [
        ("A raising form", False),
        (Affine.title, True),
    ]
    assert route.verdicts[0].why == "it raised KeyError: 'W_in'"


# -- faults while the table is decided: a warning and autograd; out of memory propagates --
OUT_OF_MEMORY = FATAL


class DetectRaises(LinearForm):
    """A form whose detection raises ``error`` (a bug of a form: detect must not raise)."""

    title = "A form whose detection raises"
    error = None

    @classmethod
    def detect(cls, session, section):
        raise cls.error()


@pytest.mark.parametrize("registered", [DetectRaises], indirect=True)
def test_a_detection_that_raises_warns_and_the_form_is_not_used(registered):
    registered.error = lambda: IndexError("a bug in detect")
    x = torch.randn(30, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    said = (
        r"Detecting A form whose detection raises on the section 'head' -> the model output "
        r"failed \(IndexError: a bug in detect\); it is not used there"
    )
    with pytest.warns(RuntimeWarning, match=said):
        routes, (section,) = _decide(TanhThenLinear().double(), x, [("head", OUTPUT_NODE)])
    route = routes[section]
    assert isinstance(route.rows, Affine)  # the next form serves
    assert not any(isinstance(f, DetectRaises) for f in (route.rows, route.gram, route.tangents))


@pytest.mark.parametrize("registered", [DetectRaises], indirect=True)
@pytest.mark.parametrize("error", list(OUT_OF_MEMORY))
def test_out_of_memory_in_a_detection_propagates(registered, error):
    registered.error = OUT_OF_MEMORY[error]
    x = torch.randn(30, 2, 3, dtype=torch.float64)
    with pytest.raises(type(OUT_OF_MEMORY[error]())):
        _decide(TanhThenLinear().double(), x, [("head", OUTPUT_NODE)])


def _failing_once(monkeypatch, where, error):
    """Make ``where`` (a module and a function's name) raise ``error()`` on its first call."""
    module, name = where
    original, calls = getattr(module, name), []

    def once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise error()
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, once)
    return calls


def test_a_check_whose_autograd_rows_fail_warns_and_takes_autograd(monkeypatch):
    """The model failing on the check's autograd rows (a one-time fault): the form is not
    used for that product on that section, which is said; the rest is checked as ever."""
    from sklearn_lib._routes.forms import base

    fault = lambda: ValueError("The model failed on the probe batch: injected")  # noqa: E731
    _failing_once(monkeypatch, (base, "autograd_rows"), fault)
    x = torch.randn(20, 4, dtype=torch.float64)
    pairs = [("fc2", "fc3"), ("fc3", OUTPUT_NODE)]
    said = r"is not used on the section 'fc2' -> 'fc3': its check raised ValueError: .*injected"
    with pytest.warns(RuntimeWarning, match=said):
        routes, (first, last) = _decide(tanh_mlp(), x, pairs, kinds=("gram", "rows"))
    # The Gram whose check raised is autograd's; the rows, checked next, pass.
    assert routes[first].gram is None and routes[first].m_prime == "closed-form rows"
    failed, passed = routes[first].verdicts
    assert (failed.kind, failed.passed, passed.kind, passed.passed) == ("gram", False, "rows", True)
    assert failed.why.startswith("its check raised ValueError")
    assert routes[last].gram is not None  # checked, and passed


@pytest.mark.parametrize("error", list(OUT_OF_MEMORY))
def test_out_of_memory_in_a_check_propagates(monkeypatch, error):
    from sklearn_lib._routes.forms import base

    _failing_once(monkeypatch, (base, "autograd_rows"), OUT_OF_MEMORY[error])
    x = torch.randn(20, 4, dtype=torch.float64)
    with pytest.raises(type(OUT_OF_MEMORY[error]())):
        _decide(tanh_mlp(), x, [("fc2", "fc3")], kinds=("gram", "rows"))


def test_a_failed_read_of_the_probe_takes_autograd_everywhere_and_says_so(monkeypatch):
    x = torch.randn(20, 4, dtype=torch.float64)
    session = ModelSession(tanh_mlp())
    sections = [section_of(session, x, "fc2", "fc3"), section_of(session, x, "fc3", OUTPUT_NODE)]
    fault = lambda: ValueError("The model failed on the probe batch: injected")  # noqa: E731
    _failing_once(monkeypatch, (session, "read"), fault)
    said = (
        r"Reading the probe's activations of \['fc2', 'fc3'\] to choose the routes failed "
        r"\(ValueError: The model failed on the probe batch: injected\); every section takes "
        "autograd"
    )
    with pytest.warns(RuntimeWarning, match=said):
        routes = decide_routes(session, x, sections, rule_tensors(PLAIN, "cpu"), KINDS)
    assert [routes[s] for s in sections] == [SectionRoute(s) for s in sections]
    for error in OUT_OF_MEMORY.values():
        _failing_once(monkeypatch, (session, "read"), error)
        with pytest.raises(type(error())):
            decide_routes(session, x, sections, rule_tensors(PLAIN, "cpu"), KINDS)


# -- SectionRoute and RouteTable --------------------------------------------------------------
SECTION = Section("a", "b")


def _forms():
    return {
        "affine": Affine(None, SECTION),
        "linear elementwise": LinearElementwise(nn.Linear(2, 2), []),  # has statistics
        "residual": ResidualMLP(None, None, None, False),  # has none
        "user": LinearForm(nn.Linear(2, 2)),
    }


@pytest.mark.parametrize(
    "rows, gram, m_prime, gathers",
    [
        (None, None, "autograd", False),
        ("affine", None, "affine", False),
        ("user", None, "closed-form rows", False),
        ("linear elementwise", None, "closed-form rows", False),
        (None, "residual", "closed form", False),
        ("affine", "user", "closed form", False),
        ("linear elementwise", "linear elementwise", "closed form", True),
    ],
)
def test_section_route_properties(rows, gram, m_prime, gathers):
    forms = _forms()
    route = SectionRoute(SECTION, rows=forms.get(rows), gram=forms.get(gram))
    assert route.form("rows") is forms.get(rows) and route.form("gram") is forms.get(gram)
    assert route.form("tangents") is None
    assert route.m_prime == m_prime
    assert route.row_free is (m_prime not in ("autograd", "closed-form rows"))
    assert route.makes_rows is (gram is None)
    assert route.gathers_statistics is gathers


def test_autograd_route_has_no_form():
    route = autograd_route(SECTION)
    assert route == SectionRoute(SECTION) and route.section is SECTION
    assert not route.row_free and route.makes_rows and route.verdicts == ()


def test_route_table_looks_sections_up_by_their_names():
    first = SectionRoute(
        Section("a", "b", (3,), (4,)),
        gram=_forms()["residual"],
        verdicts=(Verdict("F", "rows", True), Verdict("G", "gram", False, "it disagrees")),
    )
    second = SectionRoute(Section("b", OUTPUT_NODE, (4,), (2,)))
    routes = RouteTable([first, second])
    assert len(routes) == 2 and list(routes) == [("a", "b"), ("b", OUTPUT_NODE)]
    assert routes[Section("a", "b")] is first  # shapes or not, the names decide
    assert routes[Section("b", OUTPUT_NODE, (9,), None)] is second
    with pytest.raises(KeyError):
        routes[Section("a", "c")]
    assert routes.summary() == (
        "'a' -> 'b': M' by closed form (F for rows: passed; G for gram: failed, it disagrees)\n"
        "'b' -> 'output': M' by autograd"
    )
    assert RouteTable([]).summary() == ""


# -- padding -------------------------------------------------------------------------------------
class PaddedTail(nn.Module):
    """Token ids and a mask -> masked embeddings -> ``tail`` (Linear, Tanh, Linear)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(9, 3)
        self.tail = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        if attention_mask is not None:
            h = h * attention_mask[..., None].to(h.dtype)
        return self.tail(h)


def _padded_probe(n=20, T=4):
    mask = torch.ones(n, T, dtype=torch.int64)
    mask[::2, 2:] = 0
    ids = torch.randint(1, 9, (n, T), generator=torch.Generator().manual_seed(0)) * mask
    return {"input_ids": ids, "attention_mask": mask}


class _Unchecked(ClosedForm):
    """A form that must never be checked (it knows nothing of padding)."""

    @classmethod
    def detect(cls, session, section):
        return cls()

    def vjp(self, x, points, cotangents, tangents=None):
        raise AssertionError("a form without padding was checked on a masked section")


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "mask of ones"])
def test_a_section_the_mask_covers_takes_autograd(padded, monkeypatch):
    """Forms that know nothing of padding are left out, padded probe or not."""
    probe = _padded_probe()
    if not padded:  # the structure decides, not this probe's padding
        probe["attention_mask"] = torch.ones_like(probe["attention_mask"])
    monkeypatch.setattr(table, "applicable_forms", lambda *args, **kwargs: [_Unchecked()])
    routes, (section,) = _decide(PaddedTail().double(), probe, [("tail.0", "tail.2")])
    assert _kinds_served(routes[section]) == dict.fromkeys(KINDS)
    assert routes[section].verdicts == ()
    # The plan says why: the form was left out for the mask.
    assert routes[section].skipped == ("A closed form: an attention_mask covers its positions",)
    assert "not applied: A closed form: an attention_mask covers" in routes.summary()


class PooledHead(nn.Module):
    """Masked-mean pooled embeddings -> ``head`` (Linear, Tanh, Linear): no positions."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(9, 3)
        self.head = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))

    def forward(self, input_ids, attention_mask):
        weights = attention_mask[..., None].to(self.embed.weight.dtype)
        pooled = (self.embed(input_ids) * weights).sum(1) / weights.sum(1)
        return self.head(pooled)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_section_the_mask_does_not_cover_takes_its_closed_form():
    routes, (section,) = _decide(PooledHead().double(), _padded_probe(), [("head.0", "head.2")])
    assert isinstance(routes[section].gram, LinearElementwise)
    assert routes[section].gathers_statistics


class Scaled(nn.Module):
    """``fc2(tanh(fc1(x))) * scale``: affine from fc2 on, called with a keyword argument."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x, scale=1.0):
        return self.fc2(torch.tanh(self.fc1(x))) * scale


def test_the_summary_says_why_each_form_did_not_apply():
    """forward_kwargs vetoes the forms read from code, and a tensor among them the traced
    section's too; the others do not apply: the summary of the autograd section says so,
    form by form."""
    session = ModelSession(Scaled().double(), forward_kwargs={"scale": torch.tensor(2.0)})
    x = torch.randn(20, 4, dtype=torch.float64)
    section = Section("fc2", OUTPUT_NODE, (8,), (3,))
    routes = decide_routes(session, x, [section], (torch.ones(1), torch.ones(1)), {"gram", "rows"})
    vetoed = "the model is called with forward_kwargs"
    assert routes[section].skipped == (
        "The model's lib_section_vjp / lib_section_gram: it does not apply",
        f"The Linear -> elementwise formula: {vetoed}",
        f"The residual MLP formula: {vetoed}",
        f"The affine-section route (rows of one sample for all): {vetoed}",
        "The final linear map's factor (rows of its input): it does not apply",
        "The traced section's products: forward_kwargs holds tensors, which a trace would "
        "take for constants",
    )
    assert "M' by autograd; not applied: The model's lib_section_vjp" in routes.summary()


def test_the_traced_section_reads_forward_kwargs_as_the_model_is_called():
    session = ModelSession(Scaled().double(), forward_kwargs={"scale": 2.0})
    x = torch.randn(20, 4, dtype=torch.float64)
    section = Section("fc2", OUTPUT_NODE, (8,), (3,))
    routes = decide_routes(session, x, [section], (torch.ones(1), torch.ones(1)), {"gram", "rows"})
    assert isinstance(routes[section].rows, TracedSection)  # checked against autograd


def test_the_batch_within_the_cache_is_the_smallest_forms():
    pairs = [("blocks.0.attn", "blocks.0.mlp"), ("blocks.0.mlp", "unembed"), ("unembed", "output")]
    routes, (attn, _, _) = _decide(user_transformer(), modadd_tokens(20), pairs)
    # Only the traced attention bounds it, as measured on the probe's check.
    bound = routes[attn].rows.batch_within_cache()
    assert bound is not None and routes.batch_within_cache() == bound
    assert RouteTable([]).batch_within_cache() is None
