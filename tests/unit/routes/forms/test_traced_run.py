"""A traced section's run (``_routes.forms.traced_run``): exact rows per output position
against autograd's, the check against the whole rows, and the chunks of rows."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from _attention import (
    Attention,
    Block,
    D,
    P,
    assert_same,
    inputs,
    model_of,
    per_position,
    rows_and_form,
)
from _sections import section_of
from torch import nn

from sklearn_lib._model.session import ModelSession
from sklearn_lib._routes.cotangents import Cotangents, ExactRows
from sklearn_lib._routes.forms import traced_run
from sklearn_lib._routes.forms.traced_run import Trace
from sklearn_lib._routes.forms.traced_section import TracedSection


# -- exact rows per output position -------------------------------------------------------
@pytest.mark.parametrize("style", ["einsum", "linear", "conv1d", "bmm"])
@pytest.mark.parametrize("mask", ["where", "sdpa"])
def test_exact_rows_per_position_through_attention(style, mask):
    if style == "bmm" and mask == "sdpa":
        pytest.skip("sdpa takes no bmm")
    per_position(model_of(lambda: Attention(style, mask)), "blocks.0", "head")


@pytest.mark.parametrize("layer_norm", ["module", "functional", "by hand"])
def test_exact_rows_per_position_through_a_whole_block(layer_norm):
    model = model_of(lambda: Block("linear", "masked_fill", layer_norm),
                     lambda: Block("einsum", "where"))  # fmt: skip
    per_position(model, "blocks.0", "blocks.1")
    per_position(model, "blocks.1", "head")


def test_exact_rows_per_position_in_float32():
    model = model_of(lambda: Block("conv1d", "sdpa"), dtype=torch.float32)
    per_position(model, "blocks.0", "head", dtype=torch.float32)


def test_a_wrong_position_rule_is_caught_and_the_whole_rows_taken(monkeypatch):
    """Were attention's values said to stay at their query's position, the rows per
    position would be wrong: the check against the whole rows finds it, warns, and the
    rows are still autograd's."""
    from sklearn_lib._routes.forms import traced_positions

    rule = traced_positions.position_map

    def wrong(op, a, out, positions, wanted):
        found = rule(op, a, out, positions, wanted)
        if op == "matmul":  # claims the other operand too
            found = {name: found["input"] for name in found}
        return found

    monkeypatch.setattr("sklearn_lib._routes.forms.traced_run.position_map", wrong)
    model = model_of(lambda: Attention("linear", "where"))
    with pytest.warns(RuntimeWarning, match="per output position disagree"):
        traced, auto, form = rows_and_form(model, "blocks.0", "head", exact=True)
    assert_same(traced, auto)
    assert form.trace.diagonal is False


class PooledQuery(nn.Module):
    """Attention over positions (H, W) whose query is pooled over H, its edge columns masked
    (found in review: rows per position wrong in the middle rows only)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, D)
        mask = torch.ones(1, 1, 6, 1)
        mask[:, :, :2] = mask[:, :, -2:] = 0
        self.register_buffer("mask", mask)

    def forward(self, x):  # (n, H, W, D)
        q = self.lin(x).mean(1, keepdim=True)
        return x + F.scaled_dot_product_attention(q, x, x) * self.mask.to(x.dtype)


def test_a_query_pooled_over_positions_and_two_position_axes():
    x = torch.randn(3, 3, 6, 3, generator=torch.Generator().manual_seed(1)).double()
    per_position(model_of(PooledQuery), "blocks.0", "head", x=x, feature_axis=-1)


def test_a_failure_of_the_rows_per_position_warns_once_and_takes_whole_rows(monkeypatch):
    def fails(self, *args):
        raise RuntimeError("boom")

    monkeypatch.setattr(Trace, "_diagonal", fails)
    model = model_of(lambda: Block("linear", "where"))
    with pytest.warns(RuntimeWarning, match="per output position failed"):
        traced, auto, form = rows_and_form(model, "blocks.0", "head", exact=True)
    assert_same(traced, auto)
    assert form.trace.diagonal is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # whole rows from then on, without a word
        assert form.trace._per_position(None, None, None, None) is None


def test_rows_per_position_that_would_not_fit_are_taken_whole(monkeypatch):
    """Every next feature's rows wait per position at attention's scores: where they would
    hold more than PER_POSITION_BYTES (long sequences, wide layers), whole rows throughout."""
    monkeypatch.setattr("sklearn_lib._routes.forms.traced_run.PER_POSITION_BYTES", 1000)
    model = model_of(lambda: Block("linear", "where"))
    traced, auto, form = rows_and_form(model, "blocks.0", "head", exact=True)
    assert_same(traced, auto)
    assert form.trace.diagonal is None  # never taken, so never checked


def form_of(block, n):
    """``(form, x, f, section)``: the traced form of a one-block model's section, its batch
    of ``n`` samples and the activations at the section's start."""
    x = inputs(n=n)
    session = ModelSession(model_of(block))
    section = section_of(session, x, "blocks.0", "head")
    with torch.no_grad():
        (f,) = session.read(x, ["blocks.0"])
    return TracedSection.detect(session, section), x, f, section


def run_forward(block, n):
    """``(trace, values, saved, section)`` of a one-block model's section, run forward on
    ``n`` samples."""
    form, x, f, section = form_of(block, n)
    with torch.no_grad():
        values, saved = form.trace.forward(f, x)
    return form.trace, values, saved, section


def test_rows_per_position_chunk_by_what_they_meet_whole():
    """The MLP's hidden values meet only rows per position: the whole rows' chunks are
    sized by the attention's values, and fit the CPU's budget."""
    trace, values, saved, section = run_forward(lambda: Block("linear", "sdpa"), 64)
    rows = Cotangents.identity(section.dst_shape, torch.float64, "cpu").rows
    with torch.no_grad():
        made = trace._diagonal(values, saved, rows, None)
    hidden = 64 * P * 4 * D * 8  # bytes of the MLP's hidden values
    assert trace._chunk(values, None) == traced_run.ROW_BYTES["cpu"] // hidden
    assert trace._chunk(values, made) > trace._chunk(values, None)


def test_fused_attentions_pattern_counts_in_the_chunks():
    """``sdpa`` makes an attention pattern per row that no graph value holds: the chunks
    count it (long sequences: (n, h, L, L) per row)."""
    trace, values, _, _ = run_forward(lambda: Attention("linear", "sdpa"), 64)
    fused = [n for n, step in trace.steps.items() if step.op.name == "sdpa"]
    assert len(fused) == 1
    assert trace._pattern_bytes(fused[0], values) == 64 * 2 * P * P * 8  # (n, h, L, S)


def test_exact_rows_of_no_next_feature_take_nothing_per_position():
    """A next basis of no features has no rows: nothing to send, no warning (found in
    review: it failed, warned and turned rows per position off for good)."""
    trace, values, saved, _ = run_forward(lambda: Block("linear", "sdpa"), 6)
    none = ExactRows(torch.zeros(5, 0, dtype=torch.float64), P)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert trace._per_position(values, saved, none, None) is None
    assert trace.diagonal is None


def test_a_batch_within_the_cache_leaves_room_for_its_rows():
    """On a CPU, a batch of ``batch_within_cache`` samples has chunks of CACHED_ROWS rows
    of the largest value they meet (the attention pattern or the MLP's hidden values);
    None before any batch and off a CPU, where large products win."""
    form, x, f, section = form_of(lambda: Block("linear", "sdpa"), 64)
    assert form.batch_within_cache() is None  # nothing measured yet
    rows = Cotangents.identity(section.dst_shape, torch.float64, "cpu").rows
    with torch.no_grad():
        form.vjp(x, f, rows[:2])
    hidden = P * 4 * D * 8  # the MLP's hidden values: the largest, per sample
    assert form.trace.bytes_per_sample == hidden
    expected = traced_run.ROW_BYTES["cpu"] // (traced_run.CACHED_ROWS * hidden)
    assert form.batch_within_cache() == expected
    trace, values, _, _ = run_forward(lambda: Block("linear", "sdpa"), expected)
    trace.bytes_per_sample = hidden
    assert trace._chunk(values, None) == traced_run.CACHED_ROWS
    assert form.trace.batch_within_cache("cuda") is None


def test_the_cache_bound_counts_samples_not_the_rules_points():
    """An integration rule's points are copies of the batch: the bytes are per sample."""
    measured = []
    for copies in (1, 3):
        form, x, f, section = form_of(lambda: Block("linear", "sdpa"), 8)
        rows = Cotangents.identity(section.dst_shape, torch.float64, "cpu").rows[:2]
        with torch.no_grad():
            form.vjp(x, torch.cat([f * (i + 1) / copies for i in range(copies)]), rows)
        measured.append(form.trace.bytes_per_sample)
    assert measured[1] == 3 * measured[0]  # three points a sample: three times the values
