"""Sums over ranks (``_core.distributed``): no-ops in one process, all-reduced sums in a group."""

import numpy as np
import pytest
import torch

from sklearn_lib._core import distributed as dist


@pytest.fixture
def no_group():
    if dist.distributed():
        pytest.skip("a process group is already running")


def test_a_single_process_is_not_distributed(no_group):
    assert dist.distributed() is False


def test_all_reduce_sum_is_a_no_op_in_one_process(no_group):
    tensor = torch.tensor([1.0, -2.0, 3.5])
    assert dist.all_reduce_sum(tensor) is tensor
    np.testing.assert_array_equal(tensor.numpy(), [1.0, -2.0, 3.5])


def test_global_count_in_one_process(no_group):
    count = dist.global_count(7, torch.device("cpu"))
    assert count == 7 and type(count) is int


def test_row_average_in_one_process(no_group, rng):
    total = torch.as_tensor(rng.normal(size=(3, 3)))
    average, n = dist.row_average(total.clone(), 12, 4)
    assert isinstance(average, np.ndarray) and n == 4 and type(n) is int
    np.testing.assert_allclose(average, total.numpy() / 12, rtol=1e-15)


def test_row_average_over_two_simulated_ranks(monkeypatch):
    """``(t0 + t1) / (r0 + r1)`` and ``n0 + n1``: every sum goes through one SUM all-reduce."""
    other_rank = [torch.tensor([6.0, -3.0], dtype=torch.float64), 5.0, 2.0]  # total, rows, samples
    ops = []

    def all_reduce(tensor, op):
        ops.append(op)
        tensor += other_rank[len(ops) - 1]

    monkeypatch.setattr(dist, "distributed", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    total = torch.tensor([2.0, 1.0], dtype=torch.float64)
    average, n = dist.row_average(total, 3, 1)
    np.testing.assert_allclose(average, [8.0 / 8, -2.0 / 8], rtol=1e-15)
    assert n == 3
    assert ops == [torch.distributed.ReduceOp.SUM] * 3
    np.testing.assert_array_equal(total.numpy(), [8.0, -2.0])  # reduced in place


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_a_one_rank_gloo_group_runs_the_real_all_reduce(no_group, monkeypatch):
    calls = []
    real = torch.distributed.all_reduce

    def spy(tensor, op):
        calls.append(op)
        return real(tensor, op=op)

    monkeypatch.setattr(torch.distributed, "all_reduce", spy)
    store = torch.distributed.HashStore()
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert dist.distributed() is True
        tensor = torch.tensor([1.0, 2.0], dtype=torch.float64)
        assert dist.all_reduce_sum(tensor) is tensor
        np.testing.assert_array_equal(tensor.numpy(), [1.0, 2.0])
        average, n = dist.row_average(torch.tensor([4.0, 6.0], dtype=torch.float64), 2, 5)
        np.testing.assert_array_equal(average, [2.0, 3.0])
        assert n == 5 and dist.global_count(9, "cpu") == 9
    finally:
        torch.distributed.destroy_process_group()
    assert len(calls) == 5 and not dist.distributed()
