"""Run with ``torchrun --nproc_per_node=2``: each rank fits on its own shard.

Every rank must end with the basis (and graph) of one process on all the
data.  Rank 0 writes ``OK`` to the file named by the first argument.
"""

import sys
import warnings
from pathlib import Path

import numpy as np
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for toy_models
from toy_models import PositionMixer, tanh_mlp  # noqa: E402

from sklearn_lib import LIBTransformer  # noqa: E402


class RightOnPositiveData(nn.Module):
    """``l2`` has a closed-form Gram that is right only where the points sum to >= 0.

    On shards of opposite sign its check passes on one rank's probe and fails
    on the other's: the ranks must still agree on one route (autograd), or
    their passes differ and the collectives hang.
    """

    def __init__(self):
        super().__init__()
        self.l1, self.act, self.l2 = nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)

    def forward(self, x):
        return self.l2(self.act(self.l1(x)))

    def lib_section_gram(self, params, src, dst, capture, points, weights, cotangents):
        if src != "l2":
            return NotImplemented
        W, c = params["l2.weight"], cotangents.reshape(cotangents.shape[0], -1)
        gram = points.shape[0] // weights.shape[0] * weights.sum() ** 2 * W.T @ (c.T @ c) @ W
        return 2 * gram if points.sum() < 0 else gram


def disagreeing_checks(rank, world):
    """Shards on which a closed form's check passes on one rank only."""
    import torch

    torch.manual_seed(0)
    model = RightOnPositiveData().double()
    X = np.random.default_rng(1).normal(size=(80, 3))
    X[: len(X) // 2] += 3  # rank 0's shard (even rows) and rank 1's differ in sign
    X[::2], X[1::2] = np.abs(X[::2]) + 1, -np.abs(X[1::2]) - 1
    params = dict(downstream_layers=["l2"], batch_size=16, device="cpu", compute_graph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the rank whose check fails says so
        sharded = LIBTransformer(model, "l1", **params).fit(X[rank::world])
    return model, X, params, sharded


def main(out_path):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    X = np.random.default_rng(0).normal(size=(101, 4, 3))  # 101: shards of unequal size
    model = PositionMixer().double()
    params = dict(downstream_layers=["head"], batch_size=16, device="cpu")
    sharded = LIBTransformer(model, "mix", **params).fit(X[rank::world])
    graph = sharded.interaction_graph(X[rank::world])
    # An MLP chain: its sections' M' come from the statistics pass (one pass).
    Y = X.reshape(len(X), -1)[:, :4]
    chain = dict(downstream_layers=["fc2"], batch_size=16, device="cpu")
    sharded_chain = LIBTransformer(tanh_mlp(), "fc1", **chain).fit(Y[rank::world])
    right_on_positive, Z, checked, disagreed = disagreeing_checks(rank, world)
    dist.destroy_process_group()  # the references below run as one process
    reference = LIBTransformer(right_on_positive, "l1", jacobian="autograd", **checked).fit(Z)
    for name in reference.bases_:
        np.testing.assert_allclose(
            disagreed.bases_[name].lambdas, reference.bases_[name].lambdas, rtol=1e-10
        )
    for section, E in reference.interaction_graph_.edges.items():
        np.testing.assert_allclose(disagreed.interaction_graph_.edges[section], E, rtol=1e-9)
    whole_chain = LIBTransformer(tanh_mlp(), "fc1", **chain).fit(Y)
    for name in whole_chain.bases_:
        np.testing.assert_allclose(
            sharded_chain.bases_[name].lambdas, whole_chain.bases_[name].lambdas, rtol=1e-10
        )
    whole = LIBTransformer(model, "mix", **params).fit(X)
    whole_graph = whole.interaction_graph(X)
    for name in whole.bases_:
        np.testing.assert_allclose(
            sharded.bases_[name].lambdas, whole.bases_[name].lambdas, rtol=1e-10
        )
        np.testing.assert_allclose(
            sharded.bases_[name].mean, whole.bases_[name].mean, rtol=1e-10, atol=1e-13
        )
    np.testing.assert_allclose(
        np.abs(sharded.components_), np.abs(whole.components_), rtol=1e-8, atol=1e-11
    )
    for section in whole_graph.sections:
        np.testing.assert_allclose(graph.edges[section], whole_graph.edges[section], rtol=1e-9)
    assert graph.info["n_samples"] == 101
    if rank == 0:
        Path(out_path).write_text("OK")


if __name__ == "__main__":
    main(sys.argv[1])
