"""A section from ``torch.export`` (``_routes.section_export``): its ends found by module
scope and width, one export for batches of every size, and each reason it gives none."""

import pytest
import torch
from _faults import FATAL, RaisesWhenCalled
from torch import nn

from sklearn_lib._core.nodes import OUTPUT_NODE, Section
from sklearn_lib._routes import section_export
from sklearn_lib._routes.section_export import exported_section
from sklearn_lib._routes.section_graph import SectionGraph


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x, **kwargs):  # **kwargs: fx finds no defaults, as with Hugging Face
        return x + torch.tanh(self.fc(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.block, self.head = nn.Linear(3, 4), Block(), nn.Linear(4, 2)

    def forward(self, x, scale=1.0):
        return self.head(self.block(self.embed(x)) * scale)


def test_the_section_runs_from_what_src_receives_to_what_dst_receives():
    model = Net().eval()
    x = torch.randn(5, 6, 3)
    graph = exported_section(model, Section("block", "head", (6, 4), (6, 4)), x, {"scale": 2.0})
    assert isinstance(graph, SectionGraph)
    # Parameters are constants of the section, read from the model at each call.
    weights = {get() is model.block.fc.weight for get in graph.constants.values()}
    assert weights == {False, True} or True in weights
    assert graph.start.meta["val"].shape[-1] == 4 and graph.end.meta["val"].shape[-1] == 4
    to_output = exported_section(model, Section("head", OUTPUT_NODE, (6, 4), (6, 2)), x, {})
    assert isinstance(to_output, SectionGraph)


def test_one_export_serves_every_batch_size_and_length():
    model = Net().eval()
    calls = []
    original = section_export._export

    def counting(*args):
        calls.append(1)
        return original(*args)

    section_export._export = counting
    try:
        section = Section("block", "head", (6, 4), (6, 4))
        for n, length in [(5, 6), (7, 6), (3, 9)]:
            graph = exported_section(model, section, torch.randn(n, length, 3), {})
            assert isinstance(graph, SectionGraph)
    finally:
        section_export._export = original
    assert len(calls) == 1


def test_reasons():
    model = Net().eval()
    x = torch.randn(5, 6, 3)
    assert "no operation" in exported_section(model, Section("nothing", "head", (6, 4), (6, 4)),
                                              x, {})  # fmt: skip

    class Branches(Net):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent: no export
                return self.head(self.block(self.embed(x)))
            return self.head(self.embed(x))

    why = exported_section(Branches().eval(), Section("block", "head", (6, 4), (6, 4)), x, {})
    assert isinstance(why, str) and why.startswith("torch.export cannot trace the model")


def test_a_failed_export_prints_nothing(capfd):
    """torch prints a failed export's partial graph and logs it; the plan's one line is
    what a user reads instead."""

    class Branches(Net):
        def forward(self, x):
            if x.sum() > 0:
                return self.head(self.block(self.embed(x)))
            return self.head(self.embed(x))

    capfd.readouterr()
    why = exported_section(Branches().eval(), Section("block", "head", (6, 4), (6, 4)),
                           torch.randn(5, 6, 3), {})  # fmt: skip
    assert why.startswith("torch.export cannot trace the model")
    out, err = capfd.readouterr()
    assert "def forward" not in out + err and "W1206" not in err


class Raises(RaisesWhenCalled, Net):
    """Raises ``error()`` whenever it is called, exported or not."""


@pytest.mark.parametrize("error", list(FATAL))
def test_out_of_memory_and_stops_while_exporting_propagate(error):
    """torch.export failing on user code means no graph; out of memory is no such failure."""
    section, x = Section("block", "head", (6, 4), (6, 4)), torch.randn(5, 6, 3)
    with pytest.raises(type(FATAL[error]())):
        exported_section(Raises(FATAL[error]).eval(), section, x, {})
    why = exported_section(Raises(lambda: RuntimeError("a user's error")).eval(), section, x, {})
    assert why == "torch.export cannot trace the model (RuntimeError: a user's error)"
