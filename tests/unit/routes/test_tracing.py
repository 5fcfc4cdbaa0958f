"""Traces of user code (``_routes.tracing``) that leave the model and other threads alone."""

import pytest
import torch
from torch import nn

from sklearn_lib._routes import tracing


def test_a_trace_leaves_other_threads_models_running():
    # fx reroutes every thread's module calls through the tracer while it
    # traces; a model served by another thread at that moment must run as usual.
    import threading

    ready, done = threading.Event(), threading.Event()
    served = nn.Sequential(nn.Linear(3, 3), nn.Tanh()).double()
    x = torch.randn(2, 3, dtype=torch.float64)
    with torch.no_grad():
        expected = served(x)
    outcome = []

    class Rendezvous(nn.Module):
        def forward(self, h):
            if isinstance(h, torch.fx.Proxy):  # mid-trace: let the other thread run
                ready.set()
                done.wait(10)
            return h

    def serve():
        ready.wait(10)
        try:
            with torch.no_grad():
                outcome.append(served(x))
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome.append(exc)
        done.set()

    thread = threading.Thread(target=serve)
    thread.start()
    traced = nn.Sequential(nn.Linear(3, 3), Rendezvous(), nn.Linear(3, 2))
    graph = tracing.trace(tracing.LeafTracer(()), traced)
    thread.join()
    assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome
    torch.testing.assert_close(outcome[0], expected, rtol=0, atol=0)
    # The trace itself is whole: both Linear layers as modules.
    assert [n.target for n in graph.nodes if n.op == "call_module"] == ["0", "2"]


def test_traces_in_many_threads_restore_torch():
    import threading

    call, getattr_ = nn.Module.__call__, nn.Module.__getattr__
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
    errors = []

    def trace_often():
        try:
            for _ in range(20):
                tracing.trace(tracing.LeafTracer(()), model)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=trace_often) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert nn.Module.__call__ is call and nn.Module.__getattr__ is getattr_


class Counts(nn.Module):
    """A forward that assigns its buffer and a tensor attribute."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))
        self.last = torch.zeros(2)

    def forward(self, x):
        self.calls += 1
        self.last = x.sum(0)
        return x * 2


def test_a_trace_puts_back_the_tensors_a_forward_assigns():
    model = nn.Sequential(nn.Linear(2, 2), Counts())
    tracing.trace(tracing.LeafTracer(set()), model)
    counts = model[1]
    assert type(counts.calls) is torch.Tensor and float(counts.calls) == 0
    assert type(counts.last) is torch.Tensor and torch.equal(counts.last, torch.zeros(2))
    assert dict(counts.named_buffers()).keys() == {"calls"}
    model(torch.ones(3, 2))  # and the model still runs
    assert float(counts.calls) == 1


class Remembers(nn.Module):
    """A forward that keeps other things than tensors, and then cannot be traced."""

    def __init__(self, fail):
        super().__init__()
        self.n, self.cache, self.fail = 0, None, fail

    def forward(self, x):
        self.n = x.shape[0]
        self.cache = x * 3
        if self.fail and x.sum() > 0:  # control flow on a traced value: fx fails
            return x
        return x * 2


@pytest.mark.parametrize("fail", [False, True])
def test_a_trace_puts_back_every_attribute_also_when_it_fails(fail):
    model = nn.Sequential(nn.Linear(2, 2), Remembers(fail))
    try:
        tracing.trace(tracing.LeafTracer(set()), model)
    except torch.fx.proxy.TraceError:
        assert fail
    inner = model[1]
    assert inner.n == 0 and inner.cache is None
    assert list(vars(model)) == list(vars(nn.Sequential(nn.Linear(2, 2), Remembers(fail))))
    model(torch.ones(3, 2))
    assert inner.n == 3
