"""Run with ``torchrun --nproc_per_node=2``: each rank fits on its own shard.

Every rank must end with the basis (and graph) of one process on all the
data.  Rank 0 writes ``OK`` to the file named by the first argument.
"""

import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for toy_models
from toy_models import PositionMixer, tanh_mlp  # noqa: E402

from sklearn_lib import LIBTransformer  # noqa: E402


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
    dist.destroy_process_group()  # the references below run as one process
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
