"""A section as a graph of its own (``_routes.section_graph``): where it starts and ends,
what it depends on, and each reason it is not extracted."""

import pytest
import torch
from _faults import FATAL, RaisesWhenCalled
from torch import nn

from sklearn_lib._core.nodes import OUTPUT_NODE, Section
from sklearn_lib._routes.section_graph import SectionGraph, in_place, section_graph


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return x + torch.tanh(self.fc(x))


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.inner, self.head = nn.Linear(3, 4), Inner(), nn.Linear(4, 2)

    def forward(self, x):
        h = self.inner(self.embed(x))
        return self.head(h[:, -1] * h.shape[1])


def test_the_section_ends_where_the_next_module_starts():
    graph = section_graph(Outer(), Section("inner", "head"))
    assert isinstance(graph, SectionGraph)
    assert graph.end.target is __import__("operator").mul  # the slice, scaled, outside Inner
    # x.shape[1] is a size: a constant of the section, no derivative flows through it.
    assert all(n.target != "shape" for n in graph.dependent if n.op == "call_function")
    assert graph.start not in graph.nodes


def test_a_section_to_the_output():
    graph = section_graph(Outer(), Section("head", OUTPUT_NODE))
    assert isinstance(graph, SectionGraph) and graph.end.op == "call_module"


def test_reasons():
    class Twice(Outer):
        def forward(self, x):
            return self.head(self.inner(self.inner(self.embed(x))))

    class Hooked(Outer):
        pass

    hooked = Hooked()
    hooked.inner.register_forward_hook(lambda *args: None)

    class Branches(Outer):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return self.head(self.inner(self.embed(x)))
            return self.head(self.embed(x))

    assert "called 2 times" in section_graph(Twice(), Section("inner", "head"))
    assert "hooks" in section_graph(hooked, Section("inner", "head"))
    assert "cannot trace" in section_graph(Branches(), Section("inner", "head"))


class Raises(RaisesWhenCalled, Outer):
    """Raises ``error()`` whenever it is called, traced or not."""


@pytest.mark.parametrize("error", list(FATAL))
def test_out_of_memory_and_stops_while_tracing_propagate(error):
    """fx failing on user code means no graph; out of memory is no such failure."""
    with pytest.raises(type(FATAL[error]())):
        section_graph(Raises(FATAL[error]), Section("inner", "head"))
    why = section_graph(Raises(lambda: RuntimeError("a user's error")), Section("inner", "head"))
    assert why == "torch.fx cannot trace the model (RuntimeError: a user's error)"


def test_in_place_operations_are_found():
    class Doubles(nn.Module):
        def forward(self, x):
            x.mul_(2)
            x += 1
            return x

    graph = torch.fx.symbolic_trace(Doubles()).graph
    # (fx traces ``x += 1`` as an addition: the check against autograd covers it.)
    assert [n.target for n in graph.nodes if in_place(n)] == ["mul_"]
