"""Benchmark: how LIB's fit time grows with the number of samples N and the width d.

A ReLU MLP ``d -> d -> d -> 10`` with node layers at the input of each Linear
(``fc1``, ``fc2``, ``fc3``), random weights, inputs ``N(0, 1)``.  For each
size the LIB fit (the Linear -> elementwise closed form) and
``sklearn.decomposition.PCA(svd_solver="covariance_eigh")`` on the same three
node layers' activations run side by side; with ``--generic`` the generic
path (one backward pass per Jacobian row) is timed too, at the widths up to
``--generic-max-d``.  The exponent is the least-squares slope of
``log(time)`` against ``log(size)`` over the three largest sizes (at small
sizes fixed costs flatten it).

    python benchmarks/bench_scaling.py [--device cpu] [--generic]
"""

import argparse
import time
from collections import OrderedDict

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import nn

from sklearn_lib import ActivationTransformer, LIBTransformer

LAYERS = ["fc1", "fc2", "fc3"]


def mlp(d, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(d, d),
            act1=nn.ReLU(),
            fc2=nn.Linear(d, d),
            act2=nn.ReLU(),
            fc3=nn.Linear(d, 10),
        )
    )


def best_time(fn, repeat, device):
    best = float("inf")
    for _ in range(repeat):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def candidates(model, X, device, generic):
    common = dict(device=device, batch_size=2048)

    def pca():
        for layer in LAYERS:
            PCA(svd_solver="covariance_eigh").fit(
                ActivationTransformer(model, layer, **common).fit_transform(X)
            )

    def lib(structured):
        jacobian = "auto" if structured else "autograd"
        est = LIBTransformer(
            model, LAYERS[0], downstream_layers=LAYERS[1:], jacobian=jacobian, **common
        )
        est.fit(X)

    runs = {"PCA": pca, "LIB": lambda: lib(True)}
    if generic:
        runs["LIB generic"] = lambda: lib(False)
    return runs


def sweep(sizes, make, args, generic_ok):
    """Time every candidate at every size; return {name: [seconds, ...]}."""
    times = {}
    for size in sizes:
        model, X = make(size)
        runs = candidates(model, X, args.device, args.generic and generic_ok(size))
        for name, fn in runs.items():
            times.setdefault(name, []).append(best_time(fn, args.repeat, args.device))
        print(f"  {size}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in runs))
    return times


def exponent(sizes, seconds, last=3):
    """Log-log slope over the ``last`` largest sizes measured (fixed costs fade there)."""
    sizes = np.asarray(sizes[: len(seconds)], dtype=float)[-last:]
    return float(np.polyfit(np.log(sizes), np.log(seconds[-last:]), 1)[0])


def table(title, label, sizes, times):
    print(f"\n{title}")
    names = list(times)
    print(f"| {label} | " + " | ".join(f"{n} (s)" for n in names) + " | LIB / PCA |")
    print("| --- " * (len(names) + 2) + "|")
    for i, size in enumerate(sizes):
        cells = [f"{times[n][i]:.2f}" if i < len(times[n]) else "" for n in names]
        ratio = times["LIB"][i] / times["PCA"][i]
        print(f"| {size:,} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    slopes = ", ".join(f"{n} {exponent(sizes, times[n]):.2f}" for n in names)
    print(f"exponent (log-log slope over the 3 largest sizes of each): {slopes}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--n-sizes", default="10000,20000,40000,80000,160000,320000")
    parser.add_argument("--d-sizes", default="64,128,256,512,1024")
    parser.add_argument("--d-fixed", type=int, default=256, help="width of the N sweep")
    parser.add_argument("--n-fixed", type=int, default=10000, help="samples of the d sweep")
    parser.add_argument("--generic", action="store_true", help="also time the generic path")
    parser.add_argument("--generic-max-d", type=int, default=256)
    parser.add_argument("--generic-max-n", type=int, default=20000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n_sizes = [int(v) for v in args.n_sizes.split(",")]
    d_sizes = [int(v) for v in args.d_sizes.split(",")]
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"{where}, float64, torch threads {torch.get_num_threads()}, best of {args.repeat}")

    print(f"N sweep (d = {args.d_fixed})")
    model = mlp(args.d_fixed)
    n_times = sweep(
        n_sizes,
        lambda n: (model, rng.normal(size=(n, args.d_fixed)).astype(np.float32)),
        args,
        lambda n: n <= args.generic_max_n,
    )
    print(f"d sweep (N = {args.n_fixed})")
    d_times = sweep(
        d_sizes,
        lambda d: (mlp(d), rng.normal(size=(args.n_fixed, d)).astype(np.float32)),
        args,
        lambda d: d <= args.generic_max_d,
    )
    table(f"Time against N (d = {args.d_fixed}, {where})", "N", n_sizes, n_times)
    table(f"Time against d (N = {args.n_fixed}, {where})", "d", d_sizes, d_times)


if __name__ == "__main__":
    main()
