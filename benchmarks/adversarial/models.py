"""Models and data for the adversarial cases.

The tests' toy models (``tests/toy_models.py``) are re-exported; the ones
below add what the review needs: faults injected on the ``N``-th call,
models that edit what they are given, models that read state beyond their
weights.  They live here (not in the tests) so that an error raised by the
user's own code is recognised as such (``harness.origin`` == ``"user"``).
"""

import functools
from collections import OrderedDict

import numpy as np
import torch
import toy_models as toys  # tests/ is on the path: see the package's __init__
from torch import nn
from toy_models import (  # noqa: F401
    BERT_VOCAB,
    GPT2_VOCAB,
    LogOfInput,
    PositionMixer,
    ResidualMLP,
    SharedLayer,
    TanhThenLinear,
    TokenMixer,
    WideMixer,
    batch_statistics_mlp,
    elementwise_model,
    inplace_relu_mlp,
    linear_chain,
    modadd_tokens,
    small_modadd,
    small_resnet,
    stateful_mlp,
    tanh_mlp,
    tiny_bert,
    tiny_gpt2,
    tiny_tokenizer,
    token_features,
    user_transformer,
)

KW = {"use_cache": False}


def rng(seed=0):
    return np.random.default_rng(seed)


def mlp_data(n=120, seed=0):
    return rng(seed).normal(size=(n, 4))


def positions_data(n=80, seed=0):
    return rng(seed).normal(size=(n, 4, 3))


def token_ids(n=32, length=8, vocab=None, seed=0, low=2):
    return rng(seed).integers(low, vocab or toys.GPT2_VOCAB, size=(n, length))


def images(n=16, seed=0):
    return rng(seed).normal(size=(n, 3, 8, 8))


@functools.cache
def gpt2_eval(seed=0):
    """A tiny GPT-2 in eval mode; callers that may change it get a deep copy."""
    return tiny_gpt2(seed).eval()


# -- faults ----------------------------------------------------------------------------------


class Ticking(nn.Module):
    """``inner`` with ``fault.tick()`` before each call."""

    def __init__(self, inner, fault):
        super().__init__()
        self.inner, self.fault = inner, fault

    def forward(self, x):
        self.fault.tick()
        return self.inner(x)


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fault):
        ctx.fault = fault
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.fault.tick()
        return grad, None


class BackwardTicking(nn.Module):
    """Identity whose backward calls ``fault.tick()``."""

    def __init__(self, fault):
        super().__init__()
        self.fault = fault

    def forward(self, x):
        return _FailingBackward.apply(x, self.fault)


def faulty_mlp(fault, where="entry"):
    """tanh MLP (fc1, fc2, fc3; node layers fc2, fc3) ticking ``fault``: on entry to the
    model, inside the section fc2 -> fc3 (``"section"``), or in a backward pass."""
    torch.manual_seed(0)
    layers = OrderedDict(
        fc1=nn.Linear(4, 8),
        act1=nn.Tanh(),
        fc2=nn.Linear(8, 8),
        act2=nn.Tanh(),
        fc3=nn.Linear(8, 3),
    )
    if where == "section":
        layers["act2"] = Ticking(nn.Tanh(), fault)
    elif where == "backward":
        layers["act2"] = nn.Sequential(nn.Tanh(), BackwardTicking(fault))
    model = nn.Sequential(layers).double()
    if where == "entry":
        return EntryTicking(model, fault)
    return model


class EntryTicking(nn.Module):
    """A model whose forward ticks ``fault`` first; layers keep their names."""

    def __init__(self, body, fault):
        super().__init__()
        self.fc1, self.act1, self.fc2 = body.fc1, body.act1, body.fc2
        self.act2, self.fc3 = body.act2, body.fc3
        self.fault = fault

    def forward(self, x):
        self.fault.tick()
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


class TickingMixer(nn.Module):
    """``head(mix(tanh(embed(x))))`` (positions mixed, the traced route) ticking ``fault``."""

    def __init__(self, fault):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(3, 5)
        self.mix = toys.MixPositions(4, 2, 5)
        self.head = nn.Sequential(nn.Linear(5, 3), nn.Tanh())
        self.fault = fault

    def forward(self, x):
        self.fault.tick()
        return self.head(self.mix(torch.tanh(self.embed(x))))


# -- models that edit what they are given -------------------------------------------------------


class ThreeLinear(nn.Module):
    """``fc1`` (4 -> 6), ``fc2`` (6 -> 6) and ``fc3`` (6 -> 3), seeded: the review's small
    models that differ only in their forward (or a few attributes)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)


class EditsInput(ThreeLinear):
    """Edits its input tensor in place before using it."""

    def __init__(self, how="mul"):
        super().__init__()
        self.how = how

    def forward(self, x):
        if self.how == "mul":
            x.mul_(0.5)
        elif self.how == "zero_row":
            x[0] = 0.0
        elif self.how == "clamp":
            x.clamp_(-0.1, 0.1)
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))

    def reference(self, x):
        """The forward as the package should see it: on a copy of the input."""
        return self.forward(x.clone())


class EditsDictInput(ThreeLinear):
    """Keyword inputs ``x`` and ``attention_mask``; edits both in place."""

    def forward(self, x, scale):
        out = self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x * scale[:, None])))))
        x.add_(1.0)
        scale.mul_(2.0)
        return out


class EditsKwargs(ThreeLinear):
    """Reads and edits a tensor, a list and a dict given as keyword arguments."""

    def forward(self, x, shift=None, log=None, cfg=None):
        h = torch.tanh(self.fc1(x) + (0 if shift is None else shift))
        if shift is not None:
            shift.add_(1.0)
        if log is not None:
            log.append(1)
        if cfg is not None:
            cfg["calls"] = cfg.get("calls", 0) + 1
        return self.fc3(torch.tanh(self.fc2(h)))


class CountsCalls(ThreeLinear):
    """Keeps a call counter and a running mean of its inputs, as attributes and buffers."""

    def __init__(self):
        super().__init__()
        self.register_buffer("seen", torch.zeros(4, dtype=torch.float64))
        self.calls = 0
        self.history = []

    def forward(self, x):
        self.calls += 1
        self.history.append(tuple(x.shape))
        self.seen.add_(x.detach().double().mean(0))
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


# -- models whose forward reads more than weights ----------------------------------------------


class Masked(nn.Module):
    """A -inf mask buffer, a float attribute, an activation module, a LayerNorm's eps and
    a causal mask over positions (as attention has one)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.act, self.fc2 = nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)
        self.out = nn.Linear(6, 2)
        causal = torch.full((4, 4), -torch.inf).triu(1)
        self.register_buffer("causal", causal)
        self.register_buffer("gate", torch.tensor([0.0, -torch.inf, 0.0, 0.0, 0.0, 0.0]))
        self.temperature = 1.0
        self.scale_scores = True

    def forward(self, x):  # (n, 4, 3) -> (n, 4, 2)
        h = self.act(self.fc1(x) / self.temperature) * torch.exp(self.gate.to(x.dtype))
        scores = torch.einsum("nsd,ntd->nst", h, h)
        if self.scale_scores:
            scores = scores / 6**0.5
        w = torch.softmax(scores + self.causal.to(x.dtype), -1)
        h = self.fc2(torch.einsum("nst,ntd->nsd", w, h))
        return self.out(torch.tanh(self.norm(h)))


class WithOutputs(ThreeLinear):
    """A tanh MLP returning a tuple, a dict, or an object with an attribute."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(x))))
        y = self.fc3(h)
        if self.kind == "tuple":
            return y, h
        if self.kind == "dict":
            return {"logits": y, "hidden": h}
        if self.kind == "list":
            return [y, h]
        return Namespace(logits=y, hidden=h)


class Namespace:
    def __init__(self, **kw):
        vars(self).update(kw)


class RandomForward(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)) + 0.1 * torch.randn_like(self.fc1(x)))


class MixesSamples(ThreeLinear):
    """Subtracts the batch mean before the node layer: samples are not independent."""

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        h = h - h.mean(0, keepdim=True)
        return self.fc3(torch.tanh(self.fc2(h)))


class NoGradForward(ThreeLinear):
    """Detaches the path into fc3: the forward cuts the gradient."""

    def forward(self, x):
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(x))))
        return self.fc3(h.detach())


class Bypass(ThreeLinear):
    """``fc3(tanh(fc2(h)) + h)``: the input of fc2 is bypassed, fc3's is a cut only with
    the residual."""

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        return self.fc3(torch.tanh(self.fc2(h)) + h)


class BatchSizeDependent(nn.Module):
    """Adds ``1e-3 * n`` (the batch size) to the output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x))) + 1e-3 * x.shape[0]


class Overflows(nn.Module):
    """``exp`` of large inputs overflows to inf at the node layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.exp(self.fc1(x) * 100))


class IntegerPath(ThreeLinear):
    """Rounds before the next layer: no derivative flows (zero Jacobian almost everywhere)."""

    def forward(self, x):
        return self.fc3(torch.round(self.fc2(torch.tanh(self.fc1(x)))))


class TwoInputs(nn.Module):
    """``forward(a, b)``: two positional inputs (no dict)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, a, b):
        return self.fc2(torch.tanh(self.fc1(a + b)))


class KeywordMLP(ThreeLinear):
    """``forward(x, mask=None)``: dict inputs of float ``x`` and an optional multiplier."""

    def forward(self, x, gain=None):
        if gain is not None:
            x = x * gain[:, None]
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def float32_mlp(seed=0):
    return tanh_mlp(seed=seed).float()


def bfloat16_mlp(seed=0):
    return tanh_mlp(seed=seed).to(torch.bfloat16)


def mlp_with_grads(seed=0):
    """A tanh MLP with ``.grad`` set, one layer frozen, in train mode."""
    model = tanh_mlp(seed=seed)
    model(torch.randn(5, 4, dtype=torch.float64)).sum().backward()
    model.fc1.weight.requires_grad_(False)
    model.train()
    return model


def double_output(module, args, out):
    """A forward hook of the user's: doubles the module's output."""
    return out * 2


def mlp_with_hooks(seed=0):
    """A tanh MLP with a user hook that doubles fc3's output."""
    model = tanh_mlp(seed=seed)
    model.fc3.register_forward_hook(double_output)
    return model
