"""Benchmark: LIB fit of a whole MLP chain vs PCA on the same node layers.

Goal (issue 5): the LIB fit of a 784-512-512-10 ReLU MLP chain (node layers
at each Linear's input, 20,000 samples) within 3x the time of fitting
``sklearn.decomposition.PCA(svd_solver="covariance_eigh")`` on the
activations of the same node layers.  All timings come from one run, side by
side; ratios are what to compare across machines.

    python benchmarks/bench_mlp_vs_pca.py [--n 20000] [--device cpu] [--dtype float64]
"""

import argparse
import time
from collections import OrderedDict

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import nn

from sklearn_lib import ActivationTransformer, LIBTransformer


def mlp(widths=(784, 512, 512, 10), seed=0):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:]), start=1):
        layers.append((f"fc{i}", nn.Linear(a, b)))
        if i < len(widths) - 1:
            layers.append((f"act{i}", nn.ReLU()))
    return nn.Sequential(OrderedDict(layers))


def timed(fn, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--generic", action="store_true", help="also time the generic path")
    args = parser.parse_args()
    model = mlp()
    X = np.random.default_rng(0).normal(size=(args.n, 784)).astype(np.float32)
    layers = ["fc1", "fc2", "fc3"]
    common = dict(device=args.device, dtype=args.dtype, batch_size=2048)

    def pca_all():
        for layer in layers:
            acts = ActivationTransformer(model, layer, **common).fit_transform(X)
            PCA(svd_solver="covariance_eigh").fit(acts)

    def lib_fit(structured):
        jacobian = "auto" if structured else "autograd"
        lib = LIBTransformer(
            model, layers[0], downstream_layers=layers[1:], jacobian=jacobian, **common
        )
        return lib.fit(X)

    # One small fit first: the first autograd call of a process imports part of
    # torch (sympy; seconds on a machine without compiled bytecode), which is
    # not LIB's work.
    LIBTransformer(model, layers[0], **common).fit(X[:64])
    t_pca, _ = timed(pca_all)
    t_lib, lib = timed(lambda: lib_fit(True))
    rows = [
        ("PCA(covariance_eigh) on 3 node layers", t_pca, 1.0),
        ("LIB, Linear->elementwise closed form", t_lib, t_lib / t_pca),
    ]
    if args.generic:
        t_gen, generic = timed(lambda: lib_fit(False))
        rows.append(("LIB, generic per-row backward passes", t_gen, t_gen / t_pca))
        for name in lib.bases_:
            # Relative to each layer's largest Lambda too: the smallest sit near
            # 1e-9 of it, where sums in another order move them by 1e-9 of themselves.
            expected = generic.bases_[name].lambdas
            rtol = 1e-6 if args.dtype == "float32" else 1e-9
            np.testing.assert_allclose(
                lib.bases_[name].lambdas, expected, rtol=rtol, atol=1e-3 * rtol * expected[0]
            )
    print(
        f"MLP 784-512-512-10 ReLU, N={args.n}, device={args.device}, dtype={args.dtype}, "
        f"torch threads={torch.get_num_threads()}"
    )
    print(f"{'what':42s} {'seconds':>8s} {'x PCA':>7s}")
    for what, seconds, ratio in rows:
        print(f"{what:42s} {seconds:8.2f} {ratio:7.2f}")


if __name__ == "__main__":
    main()
