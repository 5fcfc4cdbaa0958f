"""Elementwise chains as one step (``_routes.forms.traced_fusion``): which chains fuse, and
their slope against autograd's."""

import math

import torch
from _sections import section_of
from torch import nn

from sklearn_lib._core.nodes import OUTPUT_NODE
from sklearn_lib._model.session import ModelSession
from sklearn_lib._routes.forms.traced_fusion import chains, slope
from sklearn_lib._routes.forms.traced_section import TracedSection


class NewGELU(nn.Module):
    """Hugging Face GPT-2's ``gelu_new``, written out."""

    def forward(self, x):
        c = math.sqrt(2.0 / math.pi)
        return 0.5 * x * (1.0 + torch.tanh(c * (x + 0.044715 * torch.pow(x, 3.0))))


class MLP(nn.Module):
    def __init__(self, gate=False):
        super().__init__()
        self.fc1, self.fc2, self.act, self.gate = nn.Linear(4, 8), nn.Linear(8, 4), NewGELU(), gate
        self.fc3 = nn.Linear(4, 8)

    def forward(self, x):
        h = self.act(self.fc1(x))
        return self.fc2(h * self.fc3(x) if self.gate else h)  # a gate: two inputs, no chain


class Net(nn.Module):
    def __init__(self, gate=False):
        super().__init__()
        self.embed, self.mlp = nn.Linear(3, 4), MLP(gate)

    def forward(self, x):
        return self.mlp(self.embed(x))


def form_of(model):
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    session = ModelSession(model.double())
    return TracedSection.detect(session, section_of(session, x, "mlp", OUTPUT_NODE)), x


def test_a_written_out_gelu_is_one_chain_and_its_slope_is_autograds():
    torch.manual_seed(0)
    form, x = form_of(Net())
    trace = form.trace
    assert len(trace.chains) == 1
    ((out, (z, order)),) = trace.chains.items()
    assert len(order) >= 8 and z.op == "call_module" and z.target == "mlp.fc1"
    values, saved = trace.forward(torch.randn(5, 4, dtype=torch.float64), x)
    leaf = values[z].detach().requires_grad_(True)
    (want,) = torch.autograd.grad(NewGELU()(leaf).sum(), leaf)
    torch.testing.assert_close(saved[out], want, rtol=1e-14, atol=1e-14)
    value, derivative = slope(trace._run_on, values, z, order)
    torch.testing.assert_close(derivative, want)
    torch.testing.assert_close(value, values[out])  # the chain's output, run once


def test_a_gate_is_no_member_and_the_gelu_before_it_is_still_one_chain():
    torch.manual_seed(0)
    form, _ = form_of(Net(gate=True))
    ((out, (z, order)),) = form.trace.chains.items()
    assert z.target == "mlp.fc1"  # the GELU's input, not the gate's two
    (gate,) = [u for u in out.users]
    assert gate not in order and len(gate.all_input_nodes) == 2
    assert chains({}, form.trace.graph) == {}
