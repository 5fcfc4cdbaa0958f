"""The batch size of ``batch_size="auto"`` (``_model.batching``): saved bytes and budgets."""

import pytest
import torch

from sklearn_lib._model import batching


class SavesOne(torch.autograd.Function):
    """Identity that saves exactly the tensor ``kept`` for its backward pass."""

    @staticmethod
    def forward(ctx, x, kept):
        ctx.save_for_backward(kept)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_saved_bytes_count_what_autograd_saves(dtype):
    x = torch.zeros(10, 6, dtype=dtype, requires_grad=True)
    kept = torch.zeros(10, 5, 3, dtype=dtype)
    per_sample = batching.saved_bytes_per_sample(x, lambda: SavesOne.apply(x, kept))
    assert per_sample == 5 * 3 * kept.element_size()
    both = batching.saved_bytes_per_sample(
        x, lambda: SavesOne.apply(SavesOne.apply(x, kept), kept[:, :2])
    )
    assert both == (5 + 2) * 3 * kept.element_size()


def test_saved_bytes_divide_by_the_samples_of_a_dict_batch():
    x = torch.zeros(4, 2, requires_grad=True)
    batch = {"input_ids": torch.zeros(8, 3), "attention_mask": torch.ones(8, 3)}
    kept = torch.zeros(100, dtype=torch.float64)
    assert batching.saved_bytes_per_sample(batch, lambda: SavesOne.apply(x, kept)) == 800 / 8
    assert (
        batching.saved_bytes_per_sample(torch.zeros(0, 3), lambda: SavesOne.apply(x, kept)) == 800
    )


def test_saved_bytes_run_with_gradients_even_under_no_grad():
    x = torch.randn(10, 6, dtype=torch.float64)
    w = torch.randn(6, 6, dtype=torch.float64, requires_grad=True)
    seen = []

    def run():
        seen.append(torch.is_grad_enabled())
        return torch.tanh(x @ w)

    with torch.no_grad():
        one = batching.saved_bytes_per_sample(x, run)
    assert seen == [True] and one > 0


def test_saved_bytes_grow_with_the_graph():
    x = torch.randn(10, 6, dtype=torch.float64)
    w = torch.randn(6, 6, dtype=torch.float64, requires_grad=True)
    one = batching.saved_bytes_per_sample(x, lambda: torch.tanh(x @ w))
    two = batching.saved_bytes_per_sample(x, lambda: torch.tanh(torch.tanh(x @ w) @ w))
    assert one >= 6 * 8 and two > one


def test_the_cpu_budget():
    assert batching.budget_bytes("cpu") == batching.CPU_BUDGET_BYTES == 512 * 2**20
    assert batching.budget_bytes(torch.device("cpu")) == batching.CPU_BUDGET_BYTES


@pytest.mark.parametrize(
    "free, expected", [(1 << 30, (1 << 30) // 4), (80 << 30, batching.GPU_BUDGET_BYTES)]
)
def test_a_gpu_budget_is_a_quarter_of_the_free_memory_at_most(monkeypatch, free, expected):
    asked = []

    def mem_get_info(device):
        asked.append(device)
        return free, 80 << 30

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    assert batching.budget_bytes("cuda:1") == expected
    assert asked == [torch.device("cuda:1")]


def _brute_force_size(per_sample, budget):
    """The largest power of two in [1, 4096] whose working set fits, else 1."""
    sizes = [2**p for p in range(0, 13)]
    fitting = [s for s in sizes if s * 4 * max(per_sample, 1 / 4) <= budget]
    return max(fitting, default=1)


@pytest.mark.parametrize(
    "per_sample",
    [0.0, 1.0, 1000.0, 32767.0, 32768.0, 32769.0, 65536.0, 1e5, 524287.0, 524288.0, 1e6, 1e9],
)
def test_auto_batch_size_is_the_largest_power_of_two_that_fits(per_sample):
    # The budget is 512 MiB: 32768 bytes a sample fit 4096 samples exactly, 524288 bytes 256.
    size = batching.auto_batch_size(per_sample, "cpu")
    assert size == _brute_force_size(per_sample, batching.CPU_BUDGET_BYTES)
    assert 1 <= size <= batching.MAX_BATCH_SIZE
    assert size & (size - 1) == 0


@pytest.mark.parametrize(
    "within, expected", [(None, 4096), (10_000, 4096), (4096, 4096), (300, 256), (256, 256),
                         (40, 32), (3, batching.MIN_CACHED_BATCH_SIZE)]
)  # fmt: skip
def test_a_bound_by_the_cache_lowers_the_batch_to_a_power_of_two(within, expected):
    assert batching.auto_batch_size(1.0, "cpu", within) == expected


def test_the_memory_budget_still_bounds_a_batch_within_the_cache():
    per_sample = batching.CPU_BUDGET_BYTES / batching.WORKING_SET_FACTOR / 100  # 64 fit
    assert batching.auto_batch_size(per_sample, "cpu", 1000) == 64


def test_auto_batch_sizes_are_powers_of_two_in_range():
    budget = batching.CPU_BUDGET_BYTES
    factor = batching.WORKING_SET_FACTOR
    assert batching.auto_batch_size(budget / factor / 1000, "cpu") == 512
    assert batching.auto_batch_size(1.0, "cpu") == batching.MAX_BATCH_SIZE
    # Samples larger than the budget's share: as many as fit, at least one.
    assert batching.auto_batch_size(budget / factor / 40, "cpu") == 32
    assert batching.auto_batch_size(float(budget), "cpu") == 1


def test_auto_batch_size_follows_the_budget(monkeypatch):
    monkeypatch.setattr(batching, "CPU_BUDGET_BYTES", 4 * 100 * 1000)
    assert batching.auto_batch_size(100.0, "cpu") == 512  # 1000 fit
    monkeypatch.setattr(batching, "CPU_BUDGET_BYTES", 1)
    assert batching.auto_batch_size(100.0, "cpu") == 1


def test_a_fits_own_cap_bounds_the_batch():
    """A fit with stochastic sources: at most its cap, and within the budget all the same."""
    budget = batching.CPU_BUDGET_BYTES / batching.WORKING_SET_FACTOR
    assert batching.auto_batch_size(1.0, "cpu", most=256) == 256
    assert batching.auto_batch_size(budget / 8, "cpu", most=256) == 8


def test_the_default_batch_size_is_in_range():
    assert batching.MIN_BATCH_SIZE <= batching.DEFAULT_BATCH_SIZE <= batching.MAX_BATCH_SIZE


def test_saved_bytes_leave_out_the_models_own_tensors():
    """A Linear layer saves its weight, which does not grow with the batch."""
    linear = torch.nn.Linear(256, 256).double().requires_grad_(False)
    x = torch.randn(8, 256, dtype=torch.float64, requires_grad=True)
    run = lambda: torch.relu(linear(x))  # noqa: E731
    assert batching.saved_bytes_per_sample(x, run) == (256 * 256 * 8 + 8 * 256 * 8) / 8
    assert batching.saved_bytes_per_sample(x, run, fixed=linear.parameters()) == 256 * 8


def test_saved_bytes_of_tensors_without_a_storage():
    x = torch.randn(8, 4, requires_grad=True)
    adjacency = torch.eye(8).to_sparse()
    run = lambda: torch.sparse.mm(adjacency, x)  # noqa: E731
    assert batching.saved_bytes_per_sample(x, run, fixed=[adjacency]) > 0


@pytest.mark.parametrize(
    "mib, expected", [(1.0, 512), (24.0, 16), (96.0, 4), (200.0, 2), (10_000.0, 1)]
)
def test_below_its_usual_floor_auto_takes_as_many_samples_as_fit_and_says_so(mib, expected):
    """Issue 24: where a sample's working set is 96 MiB (24 MiB saved by autograd), the
    batch is 4 samples, not the usual floor of 64; down to one, however large a sample;
    the note says why."""
    per_sample = mib * 2**20 / batching.WORKING_SET_FACTOR  # a working set of ``mib``
    size = batching.auto_batch_size(per_sample, "cpu")
    assert size == expected
    assert size == 1 or size * mib <= batching.CPU_BUDGET_BYTES / 2**20
    note = batching.small_batch_note(size, per_sample, "cpu")
    if size >= batching.MIN_BATCH_SIZE:
        assert note == ""
    else:
        assert f"working set is about {mib:,.1f} MiB, so {size} fit the 512 MiB budget" in note


def test_peak_bytes_follow_what_is_alive_at_once():
    """Temporaries count while alive, views and in-place results not again, and what
    autograd keeps for a backward pass until it is gone."""
    x = torch.ones(10, 1000, dtype=torch.float64)  # 80 kB

    def run():
        y = x * 2  # 80 kB
        z = y.T  # a view: nothing new
        z.mul_(3)  # in place: nothing new
        w = y + 1  # 80 kB: two at once
        del y, z, w
        v = (x * 4).sum()  # 80 kB then 8 bytes
        return v

    assert batching.peak_bytes_per_sample(x, run) == pytest.approx(16_000, rel=1e-3)
    leaf = torch.ones(10, 1000, dtype=torch.float64, requires_grad=True)

    def saved():
        out = leaf.tanh()  # tanh keeps its output for the backward pass
        return (out * out).sum()  # a second 80 kB while the first is held

    assert batching.peak_bytes_per_sample(leaf, saved) >= 16_000
