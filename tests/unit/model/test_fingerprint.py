"""Fingerprints of a model (``_model.fingerprint``): exact digests of what moved since the fit."""

import copy
import functools
import hashlib

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sklearn_lib._model.fingerprint import changed_parts, fingerprint, tensor_digest

INF, NAN = float("inf"), float("nan")


class Holder(nn.Module):
    """One buffer ``t`` to fingerprint."""

    def __init__(self, values, dtype=torch.float64, persistent=True):
        super().__init__()
        self.register_buffer("t", torch.as_tensor(values, dtype=dtype), persistent=persistent)


def _changed(old_values, new_values, dtype=torch.float64, persistent=True):
    old = fingerprint(Holder(old_values, dtype, persistent))
    new = fingerprint(Holder(new_values, dtype, persistent))
    return changed_parts(old, new)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.act = nn.Tanh()
        self.scale = 0.5
        self.register_buffer("cache", torch.zeros(5), persistent=False)
        self.register_buffer("codes", torch.tensor([3, -1, 7], dtype=torch.int8))
        self.register_buffer("step", torch.tensor(4))  # an integer scalar: a counter


def test_every_tensor_but_integer_scalars_and_every_module():
    digests = fingerprint(Model())
    tensors = {"fc.weight", "fc.bias", "bn.weight", "bn.bias", "bn.running_mean"}
    tensors |= {"bn.running_var", "codes", "cache"}  # a non-persistent buffer too
    modules = {"<model> (module)", "fc (module)", "bn (module)", "act (module)"}
    assert set(digests) == tensors | modules
    assert all(isinstance(d, str) and len(d) == 32 for d in digests.values())


def test_a_tensor_digest_is_of_its_bytes_dtype_and_shape(rng):
    values = torch.as_tensor(rng.normal(size=(3, 7)), dtype=torch.float32)
    expected = hashlib.sha256(b"torch.float32(3, 7)" + values.numpy().tobytes())
    assert tensor_digest(values) == expected.digest()[:16].hex()
    # A transposed view: its values in its own order, the layout aside.
    assert tensor_digest(values.T) == tensor_digest(values.T.contiguous())
    assert tensor_digest(values.reshape(7, 3)) != tensor_digest(values)
    assert tensor_digest(values.double()) != tensor_digest(values)


@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int8]
)
def test_the_same_values_have_not_changed(rng, dtype):
    values = rng.integers(-50, 50, size=(30, 20))
    assert _changed(values, values.copy(), dtype) == []
    model = Model()
    # New storages, the same bytes: a deep copy, a round trip through float64.
    assert changed_parts(fingerprint(model), fingerprint(copy.deepcopy(model))) == []
    before = fingerprint(model)
    model.float().double().float()
    model.step += 1  # counters do not count
    model.train(False)  # the package runs its copy in eval mode whatever the flag
    assert changed_parts(before, fingerprint(model)) == []


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.int64])
def test_values_that_swap_places_are_found(rng, dtype):
    values = rng.integers(-50, 50, size=500).astype(float)
    values[[3, 400]] = [1.0, 2.0]
    swapped = values.copy()
    swapped[[3, 400]] = [2.0, 1.0]  # same sum, same squares
    assert _changed(values, swapped, dtype) == ["t"]


def test_swaps_that_keep_a_position_weighted_sum_are_found():
    """Values a, b, c, d at positions 1, 2, 3, 4 with a + d = b + c weighted by position:
    (1, 2, 2, 1) -> (2, 1, 1, 2) keeps the sum, the squares and sum(i * x_i)."""
    assert _changed([0.0, 1.0, 2.0, 2.0, 1.0], [0.0, 2.0, 1.0, 1.0, 2.0]) == ["t"]


def test_one_bit_of_a_large_matrix_is_found(rng):
    values = torch.as_tensor(rng.normal(size=(1000, 1000)), dtype=torch.float32)
    changed = values.clone()
    changed.view(torch.int32)[123, 456] ^= 1  # the last bit of the mantissa
    assert _changed(values, changed, torch.float32) == ["t"]


@pytest.mark.parametrize(
    "old, new, changed",
    [
        ([NAN, 1.0, INF], [NAN, 1.0, INF], False),
        ([-INF, 1.0, 2.0], [-INF, 1.0, 2.0], False),
        ([0.0, -INF, 0.0], [0.0, 0.0, -INF], True),  # a -inf mask entry moved
        ([0.0, -INF, 0.0], [0.0, 0.0, 0.0], True),  # removed
        ([0.0, 0.0, 0.0], [-INF, 0.0, 0.0], True),  # a zero became -inf
        ([0.0, INF, 0.0, 0.0, INF, 0.0], [0.0, 0.0, INF, INF, 0.0, 0.0], True),
        ([NAN, 1.0, 2.0], [1.0, NAN, 2.0], True),
        ([INF, 1.0, 2.0], [NAN, 1.0, 2.0], True),
        ([0.0, 1.0], [-0.0, 1.0], True),  # another bit
        ([1e200, 2.0], [1e200, 1e199], True),
    ],
)
def test_inf_nan_and_signed_zeros(old, new, changed):
    assert _changed(old, new) == (["t"] if changed else [])
    assert _changed(old, new, persistent=False) == (["t"] if changed else [])


def test_edits_that_move_no_version_counter_are_found(rng):
    model = Model()
    before = fingerprint(model)
    with torch.no_grad():
        model.fc.weight.data[2, 1] *= 1.01
        model.bn.running_mean.numpy()[0] = 3.0  # through numpy
        model.codes[0] += 1
        model.cache.fill_(1.0)  # a non-persistent buffer
    assert changed_parts(before, fingerprint(model)) == [
        "bn.running_mean",
        "cache",
        "codes",
        "fc.weight",
    ]


def test_tensors_that_appear_or_go_are_changes():
    model = Model()
    before = fingerprint(model)
    model.register_buffer("extra", torch.zeros(2))
    del model.fc.bias
    model.fc.bias = None
    assert changed_parts(before, fingerprint(model)) == ["extra", "fc (module)", "fc.bias"]


def test_a_swapped_module_is_found():
    model = Model()
    before = fingerprint(model)
    model.act = nn.GELU()
    assert changed_parts(before, fingerprint(model)) == ["act (module)"]
    model = Model()
    model.act = nn.GELU(approximate="tanh")  # a plain attribute of the module
    after = fingerprint(model)
    model.act = nn.GELU()
    assert changed_parts(after, fingerprint(model)) == ["act (module)"]


class Reads(nn.Module):
    """A forward that reads plain attributes and an unregistered tensor."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3, 3)
        self.scale, self.n_heads, self.causal, self.mode = 0.5, 2, True, "mean"
        self.kind = torch.float32
        self.fn = F.relu
        self.plain_tensor = torch.arange(4.0)
        self.table = {"a": [1, 2.5], "b": (None, "x")}
        self.array = np.arange(3.0)
        self.config = Config()


class Config:
    """A configuration object, as Hugging Face models keep one (``to_dict`` says so)."""

    def __init__(self):
        self.use_cache = False
        self.inner = {"dropout": 0.1}

    def to_dict(self):
        return dict(vars(self))


class Counter:
    """State a forward may move without changing what it computes (calls counted)."""

    def __init__(self):
        self.calls = 0


@pytest.mark.parametrize(
    "change",
    [
        lambda m: setattr(m, "scale", 0.5000000000000001),
        lambda m: setattr(m, "n_heads", 3),
        lambda m: setattr(m, "causal", False),
        lambda m: setattr(m, "mode", "sum"),
        lambda m: setattr(m, "kind", torch.float64),
        lambda m: setattr(m, "fn", F.gelu),
        lambda m: setattr(m, "fn", functools.partial(F.leaky_relu, negative_slope=0.2)),
        lambda m: m.plain_tensor.__setitem__(0, -1.0),
        lambda m: m.table["a"].append(3),
        lambda m: setattr(m, "array", np.arange(3.0) + 1),
        lambda m: setattr(m.config, "use_cache", True),
        lambda m: m.config.inner.__setitem__("dropout", 0.2),
        lambda m: setattr(m, "new_attribute", 1),
        lambda m: setattr(m, "scale", np.float32(0.5)),  # another type
    ],
)
def test_plain_attributes_that_the_forward_reads_are_watched(change):
    model = Reads()
    before = fingerprint(model)
    assert changed_parts(before, fingerprint(Reads())) == []  # deterministic
    change(model)
    assert changed_parts(before, fingerprint(model)) == ["<model> (module)"]


def test_objects_other_than_configurations_count_by_their_class():
    model = Reads()
    model.counter = Counter()
    before = fingerprint(model)
    model.counter.calls += 1
    assert changed_parts(before, fingerprint(model)) == []
    model.counter = Config()
    assert changed_parts(before, fingerprint(model)) == ["<model> (module)"]


def test_forward_hooks_are_watched():
    """A hook changes what the forward computes: adding, replacing or removing one is
    a change, as is another value it closes over."""
    model = Model()
    before = fingerprint(model)
    handle = model.fc.register_forward_hook(lambda m, i, o: o * 2)
    assert changed_parts(before, fingerprint(model)) == ["fc (module)"]
    handle.remove()
    assert changed_parts(before, fingerprint(model)) == []

    def shift(by):
        return lambda m, args: (args[0] + by,)

    model.register_forward_pre_hook(shift(1.0))
    one = fingerprint(model)
    model._forward_pre_hooks.clear()
    model.register_forward_pre_hook(shift(2.0))
    assert changed_parts(one, fingerprint(model)) == ["<model> (module)"]


def test_containers_that_hold_themselves_end():
    model = Reads()
    model.loop = []
    model.loop.append(model.loop)
    model.config.back = model.config
    assert fingerprint(model) == fingerprint(model)


def test_tied_tensors_are_read_once_and_named_twice(monkeypatch):
    from sklearn_lib._model import fingerprint as module

    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight
    read = []
    monkeypatch.setattr(module, "tensor_digest", lambda t: read.append(t) or "d")
    digests = fingerprint(model)
    assert digests["0.weight"] == digests["1.weight"] == "d"
    assert len(read) == 3  # the tied weight, two biases


def test_fingerprinting_leaves_the_model_as_it_was():
    model = Model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    versions = [p._version for p in model.parameters()]
    fingerprint(model)
    assert [p._version for p in model.parameters()] == versions
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


def _closure(k):
    return lambda out: out[k]


def test_value_digests_tell_functions_apart_by_what_they_compute():
    from sklearn_lib._model.fingerprint import value_digest

    first, second = (lambda out: out[0]), (lambda out: out[1])
    assert value_digest(first) != value_digest(second)  # both are '<lambda>'
    assert value_digest(_closure(0)) != value_digest(_closure(1))  # closed-over values
    assert value_digest(_closure(0)) == value_digest(_closure(0))
    assert value_digest({"a": torch.ones(2)}) != value_digest({"a": torch.zeros(2)})
    assert value_digest((1, "x")) != value_digest([1, "x"])

    def recursive(n):
        return n if n < 1 else recursive(n - 1)

    assert value_digest(recursive) == value_digest(recursive)  # closes over itself: ends


def test_digests_do_not_depend_on_the_hash_seed():
    """Saved fits compare digests across processes: sets and a function's set constants
    must come out in one order whatever ``PYTHONHASHSEED`` is."""
    import subprocess
    import sys

    code = (
        "from torch import nn\n"
        "from sklearn_lib._model.fingerprint import fingerprint\n"
        "m = nn.Linear(2, 2, bias=False)\n"
        "nn.init.ones_(m.weight)\n"
        "m.names = {'alpha', 'beta', 'gamma', 'delta'}\n"
        "m.check = lambda s: s in {'alpha', 'beta', 'gamma', 'delta'}\n"
        "print(fingerprint(m)['<model> (module)'])\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**__import__("os").environ, "PYTHONHASHSEED": str(seed)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in (1, 2, 3)
    }
    assert len(digests) == 1, digests
