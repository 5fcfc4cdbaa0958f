"""Benchmark: n_stochastic_sources="auto" against the exact M' on a tiny GPT-2 (issue 12, goal 3).

The setting of ``bench_lm_stochastic_sources.py`` (2 layers, width 64, 16
positions, vocabulary 128, N = 256, ``batch_size=16``, float64, one thread),
LIB at ``transformer.h.1`` -> ``transformer.ln_f`` -> logits.  Fits the exact
basis once and ``"auto"`` with three seeds, side by side in one process, and
prints for each section the CPU time (and the speed-up over exact), the rounds
and sources "auto" ran, its own error estimates, and the true top-5 Lambda
error (relative to the largest) and smallest principal cosine against exact.

    python benchmarks/bench_lm_auto_sources.py
"""

import time
import warnings

import numpy as np
import scipy.linalg
import torch
from _gpt2 import random_gpt2

from sklearn_lib import LIBTransformer


def main():
    torch.set_num_threads(1)  # small backward passes: one thread is faster here
    model = random_gpt2(64, 128, 16, seed=0, initializer_range=0.02)
    X = np.random.default_rng(0).integers(0, 128, size=(256, 16))
    common = dict(
        downstream_layers=["transformer.ln_f"],
        output="logits",
        forward_kwargs={"use_cache": False},
        batch_size=16,
        device="cpu",
    )
    LIBTransformer(model, "transformer.h.1", n_stochastic_sources=2, **common).fit(X[:16])
    start = time.process_time()
    exact = LIBTransformer(model, "transformer.h.1", **common).fit(X)
    t_exact = time.process_time() - start
    print(f"exact: {t_exact:.1f} CPU s")
    columns = "seed | section | CPU s (x exact) | rounds | sources | est. error | error"
    print(f"| {columns} | est. cos | cos |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for seed in range(3):
        start = time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a ConvergenceWarning would fail the run
            auto = LIBTransformer(
                model, "transformer.h.1", n_stochastic_sources="auto", random_state=seed, **common
            ).fit(X)
        t_auto = time.process_time() - start
        for name in ("transformer.h.1", "transformer.ln_f"):
            a, b, k = exact.bases_[name], auto.bases_[name], 5
            error = np.max(np.abs(a.lambdas[:k] - b.lambdas[:k])) / a.lambdas[0]
            cosine = np.cos(scipy.linalg.subspace_angles(a.matrix[:, :k], b.matrix[:, :k])).min()
            r = auto.stochastic_rounds_[name]
            print(
                f"| {seed} | {name} | {t_auto:.1f} ({t_exact / t_auto:.1f}x) | {r.rounds} | "
                f"{r.n_sources} | {r.lambda_error:.4f} | {error:.4f} | {r.cosine:.4f} "
                f"| {cosine:.4f} |"
            )


if __name__ == "__main__":
    main()
