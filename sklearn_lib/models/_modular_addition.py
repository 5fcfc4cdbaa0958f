"""The paper's 1-layer modular-addition transformer (TransformerLens layout)."""

import torch
from torch import nn

from ._modadd_jacobians import attention_gram, attention_vjp, mlp_gram, mlp_vjp, unembed_vjp


class Embed(nn.Module):
    """Token embedding ``W_E[tokens]``."""

    def __init__(self, n_vocab, d_model):
        super().__init__()
        self.W_E = nn.Parameter(torch.randn(n_vocab, d_model) / d_model**0.5)

    def forward(self, tokens):  # (n, P) int -> (n, P, d_model)
        return self.W_E[tokens]


class PosEmbed(nn.Module):
    """Adds the learned positional embedding to the residual stream."""

    def __init__(self, n_ctx, d_model):
        super().__init__()
        self.W_pos = nn.Parameter(torch.randn(n_ctx, d_model) / d_model**0.5)

    def forward(self, resid):  # (n, P, d_model)
        return resid + self.W_pos[: resid.shape[1]]


class Attention(nn.Module):
    """Causal multi-head attention that returns the updated residual stream.

    The residual connection is inside the module, so its *input* carries the
    whole residual stream (a cut) and so does its output.
    """

    def __init__(self, d_model, n_heads, d_head, n_ctx):
        super().__init__()
        scale = d_model**-0.5
        for name in "QKV":
            setattr(self, f"W_{name}", nn.Parameter(torch.randn(n_heads, d_model, d_head) * scale))
            setattr(self, f"b_{name}", nn.Parameter(torch.zeros(n_heads, d_head)))
        self.W_O = nn.Parameter(torch.randn(n_heads, d_head, d_model) * d_head**-0.5)
        self.b_O = nn.Parameter(torch.zeros(d_model))
        self.register_buffer("mask", torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool)))
        self.register_buffer("IGNORE", torch.tensor(-1e5))
        self.d_head = d_head

    def forward(self, resid):  # (n, P, d_model) -> (n, P, d_model)
        q = torch.einsum("npd,hde->nhpe", resid, self.W_Q) + self.b_Q[:, None]
        k = torch.einsum("npd,hde->nhpe", resid, self.W_K) + self.b_K[:, None]
        v = torch.einsum("npd,hde->nhpe", resid, self.W_V) + self.b_V[:, None]
        scores = q @ k.transpose(-1, -2) / self.d_head**0.5  # (n, h, P, P)
        n_pos = resid.shape[1]
        scores = torch.where(self.mask[:n_pos, :n_pos], scores, self.IGNORE.to(scores.dtype))
        z = scores.softmax(-1) @ v  # (n, h, P, d_head)
        return resid + torch.einsum("nhpe,hed->npd", z, self.W_O) + self.b_O


class MLP(nn.Module):
    """ReLU MLP that returns the updated residual stream (residual inside)."""

    def __init__(self, d_model, d_mlp):
        super().__init__()
        self.W_in = nn.Parameter(torch.randn(d_model, d_mlp) * d_model**-0.5)
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.randn(d_mlp, d_model) * d_mlp**-0.5)
        self.b_out = nn.Parameter(torch.zeros(d_model))

    def forward(self, resid):
        return resid + torch.relu(resid @ self.W_in + self.b_in) @ self.W_out + self.b_out


class Block(nn.Module):
    """Attention over all positions, then the MLP on the last position only.

    Only the last position is read out, and nothing after the attention mixes
    positions, so the MLP and the unembedding see the last position alone.
    """

    def __init__(self, d_model, n_heads, d_head, d_mlp, n_ctx):
        super().__init__()
        self.attn = Attention(d_model, n_heads, d_head, n_ctx)
        self.mlp = MLP(d_model, d_mlp)

    def forward(self, resid):  # (n, P, d_model) -> (n, d_model)
        return self.mlp(self.attn(resid)[:, -1])


class Unembed(nn.Module):
    def __init__(self, d_model, n_vocab):
        super().__init__()
        self.W_U = nn.Parameter(torch.randn(d_model, n_vocab) * d_model**-0.5)
        self.b_U = nn.Parameter(torch.zeros(n_vocab))

    def forward(self, resid):
        return resid @ self.W_U + self.b_U


class ModularAdditionTransformer(nn.Module):
    """The LIB paper's 1-layer transformer for ``(x + y) mod p`` (no LayerNorm).

    Inputs are token ids ``(x, y, p)`` of shape ``(n, 3)`` (``p`` is the "="
    token); the output is the logits at the last position, shape
    ``(n, p + 1)``.  Parameter names follow TransformerLens, so the paper's
    published checkpoints load with ``load_state_dict(..., strict=True)``.

    Node layers of the paper (module *inputs*, each the whole residual stream):

    - ``"blocks.0.attn"``: the attention block's input, shape ``(n, 3, d_model)``;
    - ``"blocks.0.mlp"``: the MLP block's input, last position, ``(n, d_model)``;
    - ``"unembed"``: the unembedding's input, ``(n, d_model)``;

    then the model output (logits).  Use them as
    ``LIBTransformer(model, "blocks.0.attn", downstream_layers=["blocks.0.mlp", "unembed"])``.

    Parameters
    ----------
    p : int, default=113
    d_model, n_heads, d_head, d_mlp : int, default=128, 4, 32, 512
        The paper's sizes; smaller ones train faster.
    """

    def __init__(self, p=113, d_model=128, n_heads=4, d_head=32, d_mlp=512):
        super().__init__()
        self.p = p
        n_vocab, n_ctx = p + 1, 3
        self.embed = Embed(n_vocab, d_model)
        self.pos_embed = PosEmbed(n_ctx, d_model)
        self.blocks = nn.ModuleList([Block(d_model, n_heads, d_head, d_mlp, n_ctx)])
        self.unembed = Unembed(d_model, n_vocab)

    def forward(self, tokens):  # (n, 3) int -> (n, p + 1)
        """The logits at the last position, ``(n, p + 1)``, of token ids ``(n, 3)``."""
        resid = self.pos_embed(self.embed(tokens))
        for block in self.blocks:
            resid = block(resid)
        return self.unembed(resid)

    def lib_section_vjp(self, params, src, dst, capture, points, cotangents, *, tangents=None):
        """Closed-form gradients of the paper's three sections, for LIB's fitting engine.

        An optional protocol (see ``sklearn_lib/_routes/forms/model_protocol.py``):
        :class:`~sklearn_lib.LIBTransformer` calls this method where a model
        has it, checks the result against autograd once per section, and
        then uses it instead of one backward pass per Jacobian row (several
        times faster on the paper's model; see
        ``benchmarks/bench_modular_addition.py``).

        Parameters
        ----------
        params : dict of str to torch.Tensor
            The model's parameters and buffers by ``state_dict`` name, in the
            fit's dtype and device.
        src, dst : str or None
            Node layers of the section (``dst`` None: the model output).
        capture : {"input", "output"}
        points : torch.Tensor of shape ``(m, *positions, d_model)``
            Activations at ``src``.
        cotangents : torch.Tensor of shape ``(R, *output positions, d_out)``
        tangents : (torch.Tensor, torch.Tensor), optional
            Directions ``v`` of shape ``(J, d_model)`` and per-point
            coefficients ``a`` of shape ``(m, *positions, J)``.

        Returns
        -------
        torch.Tensor or NotImplemented
            Without ``tangents``: ``grad <cotangents[r], section(point)>`` at
            every point, shape ``(R, m or 1, *positions, d_model)`` (a point
            axis of size 1: the same at every point).  With them: the
            derivatives along ``a[m, p, j] * v[j]``, shape ``(R, m, J)``.
            NotImplemented for other sections (and for ``tangents`` on the
            affine unembedding, where the engine's own contraction is cheap).
        """
        vjp = self._lib_closed_form(src, dst, capture, attention_vjp, mlp_vjp, unembed_vjp)
        if vjp is None:
            return NotImplemented
        return vjp(params, points, cotangents, tangents)

    def lib_section_gram(self, params, src, dst, capture, points, weights, cotangents):
        """Closed-form Gram ``sum_x sum_r sum_s g g^T`` of the integrated Jacobian rows.

        The same protocol as :meth:`lib_section_vjp`: ``points`` are
        alpha-major stacked activations with quadrature ``weights``, and the
        result is float64 ``(d_model, d_model)``.  The attention section
        factors it for the plain gradient and the MLP for every rule; other
        cases return NotImplemented (and use the rows).
        """
        gram = self._lib_closed_form(src, dst, capture, attention_gram, mlp_gram, None)
        if gram is None:
            return NotImplemented
        return gram(params, points, weights, cotangents)

    def _lib_closed_form(self, src, dst, capture, attention, mlp, unembed):
        """The function for section ``src -> dst`` among the three, or None."""
        if capture != "input" or len(self.blocks) != 1:
            return None
        return {
            ("blocks.0.attn", "blocks.0.mlp"): attention,
            ("blocks.0.mlp", "unembed"): mlp,
            ("unembed", None): unembed,
        }.get((src, dst))
