"""Faults, misuse and bad input: each gets a clear answer, and nothing is lost.

One test (often parametrized) per case group of ``docs/reliability.md``.
"""

import pickle
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toy_models import TokenMixer, tanh_mlp

from sklearn_lib import ActivationTransformer, LIBTransformer, StaleBasisWarning, ablation_curve

# -- helpers ------------------------------------------------------------------------


@pytest.fixture
def X(rng):
    return rng.normal(size=(300, 4))


def _fitted(X, **params):
    return LIBTransformer(tanh_mlp(), "fc2", **params).fit(X)


def _tokens(rng, n=300, bad_row=None):
    ids = rng.integers(0, 7, size=(n, 3))
    if bad_row is not None:
        ids[bad_row, 1] = 99  # the vocabulary has 7 tokens
    return ids


class _Batches:
    """A re-iterable stream of ``X`` in batches, in whatever form ``form`` makes."""

    def __init__(self, X, size=64, form=lambda b: torch.as_tensor(b)):
        self.X, self.size, self.form = X, size, form

    def __iter__(self):
        for start in range(0, len(self.X), self.size):
            yield self.form(self.X[start : start + self.size])


# -- the user's model and data --------------------------------------------------------


def _step(model):
    # One optimiser step, as a user training after the fit would take.
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(8, 4, dtype=torch.float64)).sum().backward()
    opt.step()


def _edit(model):
    with torch.no_grad():
        model.fc1.weight[0, 0] += 1.0


def _replace(model):
    model.fc1.weight = nn.Parameter(model.fc1.weight.detach() * 2)


def _data_edit(model):
    model.fc2.weight.data.mul_(3)  # .data: no version counter moves


def _numpy_edit(model):
    model.fc2.bias.detach().numpy()[0] += 5  # through numpy: no version counter moves


def _fused_step(model):
    opt = torch.optim.Adam(model.parameters(), lr=0.1, fused=True)
    model(torch.randn(8, 4, dtype=torch.float64)).sum().backward()
    opt.step()


@pytest.mark.parametrize(
    "change",
    [_step, _edit, _replace, _data_edit, _numpy_edit, _fused_step],
    ids=["optimiser", "edit", "replace", "data", "numpy", "fused"],
)
@pytest.mark.parametrize("method", ["transform", "score", "interaction_graph", "ablation_curve"])
def test_a_changed_model_makes_the_basis_stale(X, change, method):
    lib = _fitted(X[:100], downstream_layers=["fc3"])
    call = {
        "transform": lambda: lib.transform(X[:10]),
        "score": lambda: lib.score(X[:10]),
        "interaction_graph": lambda: lib.interaction_graph(X[:10]),
        "ablation_curve": lambda: ablation_curve(lib, X[:10], n_features=[1]),
    }[method]
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleBasisWarning)
        call()  # unchanged: no warning
    change(lib.model)
    with pytest.warns(
        StaleBasisWarning, match=r"model changed since LIBTransformer was fitted"
    ) as w:
        call()
    assert {r.filename for r in w} == {__file__}  # it points at the user's line
    lib.fit(X[:100])  # a refit describes the model as it is now
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleBasisWarning)
        call()


def test_batch_statistics_updated_by_the_user_make_the_basis_stale(X):
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(fc1=nn.Linear(4, 8), bn=nn.BatchNorm1d(8), act=nn.Tanh(), fc2=nn.Linear(8, 3))
    ).double()
    lib = LIBTransformer(model.eval(), "act").fit(X)
    model.train()
    model(torch.randn(64, 4, dtype=torch.float64) + 3)  # running_mean moves, in place
    model.eval()
    with pytest.warns(StaleBasisWarning, match=r"'bn.running_mean'"):
        lib.transform(X[:5])


def test_the_same_values_written_again_are_not_a_change(X):
    lib = _fitted(X[:100])
    with torch.no_grad():
        for p in lib.model.parameters():
            p.mul_(1.0)  # version counters move, values do not
    lib.model.float().double()  # new storages, the same values
    lib.model.load_state_dict(tanh_mlp().state_dict())  # the same weights again
    lib.model(torch.zeros(2, 4, dtype=torch.float64))  # running the model changes nothing
    clone = pickle.loads(pickle.dumps(lib))  # another model object, the same values
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleBasisWarning)
        lib.transform(X[:5])
        clone.transform(X[:5])


class _Masked(nn.Module):
    """A forward that reads a -inf mask, a float attribute, an activation module and an
    unregistered tensor."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.act, self.fc2 = nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)
        self.register_buffer("mask", torch.tensor([0.0, 0.0, -torch.inf, 0.0, 0.0, 0.0]))
        self.temperature = 1.0
        self.offset = torch.zeros(6)  # a plain attribute, not a buffer

    def forward(self, x):
        h = self.act(self.fc1(x) / self.temperature + self.offset.to(x.dtype))
        return self.fc2(h * torch.exp(self.mask.to(x.dtype)))


def _move_mask(model):
    model.mask.copy_(torch.tensor([-torch.inf, 0.0, 0.0, 0.0, 0.0, 0.0]))


def _drop_mask(model):
    model.mask.zero_()


def _swap_activation(model):
    model.act = nn.GELU()


def _temperature(model):
    model.temperature = 2.0


def _offset(model):
    model.offset += 1.0


def _hook(model):
    model.fc1.register_forward_hook(lambda module, args, out: 2 * out)


def _grown_cache(model):
    model.register_buffer("cache", torch.arange(5.0), persistent=False)


@pytest.mark.parametrize(
    "change",
    [_move_mask, _drop_mask, _swap_activation, _temperature, _offset, _hook, _grown_cache],
)
def test_what_the_forward_reads_beyond_its_weights_makes_the_basis_stale(X, change):
    """Issue 24: a -inf mask entry that moves or goes (its checksum was blind to -inf),
    a swapped activation module, a float attribute, an unregistered tensor and a
    non-persistent buffer: each changes the outputs or the state, and each warns."""
    lib = LIBTransformer(_Masked().double(), "fc2").fit(X[:60])
    x = torch.as_tensor(X[:5])
    with torch.no_grad():
        before = lib.model(x)
        change(lib.model)
        after = lib.model(x)
    with pytest.warns(StaleBasisWarning, match="model changed since"):
        lib.transform(X[:5])
    if change is not _grown_cache:  # the forward reads it: the outputs move
        assert not torch.allclose(before, after)


def test_tensors_of_forward_kwargs_are_never_modified(X):
    """Issue 24: a forward that edits a tensor of ``forward_kwargs`` in place edits the
    call's own copy; the caller's tensor, and every batch's view of it, stay as given."""

    class EditsItsKeyword(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x, shift):
            h = torch.tanh(self.fc1(x) + shift)
            shift.add_(1.0)  # in place, on what forward_kwargs holds
            return self.fc2(h)

    shift = torch.zeros(6, dtype=torch.float64)
    lib = LIBTransformer(EditsItsKeyword().double(), "fc2", forward_kwargs={"shift": shift})
    features = lib.fit(X[:60]).transform(X[:60])
    lib.score(X[:20])
    lib.interaction_graph(X[:20])
    torch.testing.assert_close(shift, torch.zeros(6, dtype=torch.float64), rtol=0, atol=0)
    np.testing.assert_allclose(lib.transform(X[:60]), features, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_streamed_batches_are_never_modified(rng, dtype):
    class EditsItsInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            x.mul_(0.5)  # in place, on what the caller passed
            return self.fc2(torch.tanh(self.fc1(x)))

    data = torch.as_tensor(rng.normal(size=(120, 4))).to(dtype)
    before = data.clone()
    stream = _Batches(data, size=40, form=lambda b: b)  # views of data
    lib = LIBTransformer(EditsItsInput(), "fc2").fit(stream)
    lib.transform(stream)
    lib.score(stream)
    lib.transform(data)  # as an array-like
    torch.testing.assert_close(data, before, rtol=0, atol=0)


# -- streams -------------------------------------------------------------------------


class _SharedIterator:
    """``__iter__`` hands out one iterator: a second pass sees what the first left."""

    def __init__(self, X):
        self.it = iter([torch.as_tensor(X[i : i + 50]) for i in range(0, len(X), 50)])

    def __iter__(self):
        return self.it


class _SharedUnderneath(_SharedIterator):
    """A new generator per call, over one shared iterator: the same fault, disguised."""

    def __iter__(self):
        yield from self.it


def test_a_shared_iterator_is_refused(X):
    lib = _fitted(X)
    for call in (_fitted, lib.transform):  # a single pass too: it would see what is left
        shared = _SharedIterator(X)
        next(iter(shared))
        with pytest.raises(TypeError, match=r"hands out one shared iterator"):
            call(shared)
    # Disguised, a later pass goes on where the last one stopped: its first batch differs.
    with pytest.raises(ValueError, match=r"first batch differs.*must start over on every call"):
        _fitted(_SharedUnderneath(X))


def test_streams_that_start_over_or_shuffle_are_taken(X):
    reference = _fitted(X, downstream_layers=["fc3"])
    dataset = torch.utils.data.TensorDataset(torch.as_tensor(X))

    class Shuffled(torch.utils.data.Sampler):  # a sampler of the user's own
        def __iter__(self):
            return iter(torch.randperm(len(X)).tolist())

        def __len__(self):
            return len(X)

    class Wrapped:  # __iter__ hands out the loader's iterator
        def __iter__(self):
            return iter(torch.utils.data.DataLoader(dataset, batch_size=64))

    streams = [
        torch.utils.data.DataLoader(dataset, batch_size=64, sampler=Shuffled()),
        torch.utils.data.DataLoader(
            dataset,
            batch_sampler=torch.utils.data.BatchSampler(
                torch.utils.data.RandomSampler(dataset), 64, False
            ),
        ),
        Wrapped(),
    ]
    for stream in streams:
        fitted = _fitted(stream, downstream_layers=["fc3"])
        np.testing.assert_allclose(fitted.lambdas_, reference.lambdas_, rtol=1e-9)
    with pytest.raises(ValueError, match="shuffles its samples"):
        reference.score(streams[1], np.zeros(len(X), dtype=int))  # labels need the order


def test_exhausted_and_augmented_streams_are_refused(X):
    once = _fitted(X)
    with pytest.raises(ValueError, match=r"yielded no batch.*must start over"):
        once.transform(once_more := _SharedUnderneath(X[:100]))
        once.transform(once_more)
    # So does a stream that augments its data anew in every pass.
    augmented = _Batches(X, form=lambda b: torch.as_tensor(b) + torch.randn(len(b), 4) * 1e-3)
    with pytest.raises(ValueError, match=r"neither shuffle nor augment"):
        _fitted(augmented, downstream_layers=["fc3"])


def test_a_list_of_samples_is_array_like(X):
    reference = _fitted(X).transform(X)
    rows = [row for row in X]  # a Python list of equally shaped arrays: samples
    np.testing.assert_allclose(_fitted(rows).transform(rows), reference, rtol=1e-10, atol=1e-12)
    tensors = [torch.as_tensor(row) for row in X]
    np.testing.assert_allclose(_fitted(tensors).transform(X), reference, rtol=1e-10, atol=1e-12)
    tracked = [torch.as_tensor(row).requires_grad_() for row in X]  # e.g. a model's outputs
    np.testing.assert_allclose(_fitted(tracked).transform(X), reference, rtol=1e-10, atol=1e-12)
    half = [torch.as_tensor(row).to(torch.bfloat16) for row in X]
    assert _fitted(half).transform(half).shape == reference.shape


@pytest.mark.parametrize(
    "form",
    [
        lambda b: [row for row in b],  # a list of per-sample arrays
        lambda b: [torch.as_tensor(row) for row in b],  # ... of tensors
        lambda b: [list(row) for row in b],  # ... of Python lists
        lambda b: (torch.as_tensor(b), torch.zeros(len(b))),  # (inputs, labels)
        lambda b: (torch.as_tensor(b), torch.as_tensor(b)),  # (inputs, targets) alike
        lambda b: [torch.as_tensor(b), torch.zeros(len(b))],  # [inputs, labels]
    ],
    ids=["arrays", "tensors", "lists", "tuple", "pair", "list-pair"],
)
def test_stream_batch_forms(X, form):
    reference = _fitted(X)
    stream = _Batches(X, size=60, form=form)
    lib = _fitted(stream)
    np.testing.assert_allclose(lib.lambdas_, reference.lambdas_, rtol=1e-9)
    np.testing.assert_allclose(lib.transform(stream), reference.transform(X), rtol=1e-9, atol=1e-12)


class _FirstBatchOfTwo:
    """Lists of per-sample rows whose first batch holds two samples."""

    def __init__(self, X):
        self.X = X

    def __iter__(self):
        yield [row for row in self.X[:2]]
        for start in range(2, len(self.X), 32):
            yield [row for row in self.X[start : start + 32]]


def test_list_batches_are_never_misread(X, rng):
    # 1-D rows: unambiguous even in a first batch of two.
    reference = _fitted(X)
    np.testing.assert_allclose(_fitted(_FirstBatchOfTwo(X)).lambdas_, reference.lambdas_, rtol=1e-9)
    # Equally shaped items of two dimensions could be rows or (inputs, labels, ...).
    ambiguous = r"list of 2 arrays of one shape \(3, 4\): per-sample rows or \(inputs, labels"
    with pytest.raises(ValueError, match=ambiguous):
        LIBTransformer(TokenMixer(), "mix").fit(_FirstBatchOfTwo(rng.normal(size=(90, 3, 4))))
    fields = _Batches(X, size=50, form=lambda b: [b, np.zeros_like(b), np.ones_like(b)])
    with pytest.raises(ValueError, match=r"list of 3 arrays of one shape \(50, 4\)"):
        _fitted(fields)
    listed = torch.utils.data.DataLoader(
        torch.as_tensor(rng.normal(size=(90, 3, 4))), 30, collate_fn=list
    )
    with pytest.raises(ValueError, match=r"list of 30 arrays of one shape \(3, 4\)"):
        _fitted(listed)

    # A first batch of one 2-D row reads as [inputs]; later batches are not read otherwise.
    rows = rng.normal(size=(40, 3, 4))

    class FirstOfOne:
        def __iter__(self):
            yield [rows[0]]
            yield [row for row in rows[1:]]

    with pytest.raises(ValueError, match=r"list of 39 arrays of one shape \(3, 4\)"):
        _fitted(FirstOfOne())  # the first batch: 3 samples of 4 features
    ragged = _Batches(X, form=lambda b: [row[: 3 + i % 2] for i, row in enumerate(b)])
    with pytest.raises(ValueError, match=r"ragged rows"):
        _fitted(ragged)


def test_empty_batches_are_skipped(X):
    class WithEmpty(_Batches):
        def __iter__(self):
            for batch in super().__iter__():
                yield batch
                yield batch[:0]
                yield []  # an empty list, too

    lib = _fitted(X, downstream_layers=["fc3"])
    stream = WithEmpty(torch.as_tensor(X), size=50, form=lambda b: b)
    other = _fitted(stream, downstream_layers=["fc3"])
    np.testing.assert_allclose(other.lambdas_, lib.lambdas_, rtol=1e-10)
    np.testing.assert_allclose(other.transform(stream), lib.transform(X), rtol=1e-9, atol=1e-12)
    assert other.score(stream) == pytest.approx(lib.score(X), rel=1e-10)
    graph, expected = other.interaction_graph(stream), lib.interaction_graph(X)
    for key in expected.edges:
        np.testing.assert_allclose(graph.edges[key], expected.edges[key], rtol=1e-9)


def test_a_stream_made_under_inference_mode(X):
    class Encoded(_Batches):
        def __iter__(self):
            with torch.inference_mode():  # held across the yields
                yield from super().__iter__()

    lib = _fitted(X, downstream_layers=["fc3"])
    stream = Encoded(X, form=lambda b: torch.as_tensor(b) * 1.0)
    other = _fitted(stream, downstream_layers=["fc3"])
    np.testing.assert_allclose(other.lambdas_, lib.lambdas_, rtol=1e-10)
    graph = other.interaction_graph(stream)
    np.testing.assert_allclose(
        graph.edges[("fc2", "fc3")], lib.interaction_graph(X).edges[("fc2", "fc3")], rtol=1e-9
    )


def test_a_dict_batch_for_a_model_without_keywords_says_how_it_was_called(X):
    stream = _Batches(X, form=lambda b: {"input_ids": torch.as_tensor(b)})
    with pytest.raises(
        ValueError, match=r"unexpected keyword argument 'input_ids'.*model\(\*\*batch\)"
    ):
        _fitted(stream)


# -- errors that name the problem ------------------------------------------------------


@pytest.mark.parametrize("method", ["fit", "transform", "score", "interaction_graph"])
def test_bad_token_after_the_probe_names_the_batch(rng, method):
    good, bad = _tokens(rng), _tokens(rng, bad_row=250)
    lib = LIBTransformer(TokenMixer().double(), "mix", batch_size=100)
    if method != "fit":
        lib.fit(good)
    call = getattr(lib, method)
    with pytest.raises(ValueError, match=r"failed on the batch of samples 200 to 299.*IndexError"):
        call(bad)


def test_bad_token_in_the_probe_gives_the_same_message(rng):
    with pytest.raises(ValueError, match=r"failed on the probe batch.*IndexError"):
        LIBTransformer(TokenMixer().double(), "mix").fit(_tokens(rng, bad_row=3))


@pytest.mark.skipif(not hasattr(Exception, "add_note"), reason="exception notes: Python 3.11")
def test_value_errors_of_the_model_and_of_the_checks_name_the_batch(X):
    class Refuses(nn.Module):
        def __init__(self, how):
            super().__init__()
            torch.manual_seed(0)
            self.fc1, self.fc2, self.how = nn.Linear(4, 6), nn.Linear(6, 3), how

        def forward(self, x):
            if self.how == "refuse" and (x[:, 0] > 100).any():
                raise ValueError("my model refuses this input")
            h = self.fc1(x)
            return self.fc2(torch.exp(h) if self.how == "overflow" else torch.tanh(h))

    bad = X.copy()
    bad[250, :] = 1e5  # exp overflows
    for how, message in [("refuse", "refuses this input"), ("overflow", "NaN or inf")]:
        lib = LIBTransformer(Refuses(how).double(), "fc2", batch_size=100)
        with pytest.raises(ValueError, match=message) as info:
            lib.fit(bad)
        assert "the batch of samples 200 to 299" in "".join(info.value.__notes__)


def test_integer_inputs_for_a_float_model_name_the_batch(X, rng):
    lib = _fitted(X)
    with pytest.raises(
        ValueError, match=r"samples 0 to 29 \(inputs of shape \(30, 4\), dtype torch.int64\)"
    ):
        lib.transform(rng.integers(0, 3, size=(30, 4)))


class _Blocked(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        if self.how == "no_grad":
            with torch.no_grad():
                return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(x))))
        return self.fc3(h.detach())


@pytest.mark.parametrize("how", ["no_grad", "detach"])
def test_a_forward_that_blocks_gradients_is_named(X, how):
    model = _Blocked(how).double()
    lib = LIBTransformer(model, "fc2", downstream_layers=["fc3"])
    with pytest.raises(ValueError, match=r"Gradients do not flow from .* back to layer 'fc2'"):
        lib.fit(X)
    # The PCA baseline needs no gradients.
    LIBTransformer(model, "fc2", downstream_layers=["fc3"], basis="pca").fit(X)


@pytest.mark.parametrize(
    "mode", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference"]
)
def test_everything_works_under_the_callers_grad_mode(X, mode):
    lib = _fitted(X, downstream_layers=["fc3"], random_state=0)
    graph = lib.interaction_graph(X)
    with mode():
        other = _fitted(X, downstream_layers=["fc3"], random_state=0)
        other_graph = other.interaction_graph(X)
        features, score = other.transform(X), other.score(X)
        _, curve = ablation_curve(other, X, n_features=[1, 2])
    np.testing.assert_allclose(other.lambdas_, lib.lambdas_, rtol=1e-12)
    np.testing.assert_allclose(features, lib.transform(X), rtol=1e-12, atol=1e-14)
    assert score == pytest.approx(lib.score(X), rel=1e-12)
    assert other_graph.edges.keys() == graph.edges.keys()
    for key in graph.edges:
        np.testing.assert_allclose(other_graph.edges[key], graph.edges[key], rtol=1e-12)
    np.testing.assert_allclose(curve, ablation_curve(lib, X, n_features=[1, 2])[1], rtol=1e-12)


class _RunsOutOfMemory(nn.Module):
    """Raises ``error`` on any batch that holds the input row ``trigger``."""

    def __init__(self, error, trigger):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)
        self.error, self.trigger = error, trigger

    def forward(self, x):
        if (x == torch.as_tensor(self.trigger, dtype=x.dtype)).all(-1).any():
            raise self.error
        return self.fc2(torch.tanh(self.fc1(x)))


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory"),
    ],
    ids=["OutOfMemoryError", "cuda-message", "cpu-message"],
)
def test_out_of_memory_keeps_its_type_and_message(X, error):
    # A row after the probe's: the failure comes from a pass over the data.
    model = _RunsOutOfMemory(error, X[120])
    with pytest.raises(type(error)) as info:
        LIBTransformer(model, "fc2", batch_size=50, jacobian="autograd").fit(X)
    assert info.type is type(error)
    assert str(info.value) == str(error)
    notes = "".join(getattr(info.value, "__notes__", []))
    if hasattr(error, "add_note"):
        assert "lower batch_size" in notes and "samples" in notes


@pytest.mark.parametrize(
    "error",
    [torch.OutOfMemoryError, RuntimeError],
    ids=["OutOfMemoryError", "RuntimeError"],
)
def test_out_of_memory_when_growing_the_batch_is_not_retried(X, error):
    class Head(nn.Linear):
        def forward(self, h):
            if h.shape[0] > self.n:  # the cut received stacked copies of one batch
                raise error("CUDA out of memory (stacked copies)")
            return super().forward(h)

    class GrowFails(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc1, self.head = nn.Linear(4, 6), Head(6, 3)

        def forward(self, x):
            self.head.n = x.shape[0]
            return self.head(torch.tanh(self.fc1(x)))

    lib = LIBTransformer(GrowFails().double(), "head").fit(X[:50])
    with pytest.raises(error, match="stacked copies"):
        lib.interaction_graph(X[:50], integration="trapezoidal", n_intervals=2)


def test_an_error_after_the_cut_is_not_swallowed(X):
    class FailsAfterCut(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)
            self.broken = False

        def forward(self, x):
            h = self.fc2(torch.tanh(self.fc1(x)))
            if self.broken:
                raise IndexError("a bug in the user's code after the cut")
            return h

    lib = LIBTransformer(FailsAfterCut().double(), "fc2").fit(X[:50])
    lib.model.broken = True  # the next session copies the broken model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StaleBasisWarning)
        with pytest.raises(ValueError, match="IndexError: a bug in the user's code after the cut"):
            lib.interaction_graph(X[:50], integration="trapezoidal", n_intervals=2)


def test_hard_coded_dropout_is_named_as_randomness(X):
    class HardDropout(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.fc2(F.dropout(torch.tanh(self.fc1(x)), 0.5, training=True))

    with pytest.raises(ValueError, match=r"forward pass is random.*F.dropout") as info:
        LIBTransformer(HardDropout().double(), "fc2").fit(X)
    assert "BatchNorm" not in str(info.value)


def test_a_model_on_the_meta_device_is_named(X):
    with torch.device("meta"):
        model = tanh_mlp()
    with pytest.raises(ValueError, match=r"'meta' device.*to_empty"):
        LIBTransformer(model, "fc2").fit(X)


def _meta(*shape):
    return torch.empty(shape, device="meta", dtype=torch.float64)


@pytest.mark.parametrize(
    "call",
    [
        lambda lib, m: LIBTransformer(tanh_mlp(), "fc2").fit(m(60, 4)),
        lambda lib, m: lib.transform(m(5, 4)),
        lambda lib, m: lib.transform_tokens(m(5, 4)),
        lambda lib, m: lib.transform({"x": m(5, 4)}),
        lambda lib, m: lib.transform(_Batches(m(10, 4), size=5, form=lambda b: b)),
        lambda lib, m: lib.score(m(5, 4)),
        lambda lib, m: lib.interaction_graph(m(5, 4)),
        lambda lib, m: ablation_curve(lib, m(5, 4), n_features=[1]),
        lambda lib, m: lib.inverse_transform(m(5, lib.n_components_)),
        lambda lib, m: ActivationTransformer(tanh_mlp(), "fc2").fit(m(60, 4)),
    ],
    ids=["fit", "transform", "tokens", "dict", "stream", "score", "graph", "ablation",
         "inverse", "activations"],
)  # fmt: skip
def test_inputs_on_the_meta_device_are_named(X, call):
    """Issue 24: a meta tensor (a shape without values) as X raised torch's bare
    "Cannot copy out of meta tensor"."""
    lib = _fitted(X)
    with pytest.raises(ValueError, match=r"'meta' device, which has a shape but no values"):
        call(lib, _meta)


@pytest.mark.parametrize(
    "make", [torch.jit.script, lambda m: torch.jit.trace(m, torch.zeros(2, 4))]
)
def test_a_torchscript_model_is_named(X, make, tmp_path):
    """Issue 24: a scripted model raised torch's bare "register_forward_pre_hook is not
    supported on ScriptModules"."""
    scripted = make(tanh_mlp().float())
    message = r"TorchScript module .* no forward hooks.*the torch.nn.Module it was made from"
    with pytest.raises(TypeError, match=message):
        LIBTransformer(scripted, "fc2").fit(X)
    with pytest.raises(TypeError, match=message):
        ActivationTransformer(scripted, "fc2").fit(X)
    path = str(tmp_path / "fit.lib")
    _fitted(X).save(path)
    with pytest.raises((TypeError, ValueError), match=message):
        LIBTransformer.load(path, scripted)


@pytest.mark.parametrize(
    "ragged",
    [
        lambda X: [list(r) for r in X[:5]] + [[1.0, 2.0]],
        lambda X: [torch.as_tensor(r) for r in X[:5]] + [torch.ones(3, dtype=torch.float64)],
    ],
    ids=["lists", "tensors"],
)
def test_a_ragged_list_of_samples_is_named(X, ragged):
    """Issue 24's review: numpy's "inhomogeneous shape" deep in the validation (lists), or
    torch's "stack expects each tensor to be equal size" (tensors)."""
    lib = _fitted(X)
    for call in (LIBTransformer(tanh_mlp(), "fc2").fit, lib.transform, lib.score):
        with pytest.raises(ValueError, match=r"X is a ragged list: its samples have shapes"):
            call(ragged(X))


@pytest.mark.parametrize("axis", [0, 2, -3, {"fc2": 5}])
def test_a_feature_axis_that_a_2d_layer_lacks_is_named(X, axis):
    """Issue 24's review: a 2-D layer took any feature_axis (the batch axis 0 too) and
    ignored it."""
    for make in (LIBTransformer, ActivationTransformer):
        with pytest.raises(ValueError, match=r"does not name a feature axis .* 'fc2'"):
            make(tanh_mlp(), "fc2", feature_axis=axis).fit(X)


def test_more_sources_than_exact_rows_compute_them_exactly(X):
    """Issue 24's review: a million sources per batch on a section of 3 exact rows ran out
    of memory; as many sources as rows cost as much as the exact rows."""
    exact = _fitted(X[:60])
    lib = _fitted(X[:60], n_stochastic_sources=10**6, random_state=0)
    assert lib.n_stochastic_sources_ == {"fc2": None}
    np.testing.assert_allclose(lib.lambdas_, exact.lambdas_, rtol=1e-10)


def test_views_with_negative_strides_are_taken(X):
    """Issue 24's review: ``X[::-1]`` (a view every scikit-learn estimator takes) was
    refused by torch, which takes no negative strides."""
    reversed_rows, reversed_columns = X[::-1], X[:, ::-1]
    lib = LIBTransformer(tanh_mlp(), "fc2").fit(reversed_rows)
    copied = LIBTransformer(tanh_mlp(), "fc2").fit(reversed_rows.copy())
    np.testing.assert_array_equal(
        lib.transform(reversed_columns), copied.transform(reversed_columns.copy())
    )
    acts = ActivationTransformer(tanh_mlp(), "fc2").fit(reversed_rows)
    np.testing.assert_array_equal(acts.transform(reversed_rows), acts.transform(X)[::-1])


def test_a_failed_fit_leaves_the_estimator_as_it_was(X, rng):
    lib = _fitted(X)
    state = {k: v for k, v in vars(lib).items() if k.endswith("_")}
    features = lib.transform(X)
    wider = np.hstack([X, X])  # a new input width, then a model failure
    with pytest.raises(ValueError, match="model failed"):
        lib.fit(wider)
    assert {k for k in vars(lib) if k.endswith("_")} == state.keys()
    assert lib.n_features_in_ == 4 and lib.input_shape_ == (4,)
    np.testing.assert_array_equal(lib.transform(X), features)
    fresh = LIBTransformer(tanh_mlp(), "fc2")
    with pytest.raises(ValueError, match="model failed"):
        fresh.fit(wider)
    assert not [k for k in vars(fresh) if k.endswith("_")]


def test_a_failed_fit_of_a_stream_leaves_the_estimator_as_it_was(X):
    lib = _fitted(X)
    before = lib.lambdas_.copy()
    nan_late = np.hstack([X, X])  # a new width; late NaN if the model took it
    nan_late[250] = np.nan
    with pytest.raises(ValueError, match="model failed"):
        lib.fit(_Batches(nan_late))
    np.testing.assert_array_equal(lib.lambdas_, before)
    assert lib.input_shape_ == (4,)
    assert lib.transform(_Batches(X)).shape == (300, lib.n_components_)


class _AtMost16(nn.Module):
    """Runs out of memory on more than 16 samples per forward pass."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        if x.shape[0] > 16:
            raise torch.OutOfMemoryError("CUDA out of memory (more than 16 samples)")
        return self.fc2(torch.tanh(self.fc1(x)))


def test_the_probe_is_never_bigger_than_a_batch(X):
    reference = _fitted(X[:100])
    model = _AtMost16().double()
    LIBTransformer(model, "fc2", batch_size=16).fit(X[:100])
    loader = torch.utils.data.DataLoader(torch.as_tensor(X[:100]), batch_size=16)
    LIBTransformer(model, "fc2").fit(loader)
    with pytest.raises(torch.OutOfMemoryError) as info:
        LIBTransformer(model, "fc2", batch_size=32).fit(X[:100])
    if hasattr(info.value, "add_note"):
        assert "the probe batch" in "".join(info.value.__notes__)
    assert reference.n_components_ > 0


class _FailingBackward(torch.autograd.Function):
    calls = 0

    @staticmethod
    def forward(ctx, h):
        return h.clone()

    @staticmethod
    def backward(ctx, grad):
        _FailingBackward.calls += 1
        if _FailingBackward.calls > _FailingBackward.fail_after:
            raise RuntimeError("no derivative here")
        return grad


class _NoDerivative(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(x))))
        return self.fc3(_FailingBackward.apply(h))


def test_a_failing_backward_is_named(X):
    model = _NoDerivative().double()
    _FailingBackward.calls, _FailingBackward.fail_after = 0, 0
    with pytest.raises(ValueError, match=r"Gradients cannot be computed from node layer 'fc3'"):
        LIBTransformer(model, "fc2", downstream_layers=["fc3"], jacobian="autograd").fit(X)
    # Failing later, in a Jacobian pass: the type is kept and a note names the batch.
    _FailingBackward.calls, _FailingBackward.fail_after = 0, 1
    with pytest.raises(RuntimeError, match="no derivative here") as info:
        LIBTransformer(
            model, "fc2", downstream_layers=["fc3"], jacobian="autograd", batch_size=256
        ).fit(X)
    if hasattr(info.value, "add_note"):
        assert "the batch of samples 0 to 255" in "".join(info.value.__notes__)
