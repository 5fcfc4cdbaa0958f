"""Benchmark: a streamed fit's peak memory does not grow with N.

Fits LIB on a 64-128-128-10 ReLU MLP from a re-iterable stream that makes
its batches on the fly (nothing of size N is ever held), for several N, each
in a fresh process, and reports the peak resident memory of each.

    python benchmarks/bench_streaming_memory.py [--sizes 10000,100000,1000000]
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from collections import OrderedDict


class Stream:
    """Deterministic batches of N(0, 1) inputs, regenerated on every pass."""

    def __init__(self, n, batch=4096, width=64):
        self.n, self.batch, self.width = n, batch, width

    def __iter__(self):
        import torch

        gen = torch.Generator().manual_seed(0)
        for start in range(0, self.n, self.batch):
            size = min(self.batch, self.n - start)
            yield torch.randn(size, self.width, generator=gen)


def run_one(n):
    import torch
    from torch import nn

    from sklearn_lib import LIBTransformer

    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(64, 128),
            act1=nn.ReLU(),
            fc2=nn.Linear(128, 128),
            act2=nn.ReLU(),
            fc3=nn.Linear(128, 10),
        )
    )
    start = time.perf_counter()
    lib = LIBTransformer(
        model, "fc1", downstream_layers=["fc2", "fc3"], batch_size=4096, device="cpu"
    ).fit(Stream(n))
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(
        json.dumps(
            {"n": n, "seconds": seconds, "peak_mib": peak_mib, "lambda0": float(lib.lambdas_[0])}
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return run_one(args.one)
    print(f"{'N':>9s} {'seconds':>8s} {'peak MiB':>9s}")
    for n in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True
        ).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(f"{row['n']:9d} {row['seconds']:8.1f} {row['peak_mib']:9.0f}")


if __name__ == "__main__":
    main()
