"""Benchmark: LIB fit of a whole MLP chain vs what a PCA user spends on the same node layers.

Goal (issue 12, goal 1): at default settings, the LIB fit of a 784-512-512-10
ReLU MLP chain (node layers at each Linear's input, N = 20,000 float32
samples) within 2x the time of a PCA user: one hooked forward pass reading
the three node layers, then ``PCA(svd_solver="covariance_eigh")`` on each.
All timings come from one run, side by side, best of ``--repeat``; ratios are
what to compare across machines.

    python benchmarks/bench_mlp_vs_pca.py [--n 20000] [--device cpu] [--generic]

Rows: LIB at default settings (float64), LIB with ``dtype="float32"``, and
with ``--generic`` LIB through autograd only (``jacobian="autograd"``),
whose Lambda the default route must equal.
"""

import argparse
import time
from collections import OrderedDict

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import nn

from sklearn_lib import LIBTransformer


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
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--generic", action="store_true", help="also time the autograd route")
    args = parser.parse_args()
    model = mlp()
    X = np.random.default_rng(0).normal(size=(args.n, 784)).astype(np.float32)
    layers = ["fc1", "fc2", "fc3"]

    def pca_user():
        seen = {}
        handles = [
            getattr(model, name).register_forward_pre_hook(
                lambda module, inputs, name=name: seen.__setitem__(name, inputs[0])
            )
            for name in layers
        ]
        try:
            with torch.no_grad():
                model(torch.from_numpy(X).to(args.device))
        finally:
            for handle in handles:
                handle.remove()
        for name in layers:
            PCA(svd_solver="covariance_eigh").fit(seen[name].cpu().numpy())

    def lib_fit(**params):
        lib = LIBTransformer(
            model, layers[0], downstream_layers=layers[1:], device=args.device, **params
        )
        return lib.fit(X)

    # One small fit first: the first autograd call of a process imports part of
    # torch (sympy; seconds on a machine without compiled bytecode), which is
    # not LIB's work.
    LIBTransformer(model, layers[0], device=args.device).fit(X[:64])
    t_pca, _ = timed(pca_user, args.repeat)
    t_lib, lib = timed(lib_fit, args.repeat)
    t_32, _ = timed(lambda: lib_fit(dtype="float32"), args.repeat)
    rows = [
        ("PCA user: hooked forward + PCA(covariance_eigh) x3", t_pca, 1.0),
        ("LIB, default settings (float64)", t_lib, t_lib / t_pca),
        ("LIB, dtype='float32'", t_32, t_32 / t_pca),
    ]
    if args.generic:
        t_gen, generic = timed(lambda: lib_fit(jacobian="autograd"), 1)
        rows.append(("LIB through autograd only", t_gen, t_gen / t_pca))
        for name in lib.bases_:
            # Relative to each layer's largest Lambda too: the smallest sit near
            # 1e-9 of it, where sums in another order move them by 1e-9 of themselves.
            expected = generic.bases_[name].lambdas
            np.testing.assert_allclose(
                lib.bases_[name].lambdas, expected, rtol=1e-9, atol=1e-12 * expected[0]
            )
    print(
        f"MLP 784-512-512-10 ReLU, N={args.n}, device={args.device}, "
        f"torch threads={torch.get_num_threads()}, best of {args.repeat}"
    )
    print(f"{'what':52s} {'seconds':>8s} {'x PCA user':>11s}")
    for what, seconds, ratio in rows:
        print(f"{what:52s} {seconds:8.2f} {ratio:11.2f}")


if __name__ == "__main__":
    main()
