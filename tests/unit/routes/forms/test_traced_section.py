"""The traced section's products (``_routes.forms.traced_section``): attention, LayerNorm and
MLP blocks written in many ways, against autograd's rows; and where it must not apply."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _attention import (
    MASKS,
    RULE,
    STYLES,
    Attention,
    Block,
    D,
    P,
    assert_same,
    inputs,
    model_of,
    per_position,
    rows_against_autograd,
)
from _sections import section_of
from torch import nn

from sklearn_lib import LIBTransformer
from sklearn_lib._core.nodes import OUTPUT_NODE
from sklearn_lib._model.session import ModelSession
from sklearn_lib._routes.autograd import autograd_rows
from sklearn_lib._routes.cotangents import Cotangents
from sklearn_lib._routes.forms.base import Inapplicable
from sklearn_lib._routes.forms.traced_section import TracedSection
from sklearn_lib._routes.integration import rule_tensors
from sklearn_lib._routes.table import decide_routes


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("mask", MASKS)
def test_attention_rows_equal_autograds(style, mask):
    if style == "bmm" and mask == "sdpa":
        pytest.skip("sdpa takes no bmm")
    model = model_of(lambda: Attention(style, mask))
    assert_same(*rows_against_autograd(model, "blocks.0", "head"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("where", ["inside", "outside"])
def test_the_last_position_sliced_inside_or_outside(dtype, where):
    inside = where == "inside"
    model = model_of(lambda: Attention("linear", "where", last=inside), last=not inside,
                     dtype=dtype)  # fmt: skip
    traced, auto = rows_against_autograd(model, "blocks.0", "head")
    assert auto.shape[2] == P  # every input position has rows
    assert_same(traced, auto, dtype)


@pytest.mark.parametrize("layer_norm", ["module", "functional", "by hand"])
@pytest.mark.parametrize("mask", ["sdpa", "masked_fill"])
def test_a_whole_pre_layer_norm_block(layer_norm, mask):
    model = model_of(lambda: Block("linear", mask, layer_norm))
    assert_same(*rows_against_autograd(model, "blocks.0", "head"))


@pytest.mark.parametrize("mask", ["sdpa", "masked_fill", "none"])
def test_rows_drawn_for_each_sample_apart_equal_autograds(mask):
    """Stochastic sources per sample: each sample's own cotangent goes back through the
    trace, at every point of the rule, as through autograd."""
    model = model_of(lambda: Block("linear", mask, "module"), lambda: Attention("einsum", mask))
    traced, auto = rows_against_autograd(model, "blocks.0", "head", exact="per sample")
    assert_same(traced, auto)
    assert not torch.allclose(auto[:, 0], auto[:, 1])  # the samples' rows differ


def test_two_blocks_in_a_module_list_and_their_sections():
    model = model_of(lambda: Block("einsum", "where"), lambda: Block("linear", "sdpa"))
    assert_same(*rows_against_autograd(model, "blocks.0", "blocks.1"))
    assert_same(*rows_against_autograd(model, "blocks.1", "head"))
    # A section from inside one block to the next: the attention's input is a cut.
    assert_same(*rows_against_autograd(model, "blocks.0.attn", "blocks.1"))
    # The second LayerNorm's input is read by the residual add too: no cut, no graph.
    session = ModelSession(model)
    found = TracedSection.detect(session, section_of(session, inputs(), "blocks.1.ln2", "head"))
    assert isinstance(found, Inapplicable) and "not a cut" in found.why


def test_float32_rows_agree_to_float32_rounding():
    model = model_of(lambda: Block("linear", "sdpa"), dtype=torch.float32)
    assert_same(*rows_against_autograd(model, "blocks.0", "head"), dtype=torch.float32)


class Grid(nn.Module):
    """Attention along the last position axis of 4-D activations ``(n, g, p, d)``."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(D, D, bias=False) for _ in range(3))

    def forward(self, x):
        s = self.q(x) @ self.k(x).mT / math.sqrt(D)
        return x + torch.softmax(s, -1) @ self.v(x)


class GridModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, D)
        self.block = Grid()
        self.head = nn.Linear(D, 2)

    def forward(self, x):  # (n, 2, P, 3)
        return self.head(self.block(self.embed(x)).sum(1))


class Flat(nn.Module):
    """2-D activations: an MLP block on ``(n, d)``, written with ``@`` and parameters."""

    def __init__(self):
        super().__init__()
        self.W_in = nn.Parameter(torch.randn(D, 3 * D) * 0.3)
        self.W_out = nn.Parameter(torch.randn(3 * D, D) * 0.3)
        self.ln = nn.LayerNorm(D)

    def forward(self, x):
        return x + torch.tanh(self.ln(x) @ self.W_in) @ self.W_out


class FlatModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.block, self.head = nn.Linear(3, D), Flat(), nn.Linear(D, 4)

    def forward(self, x):
        return self.head(torch.relu(self.block(self.embed(x))))


@pytest.mark.parametrize("ndim", [2, 4])
def test_activations_of_two_and_four_dimensions(ndim):
    torch.manual_seed(0)
    model = (FlatModel() if ndim == 2 else GridModel()).double().eval()
    shape = (6, 3) if ndim == 2 else (6, 2, P, 3)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    options = {"feature_axis": -1} if ndim == 4 else {}
    assert_same(*rows_against_autograd(model, "block", OUTPUT_NODE, x=x, **options))


# -- where it must not apply --------------------------------------------------------------
class Sparsemax(Attention):
    """Attention normalised by sparsemax (sort and cumulative sums) instead of softmax."""

    def forward(self, x):
        q, k, v = self.heads(x)
        s = self.scores(q, k)
        z_sorted, _ = torch.sort(s, dim=-1, descending=True)
        ks = torch.arange(1, P + 1, dtype=s.dtype)
        cum = z_sorted.cumsum(-1)
        support = (1 + ks * z_sorted > cum).sum(-1, keepdim=True)
        tau = (cum.gather(-1, support - 1) - 1) / support.to(s.dtype)
        z = torch.clamp(s - tau, min=0) @ v
        return x + self.proj(z.transpose(1, 2).reshape(x.shape))


def test_an_attention_variant_falls_back_to_autograd_with_a_warning():
    model = model_of(lambda: Sparsemax("linear"), dtype=torch.float64)
    X = inputs(n=24).numpy()
    with pytest.warns(RuntimeWarning, match="sort.*autograd"):
        fast = LIBTransformer(model, "blocks.0").fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slow = LIBTransformer(model, "blocks.0", jacobian="autograd").fit(X)
    np.testing.assert_allclose(fast.lambdas_, slow.lambdas_, rtol=1e-10)


class TakesMask(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.attn, self.head = (
            nn.Linear(3, D),
            Attention("linear", "none"),
            nn.Linear(D, 2),
        )

    def forward(self, x, mask=None):
        h = self.attn(self.embed(x))
        return self.head(h if mask is None else h * mask[..., None])


class Skip(TakesMask):
    """The head reads the model's input besides the attention's output."""

    def forward(self, x):
        return self.head(self.attn(self.embed(x)) + x.sum(-1, keepdim=True))


def test_a_section_reads_the_models_other_inputs_as_the_model_does():
    torch.manual_seed(0)
    model = TakesMask().double().eval()
    session = ModelSession(model)
    found = TracedSection.detect(session, section_of(session, inputs(), "attn"))
    assert isinstance(found, TracedSection)  # the default mask=None is traced as a constant
    torch.manual_seed(0)
    assert_same(*rows_against_autograd(Skip().double().eval(), "attn"))


class InPlace(Attention):
    def forward(self, x):
        y = super().forward(x)
        y.mul_(2.0)
        return y


def test_in_place_operations_are_not_run():
    model = model_of(lambda: InPlace("linear", "sdpa"))
    session = ModelSession(model)
    found = TracedSection.detect(session, section_of(session, inputs(), "blocks.0", "head"))
    assert isinstance(found, Inapplicable) and "mul_" in found.why and "in place" in found.why


def test_the_route_summary_names_why_the_form_did_not_apply():
    model = model_of(lambda: InPlace("linear", "sdpa"))
    session = ModelSession(model)
    x = inputs()
    section = section_of(session, x, "blocks.0", "head")
    routes = decide_routes(session, x, [section], rule_tensors(RULE, "cpu"), {"rows"})
    assert routes[section].rows is None
    assert "The traced section's products: the operation 'mul_'" in routes.summary()


def test_the_route_table_takes_it_for_attention():
    model = model_of(lambda: Attention("linear", "sdpa"))
    session = ModelSession(model)
    x = inputs()
    section = section_of(session, x, "blocks.0", "head")
    routes = decide_routes(session, x, [section], rule_tensors(RULE, "cpu"), {"gram", "rows"})
    assert isinstance(routes[section].rows, TracedSection)
    assert routes[section].m_prime == "closed-form rows"


# -- Hugging Face models, by torch.export ------------------------------------------------
def padded_tokens(n, length, vocab, seed=0):
    """Token ids with an attention mask that pads a few sequences on the right."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (n, length), generator=generator)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, length - 3 :] = 0
    mask[1, length - 1 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hugging_face_gpt2_blocks_by_export(attention, dtype):
    pytest.importorskip("transformers", reason="needs transformers (pip install .[models])")
    from toy_models import GPT2_VOCAB, tiny_gpt2

    model = tiny_gpt2()
    model.config._attn_implementation = attention
    x = padded_tokens(6, 8, GPT2_VOCAB)
    options = {"dtype": dtype, "forward_kwargs": {"use_cache": False}, "output": "logits"}
    for src, dst in [
        ("transformer.h.0", "transformer.h.1"),
        ("transformer.h.1", "transformer.ln_f"),
    ]:
        traced, auto = rows_against_autograd(model, src, dst, x=x, **options)
        assert_same(traced, auto, dtype)
        per_position(model, src, dst, x=x, **options)  # the padded positions' rows vanish


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_a_bert_layer_with_padding_by_export(attention):
    pytest.importorskip("transformers", reason="needs transformers (pip install .[models])")
    from toy_models import BERT_VOCAB, tiny_bert

    model = tiny_bert()
    model.config._attn_implementation = attention
    x = padded_tokens(6, 10, BERT_VOCAB)
    options = {"dtype": torch.float64, "output": "last_hidden_state"}
    for src, dst in [("encoder.layer.0", "encoder.layer.1"),
                     ("encoder.layer.0.attention", "encoder.layer.0.intermediate")]:  # fmt: skip
        assert_same(*rows_against_autograd(model, src, dst, x=x, **options))
        per_position(model, src, dst, x=x, **options)


def test_a_gpt2_fit_takes_the_export_and_gives_autograds_basis():
    pytest.importorskip("transformers", reason="needs transformers (pip install .[models])")
    from toy_models import GPT2_VOCAB, tiny_gpt2

    x = padded_tokens(40, 8, GPT2_VOCAB, seed=3)
    params = dict(
        downstream_layers=["transformer.h.1", "transformer.ln_f"],
        output="logits",
        forward_kwargs={"use_cache": False},
        batch_size=16,  # three batches: the last of another shape, exported anew
    )
    fast = LIBTransformer(tiny_gpt2(), "transformer.h.0", verbose=True, **params).fit(x)
    slow = LIBTransformer(tiny_gpt2(), "transformer.h.0", jacobian="autograd", **params).fit(x)
    for name in ("transformer.h.0", "transformer.h.1"):
        want = slow.bases_[name].lambdas
        np.testing.assert_allclose(fast.bases_[name].lambdas, want, rtol=1e-9, atol=1e-12 * want[0])


# -- review findings ---------------------------------------------------------------------
class MaskedAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(D, 3 * D)

    def forward(self, x, mask=None):
        q, k, v = self.qkv(x).split(D, -1)
        scores = q @ k.mT / D**0.5
        if mask is not None:  # bidirectional, padded keys masked
            scores = scores.masked_fill(mask[:, None, :] == 0, -1e9)
        return x + F.softmax(scores, -1) @ v


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.attn, self.head = nn.Embedding(20, D), MaskedAttention(), nn.Linear(D, 4)

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.attn(self.emb(input_ids), attention_mask))


def token_batch(pad, seed):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(16, 6, dtype=torch.long)
    if pad:
        mask[::2, 4:] = 0
    return {"input_ids": torch.randint(1, 20, (16, 6), generator=generator), "attention_mask": mask}


def test_a_dict_batchs_mask_is_read_though_the_forward_defaults_it_to_none():
    """fx traced the forward with attention_mask=None; a padded batch after an unpadded
    probe got the unmasked attention's rows (found in review: Lambda off by 2%)."""

    class Stream:
        def __iter__(self):
            yield token_batch(pad=False, seed=0)  # the probe: no padding
            yield token_batch(pad=True, seed=1)

    lambdas = {}
    for jacobian in ("auto", "autograd"):
        torch.manual_seed(0)
        lib = LIBTransformer(Tokens().double().eval(), "attn", downstream_layers=["head"],
                             jacobian=jacobian)  # fmt: skip
        lambdas[jacobian] = lib.fit(Stream()).bases_["attn"].lambdas
    np.testing.assert_allclose(lambdas["auto"], lambdas["autograd"], rtol=1e-10)


class ShapeBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(D, D)

    def forward(self, x):
        if x.shape[1] > 3:  # fx cannot trace it; the export narrows the length's range
            x = x * 2
        return x + F.softmax(self.fc(x), -1)


class Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.blocks, self.head = (
            nn.Embedding(20, D),
            nn.ModuleList([ShapeBranch()]),
            nn.Linear(D, 5),
        )

    def forward(self, input_ids):
        h = self.emb(input_ids)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def test_an_export_is_not_reused_outside_the_sizes_it_was_made_for():
    torch.manual_seed(0)
    model = Branching().double().eval()
    generator = torch.Generator().manual_seed(0)
    for length in (6, 3):  # the second would reuse the first's export (33% off in review)
        x = torch.randint(0, 20, (4, length), generator=generator)
        assert_same(*rows_against_autograd(model, "blocks.0", "head", x=x))


class FailsOnExport(Branching):
    """:class:`Branching` that raises on its next ``armed`` calls (an export tries twice:
    with dynamic sizes, then without); the counter is shared by the model's copies."""

    class Armed:
        calls = 0

        def __deepcopy__(self, memo):
            return self

    def __init__(self):
        super().__init__()
        self.armed = self.Armed()

    def forward(self, input_ids):
        if self.armed.calls:
            self.armed.calls -= 1
            raise RuntimeError("a fault of the model's")
        return super().forward(input_ids)


def test_an_export_that_fails_after_one_served_warns_and_takes_autograds_rows():
    """An export failing for a batch of other shapes, after one served the check, gives the
    route up on those batches: said, not silent (the same rows, by autograd)."""
    torch.manual_seed(0)
    model = FailsOnExport().double().eval()
    session = ModelSession(model)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 20, (4, length), generator=generator) for length in (6, 3)]
    section = section_of(session, batches[0], "blocks.0", "head")
    form = TracedSection.detect(session, section)
    assert isinstance(form, TracedSection) and form.trace is None  # by torch.export
    weights = torch.ones(1, dtype=torch.float64)
    for x, armed in zip(batches, (0, 2)):
        with torch.no_grad():
            (f,) = session.read(x, ["blocks.0"])
        rows = Cotangents.identity(f.shape[1:], torch.float64, "cpu").rows[:]  # (P D, P, D)
        model.armed.calls = armed
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            made = torch.cat(list(form.rows(x, f, rows, weights, [(0, rows.shape[0])])))
        messages = [str(w.message) for w in caught]
        auto = torch.cat(list(autograd_rows(session, section, x, f, rows, weights)))
        assert_same(made.expand_as(auto), auto)
        if not armed:
            assert not messages
            continue
        assert messages == [
            "The traced section's products failed on a batch (RuntimeError: on inputs shaped "
            "as this batch, torch.export cannot trace the model (RuntimeError: a fault of the "
            "model's)); the section 'blocks.0' -> 'head' takes autograd's rows there"
        ]
        assert caught[0].filename == __file__


class Odd(Attention):
    """Operations the review found mishandled: a tensor made in the forward, a negative
    index into a chunk, a broadcast cotangent summed, a keepdim sum fed to a Linear."""

    def __init__(self, case):
        super().__init__("linear", "sdpa")
        self.case = case

    def forward(self, x):
        y = super().forward(x)
        if self.case == "constant":
            return y * torch.linspace(0.5, 1.5, D, dtype=y.dtype)
        if self.case == "chunk":
            return torch.cat([y.chunk(2, -1)[-1], y.chunk(2, -1)[0]], -1)
        if self.case == "broadcast":
            return y + y.sum(-1, keepdim=True).expand(-1, -1, 1) + 0 * y[..., :1]
        return self.proj(y.sum(-1, keepdim=True).expand_as(y))


@pytest.mark.parametrize("case", ["constant", "chunk", "broadcast", "keepdim"])
def test_operations_the_review_found(case):
    model = model_of(lambda: Odd(case))
    assert_same(*rows_against_autograd(model, "blocks.0", "head"))


class PowerOf(Attention):
    def forward(self, x):
        return 2 ** super().forward(x)  # the derivative is in the exponent


def test_a_number_to_a_power_is_not_taken_and_the_fit_runs():
    model = model_of(lambda: PowerOf("linear", "sdpa"))
    session = ModelSession(model)
    found = TracedSection.detect(session, section_of(session, inputs(), "blocks.0", "head"))
    assert isinstance(found, Inapplicable) and "another argument" in found.why
    with pytest.warns(RuntimeWarning, match="another argument.*autograd"):  # it holds attention
        LIBTransformer(model, "blocks.0", downstream_layers=["head"]).fit(inputs(20).numpy())


class MaskFromInput(Attention):
    def forward(self, x):
        q, k, v = self.heads(x)
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.tanh(q @ k.mT))
        return x + self.proj(z.transpose(1, 2).reshape(x.shape))


def test_sdpa_with_a_mask_that_depends_on_the_input_falls_back():
    model = model_of(lambda: MaskFromInput("linear"))
    session = ModelSession(model)
    x = inputs()
    section = section_of(session, x, "blocks.0", "head")
    with pytest.warns(RuntimeWarning, match="attention mask that depends on the input"):
        routes = decide_routes(session, x, [section], rule_tensors(RULE, "cpu"), {"rows"})
    assert routes[section].rows is None
