"""The autograd route (``_routes.autograd``) against brute-force integrated Jacobians."""

import pytest
import torch
from torch import nn

from sklearn_lib._core.nodes import OUTPUT_NODE, Section
from sklearn_lib._model.session import ModelSession
from sklearn_lib._routes import autograd
from sklearn_lib._routes.autograd import autograd_rows, integrated_vjps, quadrature_sum
from sklearn_lib._routes.cotangents import Cotangents, scaled

RULES = {"gradient": ((1.0,), (1.0,)), "three points": ((0.2, 0.6, 1.0), (0.25, 0.35, 0.4))}


class Mix(nn.Module):
    """``out_t = tanh(sum_s A[t, s] h_s W)``: every output position sees every input one."""

    def __init__(self, p_in, p_out, d, d_out, pooled=False):
        super().__init__()
        self.A = nn.Parameter(torch.randn(p_out, p_in))
        self.W = nn.Parameter(torch.randn(d, d_out) / d**0.5)
        self.pooled = pooled

    def forward(self, h):  # (n, P_in, d) -> (n, P_out, d_out), or (n, d_out) pooled
        out = torch.tanh(torch.einsum("ts,nsd,de->nte", self.A, h, self.W))
        return out.mean(1) if self.pooled else out


def _tensors(*values):
    return tuple(torch.tensor(v, dtype=torch.float64) for v in values)


def brute_rows(fn, f, rows, alphas, weights, mask=None):
    """``sum_a w_a J(alpha_a f_x)^T c_r`` per sample, by the full Jacobian: (R, n, *pos, d).

    With ``mask`` (n, P_out), cotangents at masked output positions are zero.
    """
    out = []
    for i, point in enumerate(f):
        g = 0
        for alpha, weight in zip(alphas, weights):
            jac = torch.autograd.functional.jacobian(lambda p: fn(p[None])[0], alpha * point)
            out_shape = jac.shape[: jac.ndim - point.ndim]
            c = rows.reshape(-1, *out_shape)
            if mask is not None:
                c = c * mask[i].reshape(-1, *[1] * (len(out_shape) - 1)).to(c)
            g = g + weight * torch.tensordot(c, jac, dims=len(out_shape))
        out.append(g)
    return torch.stack(out, 1)


# -- quadrature_sum ----------------------------------------------------------------------
@pytest.mark.parametrize("weights", [(1.0,), (0.3,), (0.2, 0.5, 0.3)])
def test_quadrature_sum_is_the_weighted_sum_over_alpha_major_points(rng, weights):
    n, w = 4, torch.tensor(weights, dtype=torch.float64)
    grads = torch.as_tensor(rng.normal(size=(3, len(weights) * n, 2, 5)))
    expected = sum(w[a] * grads[:, a * n : (a + 1) * n] for a in range(len(weights)))
    got = quadrature_sum(grads, w, n)
    assert got.shape == (3, n, 2, 5)
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=0)


def test_quadrature_sum_of_the_plain_gradient_is_no_copy(rng):
    grads = torch.as_tensor(rng.normal(size=(2, 3, 4, 5)))
    got = quadrature_sum(grads, torch.ones(1, dtype=torch.float64), 3)
    assert torch.equal(got, grads) and got.data_ptr() == grads.data_ptr()


# -- integrated_vjps ---------------------------------------------------------------------
def _problem(rng, positions, rule):
    """A mixing section on ``(n, *positions, d)`` points, its rows and stacked points."""
    torch.manual_seed(1)
    p = positions[0] if positions else 1
    fn = Mix(p, 2, 3, 4).double()
    section = (lambda h: fn(h.reshape(h.shape[0], p, 3))) if not positions else fn
    f = torch.as_tensor(rng.normal(size=(5, *positions, 3)))
    alphas, weights = _tensors(*RULES[rule])
    return section, f, alphas, weights


def _vjps(section, f, alphas, weights, rows, batched):
    leaf = scaled(f, alphas).requires_grad_(True)
    with torch.enable_grad():
        out = section(leaf).reshape(leaf.shape[0], *rows.shape[1:])
        return list(integrated_vjps(out, leaf, rows, weights, f.shape[0], batched))


@pytest.mark.parametrize("batched", [False, True], ids=["loop", "vmap"])
@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("positions", [(), (3,)], ids=["no positions", "positions"])
@pytest.mark.parametrize("exact", [False, True], ids=["random rows", "exact rows"])
def test_integrated_vjps_equal_brute_force(rng, batched, rule, positions, exact):
    section, f, alphas, weights = _problem(rng, positions, rule)
    if exact:
        rows = Cotangents(torch.as_tensor(rng.normal(size=(4, 3))), 2).rows
    else:
        rows = torch.as_tensor(rng.normal(size=(5, 2, 4)))
    chunks = _vjps(section, f, alphas, weights, rows, batched)
    got = torch.cat(chunks)
    expected = brute_rows(section, f, rows[:], *RULES[rule])
    p = positions[0] if positions else 1
    assert got.shape == (len(rows), 5, p, 3)
    torch.testing.assert_close(got, expected.reshape(got.shape), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batched", [False, True], ids=["loop", "vmap"])
@pytest.mark.parametrize("exact", [False, True], ids=["random rows", "exact rows"])
def test_integrated_vjps_in_small_chunks_give_the_same_rows_in_order(
    rng, monkeypatch, batched, exact
):
    section, f, alphas, weights = _problem(rng, (3,), "three points")
    if exact:
        rows = Cotangents(torch.as_tensor(rng.normal(size=(4, 3))), 2).rows
    else:
        rows = torch.as_tensor(rng.normal(size=(7, 2, 4)))
    whole = _vjps(section, f, alphas, weights, rows, batched)
    monkeypatch.setattr(autograd, "CHUNK_ELEMENTS", 20)  # a few rows per block, one per chunk
    chunks = _vjps(section, f, alphas, weights, rows, batched)
    assert len(chunks) == len(rows) and all(g.shape[0] == 1 for g in chunks)
    torch.testing.assert_close(torch.cat(chunks), torch.cat(whole), rtol=1e-13, atol=1e-14)
    if batched:
        assert len(whole) < len(rows)  # the default budget batches several rows at once
        # A chunk holds CHUNK_ELEMENTS // (15 points * 9 elements) rows: 3 here.
        monkeypatch.setattr(autograd, "CHUNK_ELEMENTS", 3 * 15 * 9)
        chunks = _vjps(section, f, alphas, weights, rows, batched)
        sizes = [min(3, len(rows) - start) for start in range(0, len(rows), 3)]
        assert [g.shape[0] for g in chunks] == sizes
        torch.testing.assert_close(torch.cat(chunks), torch.cat(whole), rtol=1e-13, atol=1e-14)


# -- autograd_rows with padding -------------------------------------------------------------
class MaskedModel(nn.Module):
    """Token ids and an attention mask -> ``head`` (mixing positions) of masked embeddings."""

    def __init__(self, pooled=False, vocab=9, T=4, d=3, k=2):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, d)
        self.head = Mix(T, T, d, k, pooled)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        if attention_mask is not None:
            h = h * attention_mask[..., None].to(h.dtype)
        return self.head(h)


def _masked_batch(n=5, T=4):
    gen = torch.Generator().manual_seed(3)
    mask = torch.ones(n, T, dtype=torch.int64)
    for i, length in enumerate([4, 2, 3, 1, 4][:n]):
        mask[i, length:] = 0
    ids = torch.randint(1, 9, (n, T), generator=gen) * mask
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("exact", [False, True], ids=["random rows", "exact rows"])
def test_autograd_rows_zero_padded_output_positions(rng, rule, exact):
    model = MaskedModel().double()
    session = ModelSession(model)
    x = _masked_batch()
    (f,) = session.read(x, ["head"])  # (n, T, d)
    alphas, weights = _tensors(*RULES[rule])
    C = torch.as_tensor(rng.normal(size=(2, 3)))
    rows = Cotangents(C, 4).rows if exact else torch.as_tensor(rng.normal(size=(6, 4, 2)))
    section = Section("head", OUTPUT_NODE)
    got = torch.cat(list(autograd_rows(session, section, x, scaled(f, alphas), rows, weights)))
    mask = x["attention_mask"]
    expected = brute_rows(model.head, f, rows[:], *RULES[rule], mask=mask)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    if exact:  # the row of output position t vanishes wherever t is padded
        per_position = got.reshape(4, 3, *got.shape[1:])  # (t, i, n, P_in, d)
        for i, t in (mask == 0).nonzero().tolist():
            assert torch.all(per_position[t, :, i] == 0)
    # Without the mask the padded positions' rows are not zero: the masking did it.
    unmasked = brute_rows(model.head, f, rows[:], *RULES[rule])
    assert not torch.allclose(unmasked, expected)


def test_autograd_rows_leave_outputs_without_the_masks_positions_alone(rng):
    model = MaskedModel(pooled=True).double()
    session = ModelSession(model)
    x = _masked_batch()
    (f,) = session.read(x, ["head"])
    alphas, weights = _tensors(*RULES["three points"])
    rows = torch.as_tensor(rng.normal(size=(3, 1, 2)))  # pooled output: one position
    section = Section("head", OUTPUT_NODE)
    got = torch.cat(list(autograd_rows(session, section, x, scaled(f, alphas), rows, weights)))
    expected = brute_rows(model.head, f, rows, *RULES["three points"])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_autograd_rows_loop_on_the_cpu_by_default(rng, monkeypatch):
    seen = []

    def spy(out, leaf, rows, weights, n_samples, batched_rows):
        seen.append(batched_rows)
        return iter(())

    monkeypatch.setattr(autograd, "integrated_vjps", spy)
    model = MaskedModel(pooled=True).double()
    session = ModelSession(model)
    x = _masked_batch()
    (f,) = session.read(x, ["head"])
    rows, one = torch.ones(1, 1, 2, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    for batched in (None, True, False):
        section = Section("head", OUTPUT_NODE)
        list(autograd_rows(session, section, x, f, rows, one, batched=batched))
    assert seen == [False, True, False]
