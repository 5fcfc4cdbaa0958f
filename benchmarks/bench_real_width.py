"""Benchmark: LIB on a GPT-2 of real width (768, 12 heads, vocabulary 50,257; issue 23).

Weights from a config with random initialisation (``initializer_range=0.02``,
transformers' own): the cost does not depend on the weights.  LIB at every
residual-stream node, the input of each block and of ``ln_f`` (the default
``capture="input"``), output = logits, on ``--n`` sequences of
``--positions`` random tokens, in float32.

Side by side in one process, it reports:

- the fit with ``n_stochastic_sources="auto"``: time, peak memory above the
  start (the process' resident set, sampled every 50 ms), rounds per section;
- a reference fit with many more draws: ``"auto"`` with another seed and
  tolerances ``--tighter`` times tighter (its Lambda error; the sine of its
  subspace angle), so about ``tighter**2`` times the draws;
- per node, the top-5 subspace agreement (smallest principal cosine) and the
  top-20 Lambda error (largest difference relative to the largest Lambda)
  of ``"auto"`` against the reference;
- PCA's time on the same activations (``basis="pca"``, all nodes).

    python benchmarks/bench_real_width.py                      # 2 layers, 64 x 128
    python benchmarks/bench_real_width.py --layers 12 --device cuda
"""

import argparse
import contextlib
import threading
import time
import warnings

import numpy as np
import scipy.linalg
import torch
from _gpt2 import random_gpt2

from sklearn_lib import LIBTransformer
from sklearn_lib._fitting import stochastic
from sklearn_lib._fitting.stochastic import _gapped_top


class PeakMemory:
    """The peak resident set (CPU) or allocated memory (CUDA) above the start, in GB."""

    def __init__(self, device):
        self.device, self.peak, self._stop = device, 0.0, threading.Event()

    def _now(self):
        if self.device == "cuda":
            return torch.cuda.max_memory_allocated() / 1e9
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 1e9

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.start = self._now() if self.device != "cuda" else 0.0
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._now() - self.start)
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._now() - self.start)


def fit(model, X, nodes, args, **params):
    """A fitted estimator, its seconds and its peak memory (GB above the start)."""
    lib = LIBTransformer(
        model,
        nodes[0],
        downstream_layers=nodes[1:],
        output="logits",
        forward_kwargs={"use_cache": False},
        dtype="float32",
        device=args.device,
        verbose=args.verbose,
        **params,
    )
    with PeakMemory(args.device) as memory, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        lib.fit(X)
        seconds = time.perf_counter() - start
    for w in caught:
        print(f"  warning: {w.category.__name__}: {str(w.message)[:160]}")
    return lib, seconds, memory.peak


@contextlib.contextmanager
def tighter(factor):
    """``"auto"``'s tolerances ``factor`` times tighter, and ``factor**2`` times its rounds."""
    saved = (stochastic.AUTO_LAMBDA_TOLERANCE, stochastic.AUTO_COSINE, stochastic.AUTO_MAX_ROUNDS)
    sine = np.sqrt(1 - saved[1] ** 2) / factor
    stochastic.AUTO_LAMBDA_TOLERANCE = saved[0] / factor
    stochastic.AUTO_COSINE = float(np.sqrt(1 - sine**2))
    stochastic.AUTO_MAX_ROUNDS = int(saved[2] * factor**2)
    try:
        yield
    finally:
        stochastic.AUTO_LAMBDA_TOLERANCE, stochastic.AUTO_COSINE, stochastic.AUTO_MAX_ROUNDS = saved


def agreement(a, b, k=5, top=20):
    """Top-``k`` smallest principal cosine, the same at the estimate's own cut (5, grown past
    Lambdas within 10%: ``cut``), and top-``top`` Lambda error of ``b`` against ``a``."""

    def cosine(k):
        k = min(k, a.n_components, b.n_components)
        return float(np.cos(scipy.linalg.subspace_angles(a.matrix[:, :k], b.matrix[:, :k])).min())

    cut = _gapped_top(a.lambdas[: a.n_components], 0.0)
    t = min(top, len(a.lambdas), len(b.lambdas))
    error = float(np.max(np.abs(a.lambdas[:t] - b.lambdas[:t])) / a.lambdas[0])
    return cosine(k), cut, cosine(cut), error


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--n", type=int, default=64, help="sequences")
    parser.add_argument("--positions", type=int, default=128)
    parser.add_argument("--tighter", type=float, default=3.0, help="the reference's tolerances")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument(
        "--no-reference", action="store_true", help="auto and PCA only: time, memory, estimates"
    )
    args = parser.parse_args()

    model = random_gpt2(
        768, 50_257, args.positions, initializer_range=0.02, n_layer=args.layers, n_head=12
    )
    X = np.random.default_rng(0).integers(0, 50_257, size=(args.n, args.positions))
    nodes = [f"transformer.h.{i}" for i in range(args.layers)] + ["transformer.ln_f"]
    print(
        f"GPT-2 width 768, 12 heads, {args.layers} layers, vocabulary 50,257; {args.n} sequences "
        f"x {args.positions} tokens; float32 on {args.device}, {torch.get_num_threads()} threads"
    )
    pca, t_pca, m_pca = fit(model, X, nodes, args, basis="pca")
    print(f"PCA: {t_pca:.1f} s, peak {m_pca:.2f} GB")
    auto, t_auto, m_auto = fit(model, X, nodes, args, n_stochastic_sources="auto", random_state=0)
    print(f"auto: {t_auto:.1f} s ({t_auto / t_pca:.1f}x PCA), peak {m_auto:.2f} GB, "
          f"batch {auto.batch_size_}")  # fmt: skip
    for name, r in auto.stochastic_rounds_.items():
        print(f"  {name}: {r}")
    if args.no_reference:
        return
    with tighter(args.tighter):
        ref, t_ref, m_ref = fit(model, X, nodes, args, n_stochastic_sources="auto", random_state=1)
    said = {name: (r.n_sources, r.rounds) for name, r in ref.stochastic_rounds_.items()}
    print(f"reference ({args.tighter:g}x tighter): {t_ref:.1f} s, peak {m_ref:.2f} GB, {said}")
    print("\n| node | auto sources (rounds) | est. cosine | est. Lambda error | top-5 cosine "
          "| cosine at the cut (k) | top-20 Lambda error |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in nodes:
        top5, cut, at_cut, error = agreement(ref.bases_[name], auto.bases_[name])
        r = auto.stochastic_rounds_.get(name)
        sources = auto.n_stochastic_sources_[name]
        said = (f"{r.n_sources} ({r.rounds})", f"{r.cosine:.4f}", f"{r.lambda_error:.4f}") if r \
            else (str(sources), "exact", "exact")  # fmt: skip
        print(f"| {name} | {' | '.join(said)} | {top5:.4f} | {at_cut:.4f} ({cut}) | {error:.4f} |")


if __name__ == "__main__":
    main()
