"""Benchmark: n_stochastic_sources="auto" against the exact M' on a tiny GPT-2 (issue 12, goal 3).

The setting of ``bench_lm_stochastic_sources.py`` (2 layers, width 64, 16
positions, vocabulary 128, N = 256, ``batch_size=16``, float64, one thread),
LIB at ``transformer.h.1`` -> ``transformer.ln_f`` -> logits.  Fits the exact
basis once and ``"auto"`` with three seeds, side by side in one process, and
prints for each section the CPU time (and the speed-up over exact), the rounds
and sources "auto" ran, its own error estimates, and the true top-5 Lambda
error (relative to the largest) and smallest principal cosine against exact
(of the top features as the estimate counts them: 5, grown past Lambdas
within 10% of each other), then, per node, how the measured errors compare
with the estimates.  ``--first transformer.h.0`` fits a chain of three
sections, whose earlier nodes inherit the later ones' errors.

    python benchmarks/bench_lm_auto_sources.py
"""

import argparse
import time
import warnings

import numpy as np
import scipy.linalg
import torch
from _gpt2 import random_gpt2

from sklearn_lib import LIBTransformer
from sklearn_lib._fitting.stochastic import _gapped_top


def sine(cosine):
    """The sine of an angle given by its cosine (0 where it rounds above 1)."""
    return float(np.sqrt(max(0.0, 1 - cosine**2))) or np.finfo(float).tiny


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="auto fits, one per seed")
    parser.add_argument(
        "--first", default="transformer.h.1", help="the first node layer (h.0: a chain of 3)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # small backward passes: one thread is faster here
    model = random_gpt2(64, 128, 16, seed=0, initializer_range=0.02)
    X = np.random.default_rng(0).integers(0, 128, size=(256, 16))
    nodes = ["transformer.h.0", "transformer.h.1", "transformer.ln_f"]
    nodes = nodes[nodes.index(args.first) :]
    common = dict(
        downstream_layers=nodes[1:],
        output="logits",
        forward_kwargs={"use_cache": False},
        batch_size=16,
        device="cpu",
    )
    LIBTransformer(model, nodes[0], n_stochastic_sources=2, **common).fit(X[:16])
    start = time.process_time()
    exact = LIBTransformer(model, nodes[0], **common).fit(X)
    t_exact = time.process_time() - start
    print(f"exact: {t_exact:.1f} CPU s")
    columns = "seed | section | CPU s (x exact) | rounds | sources | est. error | error"
    print(f"| {columns} | est. cos | cos |")
    ratios = {}
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for seed in range(args.seeds):
        start = time.process_time()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            auto = LIBTransformer(
                model, nodes[0], n_stochastic_sources="auto", random_state=seed, **common
            ).fit(X)
        t_auto = time.process_time() - start
        for name in nodes:
            a, b, k = exact.bases_[name], auto.bases_[name], 5
            error = np.max(np.abs(a.lambdas[:k] - b.lambdas[:k])) / a.lambdas[0]
            # The subspace at the estimate's own cut: 5, grown past Lambdas within 10%.
            c = _gapped_top(a.lambdas[: a.n_components], 0.0)
            cosine = np.cos(scipy.linalg.subspace_angles(a.matrix[:, :c], b.matrix[:, :c])).min()
            r = auto.stochastic_rounds_.get(name)
            if r is None:  # exact: its M' took no rounds (the final map: 64 rows)
                print(
                    f"| {seed} | {name} | {t_auto:.1f} ({t_exact / t_auto:.1f}x) | exact | - | "
                    f"0 | {error:.4f} | 1 | {cosine:.4f} |"
                )
                continue
            print(
                f"| {seed} | {name} | {t_auto:.1f} ({t_exact / t_auto:.1f}x) | {r.rounds} | "
                f"{r.n_sources} | {r.lambda_error:.4f} | {error:.4f} | {r.cosine:.4f} "
                f"| {cosine:.4f} |"
            )
            ratios.setdefault(name, []).append(
                (error / r.lambda_error, sine(cosine) / sine(r.cosine))
            )
        for w in caught:
            print(f"  seed {seed}: {w.category.__name__}: {w.message}")
    print(
        "\nmeasured / estimated, over the seeds (smallest, median, largest): "
        "a good estimate is near 1, within a factor of 2"
    )
    for name, pairs in ratios.items():
        lam, ang = np.array(pairs).T
        print(
            f"  {name}: Lambda error {lam.min():.2f}, {np.median(lam):.2f}, {lam.max():.2f}; "
            f"sine of the top-5 angle {ang.min():.2f}, {np.median(ang):.2f}, {ang.max():.2f}"
        )


if __name__ == "__main__":
    main()
