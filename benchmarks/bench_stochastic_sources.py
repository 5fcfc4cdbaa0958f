"""Benchmark: stochastic sources trade a little accuracy of M' for much less time.

A model with many output positions, where the exact ``M'`` needs one
backward pass per output position and feature (``P * d`` rows per batch):
``out_t = head(tanh(sum_s A_ts mix(x)_s))`` with ``P`` positions and width
``d``, LIB at ``mix`` (generic autograd path).  ``n_stochastic_sources=S``
replaces the rows by ``S`` random +-1 combinations of all of them.  The
benchmark fits the exact basis and, side by side, several ``S`` (each with
a few seeds), and reports time and the error of ``Lambda`` relative to the
largest (the mean over seeds; the estimate is unbiased, so its error falls
like ``1 / sqrt(S)``).

    python benchmarks/bench_stochastic_sources.py [--positions 64] [--width 32] [--device cpu]
"""

import argparse
import time

import numpy as np
import torch
from torch import nn

from sklearn_lib import LIBTransformer


class WideMixer(nn.Module):
    def __init__(self, positions, width, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.mix = nn.Linear(width, width)
        self.A = nn.Parameter(torch.randn(positions, positions) / positions**0.5)
        self.head = nn.Linear(width, width)

    def forward(self, x):  # (n, P, d) -> (n, P, d)
        return self.head(torch.tanh(torch.einsum("ts,nsd->ntd", self.A, self.mix(x))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--sources", default="4,16,64,256")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    model = WideMixer(args.positions, args.width).double()
    X = np.random.default_rng(0).normal(size=(args.n, args.positions, args.width))
    common = dict(device=args.device, batch_size=250)

    def fit(**params):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        lib = LIBTransformer(model, "mix", **common, **params).fit(X)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, lib.bases_["mix"].lambdas

    t_exact, exact = fit()
    rows = args.positions * args.width
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"P = {args.positions}, d = {args.width}, N = {args.n}, float64, {where}")
    print("| M' | rows per batch | seconds | x exact speed | Lambda error (mean of seeds) |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| exact | {rows} | {t_exact:.2f} | 1.0 | 0 |")
    for sources in (int(s) for s in args.sources.split(",")):
        times, errors = [], []
        for seed in range(args.seeds):
            seconds, approx = fit(n_stochastic_sources=sources, random_state=seed)
            k = min(len(approx), len(exact))
            times.append(seconds)
            errors.append(np.abs(approx[:k] - exact[:k]).max() / exact[0])
        t = min(times)
        print(
            f"| S = {sources} | {sources} | {t:.2f} | {t_exact / t:.1f} | {np.mean(errors):.3f} |"
        )


if __name__ == "__main__":
    main()
