"""Benchmark: LIB on a chain of wide layers vs what a PCA user spends, with time and peak memory.

Issue 22's goal: at width 4096 (a ``4096-4096-4096-10`` ReLU MLP, node layers
at each Linear's input, N = 4,000 float32 samples), the LIB fit at default
settings within 3x a PCA user's time (one hooked forward pass reading the
three node layers, then ``PCA(svd_solver="covariance_eigh")`` on each),
with progress throughout and its peak memory stated.

Each workload runs in a fresh process (so that one's freed memory is not
another's peak), which reports its seconds, the resident memory before it
started and its peak, sampled every 5 ms; memory is also said in units of
one ``d x d`` float64 matrix.  With ``verbose`` the LIB fits print their
progress lines, and the benchmark reports the longest stretch between two
of them.

    python benchmarks/bench_wide_mlp.py [--width 4096] [--n 4000] [--repeat 1]
"""

import argparse
import json
import subprocess
import sys
import threading
import time

import numpy as np


def _rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakMemory:
    """The largest resident memory seen while the block runs, sampled every 5 ms."""

    def __enter__(self):
        self.before = self.peak = _rss_mib()
        self._running = True
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while self._running:
            self.peak = max(self.peak, _rss_mib())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()


class Gaps:
    """The longest time between two lines written to stderr (progress lines)."""

    def __init__(self, stream):
        self.stream, self.last, self.longest = stream, None, 0.0

    def write(self, text):
        now = time.perf_counter()
        if "\n" in text or "\r" in text:
            if self.last is not None:
                self.longest = max(self.longest, now - self.last)
            self.last = now
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()


def run_one(what, width, n):
    """One workload in this process; prints a JSON line."""
    import torch
    from bench_mlp_vs_pca import mlp
    from sklearn.decomposition import PCA

    from sklearn_lib import LIBTransformer

    model = mlp((width, width, width, 10))
    X = np.random.default_rng(0).normal(size=(n, width)).astype(np.float32)
    layers = ["fc1", "fc2", "fc3"]
    gaps = Gaps(sys.stderr)
    sys.stderr = gaps
    with PeakMemory() as memory:
        start = time.perf_counter()
        if what == "pca":
            seen = {}
            hooks = [
                getattr(model, name).register_forward_pre_hook(
                    lambda module, inputs, name=name: seen.__setitem__(name, inputs[0])
                )
                for name in layers
            ]
            with torch.no_grad():
                model(torch.from_numpy(X))
            for hook in hooks:
                hook.remove()
            for name in layers:
                PCA(svd_solver="covariance_eigh").fit(seen[name].numpy())
        else:
            dtype = "float32" if what == "lib32" else "float64"
            lib = LIBTransformer(
                model, layers[0], downstream_layers=layers[1:], dtype=dtype, verbose=True
            )
            lib.fit(X)
        seconds = time.perf_counter() - start
    gaps.write("\n")  # the last stretch, to the end
    result = dict(
        what=what,
        seconds=seconds,
        before_mib=memory.before,
        peak_mib=memory.peak,
        longest_silence=gaps.longest if what != "pca" else None,
    )
    print(json.dumps(result), file=sys.__stdout__, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        return run_one(args.only, args.width, args.n)
    unit = args.width**2 * 8 / 2**20
    names = {
        "pca": "PCA user: hooked forward + PCA(covariance_eigh) x3",
        "lib": "LIB, default settings (float64)",
        "lib32": "LIB, dtype='float32'",
    }
    best = {}
    for _ in range(args.repeat):
        for what in names:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--only",
                    what,
                    f"--width={args.width}",
                    f"--n={args.n}",
                ],
                capture_output=True,
                text=True,
                check=True,
                cwd=sys.path[0],
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            if what not in best or result["seconds"] < best[what]["seconds"]:
                best[what] = result
    print(
        f"MLP {args.width}-{args.width}-{args.width}-10 ReLU, N={args.n}, CPU, "
        f"best of {args.repeat}; memory in MiB and in d x d float64 matrices ({unit:.0f} MiB)"
    )
    header = ("seconds", 8), ("x PCA", 6), ("peak - before", 14), ("d^2", 5), ("silence", 8)
    print(f"{'what':52s} " + " ".join(f"{name:>{width}s}" for name, width in header))
    for what, words in names.items():
        r = best[what]
        grown = r["peak_mib"] - r["before_mib"]
        silence = "" if r["longest_silence"] is None else f"{r['longest_silence']:.1f} s"
        print(
            f"{words:52s} {r['seconds']:8.1f} {r['seconds'] / best['pca']['seconds']:6.2f} "
            f"{grown:14.0f} {grown / unit:5.1f} {silence:>8s}"
        )


if __name__ == "__main__":
    main()
