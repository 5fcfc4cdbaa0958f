"""Benchmark: exact vs stochastic ``M'`` on a tiny GPT-2, with many output positions.

A random-init 2-layer GPT-2 (width 64, 4 heads, 16 positions, a small
vocabulary) on random token ids.  LIB at ``transformer.h.1`` (the residual
stream entering block 1) with ``transformer.ln_f`` downstream and the logits as
output: two sections, block 1 (``h.1 -> ln_f``) and the unembedding
(``ln_f -> logits``), both on the generic autograd path.

The exact ``M'`` needs one backward pass per output position and next-layer
feature per batch: ``P_out * k_next`` rows (16 * 63 for block 1, 16 * vocab
for the unembedding).  ``n_stochastic_sources=S`` uses ``S`` random +-1
combinations of them per batch instead.  The benchmark fits the exact basis
once and then, side by side in the same process, each ``S`` with several
seeds, and reports

- time (best of the seeds) and the ratio to the exact fit's time;
- the error of Lambda, relative to the exact top Lambda: over the top ``k``
  and over all features (mean and worst of the seeds);
- the smallest principal cosine between the span of the top-``k`` LIB
  directions of the stochastic and of the exact fit: the read-out directions
  (rows of ``components_``, the vectors the features project on) and the
  written directions (rows of ``inverse_components_``, what the features
  reconstruct); also for ``ln_f``, the basis fitted first;
- the spread between seeds (worst pair): top-``k`` Lambda and cosine.

A second table varies the batch size at fixed ``S``: the sources are drawn
anew for every batch, so the estimate averages ``S * n_batches`` draws.

    python benchmarks/bench_lm_stochastic_sources.py [--quick] [--n-samples 256] \
        [--seeds 3] [--sources 4,16,64,256,1024] [--out FILE]
"""

import argparse
import contextlib
import io
import itertools
import math
import sys
import time
import warnings

import numpy as np
import scipy
import torch
from _gpt2 import random_gpt2
from scipy.linalg import subspace_angles

import sklearn_lib
from sklearn_lib import LIBTransformer

LAYER, NEXT = "transformer.h.1", "transformer.ln_f"
POSITIONS, WIDTH = 16, 64


def make_model(vocab, seed=0):
    return random_gpt2(WIDTH, vocab, POSITIONS, seed, initializer_range=0.02)


def min_cosine(a, b):
    """Smallest principal cosine between the column spans of ``a`` and ``b``."""
    return float(np.cos(subspace_angles(a, b)).min())


def compare(fit, ref, k):
    """Lambda errors and subspace cosines of ``fit`` against ``ref`` (fitted estimators)."""
    lam, lam_ref = fit.bases_[LAYER].lambdas, ref.bases_[LAYER].lambdas
    common = min(len(lam), len(lam_ref))
    diff = np.abs(lam[:common] - lam_ref[:common]) / lam_ref[0]

    def cos(layer, part, kk):
        a, b = fit.bases_[layer], ref.bases_[layer]
        if part == "read":  # columns of C = rows of components_
            return min_cosine(a.matrix[:, :kk], b.matrix[:, :kk])
        return min_cosine(a.pinv[:kk].T, b.pinv[:kk].T)  # rows of C+ = inverse_components_

    return {
        "lam_top": float(diff[:k].max()),
        "lam_all": float(diff.max()),
        "read": cos(LAYER, "read", k),
        "write": cos(LAYER, "write", k),
        "read2": cos(LAYER, "read", 2 * k),
        "next": cos(NEXT, "read", k),
    }


def mean_worst(values, worst, digits=3):
    return f"{np.mean(values):.{digits}f} / {worst(values):.{digits}f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of seconds, for a check")
    parser.add_argument("--n-samples", type=int, default=256)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sources", default="4,16,64,256,1024")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=128)
    parser.add_argument("--k", type=int, default=5, help="top-k subspace (also 2k is shown)")
    parser.add_argument(
        "--batch-sizes",
        default="16,64,all",
        help="batch sizes of the second table ('all': one batch of all samples)",
    )
    parser.add_argument("--batch-sources", default="16,64", help="S of the second table")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine two threads made "
        "every small op wait milliseconds for the other thread)",
    )
    parser.add_argument("--out", help="also write the tables to this file")
    args = parser.parse_args()
    if args.quick:
        args.n_samples, args.seeds, args.sources = 16, 2, "4,16"
        args.batch_size, args.vocab, args.batch_sizes, args.batch_sources = 16, 64, "8", "4"
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*bos_token_id.*|.*eos_token_id.*")

    out = io.StringIO()

    def emit(line=""):
        print(line, flush=True)
        out.write(line + "\n")

    model = make_model(args.vocab)
    X = np.random.default_rng(0).integers(0, args.vocab, size=(args.n_samples, POSITIONS))
    common = dict(
        downstream_layers=[NEXT],
        output="logits",
        forward_kwargs={"use_cache": False},
        device="cpu",
        dtype=args.dtype,
    )

    def fit(data=X, batch_size=args.batch_size, **params):
        """Wall and CPU seconds of one fit, and the fitted estimator."""
        wall, cpu = time.perf_counter(), time.process_time()
        lib = LIBTransformer(model, LAYER, batch_size=batch_size, **common, **params).fit(data)
        return (time.perf_counter() - wall, time.process_time() - cpu), lib

    # Warm-up: the first autograd call of a process imports part of torch.
    with contextlib.redirect_stderr(io.StringIO()):
        fit(X[:8], batch_size=8, n_stochastic_sources=2, random_state=0)

    began = time.perf_counter()
    (t_exact, c_exact), exact = fit()
    k = args.k
    n_batches = math.ceil(args.n_samples / args.batch_size)
    k_next = exact.bases_[NEXT].n_components
    rows_block, rows_unembed = POSITIONS * k_next, POSITIONS * args.vocab
    lam = exact.bases_[LAYER].lambdas

    emit(
        f"GPT-2 (random init): 2 layers, width {WIDTH}, 4 heads, {POSITIONS} positions, "
        f"vocab {args.vocab}; LIB at {LAYER!r} -> {NEXT!r} -> logits"
    )
    emit(
        f"N = {args.n_samples} sequences, batch_size = {args.batch_size} ({n_batches} batches), "
        f"{args.dtype}, CPU, torch {torch.__version__} on {args.threads} thread(s), "
        f"{args.seeds} seeds per S; sklearn_lib {sklearn_lib.__version__}, "
        f"scipy {scipy.__version__}"
    )
    emit(
        "seconds: wall clock (best of the seeds) and CPU time of the process (with one "
        "thread, CPU time does not count waiting for a core on a shared machine); "
        "'x exact' is the ratio of CPU times"
    )
    emit(
        "passes over the data per fit: 2 (statistics + M' of ln_f -> logits; M' of "
        "h.1 -> ln_f), plus a probe batch"
    )
    emit(
        f"backward rows per batch: exact {rows_block} (h.1 -> ln_f: {POSITIONS} x {k_next}) + "
        f"{rows_unembed} (ln_f -> logits: {POSITIONS} x {args.vocab}); stochastic S + S"
    )
    top = ", ".join(f"{v:.4g}" for v in lam[: 2 * k + 1])
    emit(
        f"exact Lambda (top {2 * k + 1}): {top}; gaps Lambda_{k}/Lambda_{k + 1} = "
        f"{lam[k - 1] / lam[k]:.3f}, Lambda_{2 * k}/Lambda_{2 * k + 1} = "
        f"{lam[2 * k - 1] / lam[2 * k]:.3f}; {exact.n_components_} features"
    )
    emit()
    emit(
        f"Lambda errors are max |Lambda_S - Lambda_exact| / Lambda_exact[0]; cos is the "
        f"smallest principal cosine of the top-k spans; 'a / b' = mean / worst of {args.seeds} "
        "seeds; seed-to-seed = worst pair of seeds."
    )
    emit()
    emit(
        f"| M' | rows per batch | wall s | CPU s | x exact | Lambda err top-{k} | Lambda err all "
        f"| cos top-{k} (components_) | cos top-{k} (inverse_components_) "
        f"| cos top-{2 * k} (components_) | ln_f cos top-{k} | seed-to-seed Lambda top-{k} "
        f"| seed-to-seed cos top-{k} |"
    )
    emit("| --- " * 13 + "|")
    emit(
        f"| exact | {rows_block} + {rows_unembed} | {t_exact:.1f} | {c_exact:.1f} | 1.0 | 0 | 0 "
        "| 1 | 1 | 1 | 1 | 0 | 1 |"
    )

    done = {}  # (S, batch_size) -> results: the second table reuses the first's

    def run_setting(sources, batch_size):
        if (sources, batch_size) in done:
            return done[sources, batch_size]
        times, scores, fits = [], [], []
        for seed in range(args.seeds):
            seconds, lib = fit(
                batch_size=batch_size, n_stochastic_sources=sources, random_state=seed
            )
            times.append(seconds)
            scores.append(compare(lib, exact, k))
            fits.append(lib)
        pairs = [compare(a, b, k) for a, b in itertools.combinations(fits, 2)]
        spread_lam = max(p["lam_top"] for p in pairs) if pairs else float("nan")
        spread_cos = min(p["read"] for p in pairs) if pairs else float("nan")
        wall, cpu = min(t[0] for t in times), min(t[1] for t in times)
        done[sources, batch_size] = wall, cpu, scores, spread_lam, spread_cos
        return done[sources, batch_size]

    def cells(scores):
        def col(key, worst):
            return mean_worst([s[key] for s in scores], worst)

        return [
            col("lam_top", max),
            col("lam_all", max),
            col("read", min),
            col("write", min),
            col("read2", min),
            col("next", min),
        ]

    for sources in (int(s) for s in args.sources.split(",")):
        t, c, scores, spread_lam, spread_cos = run_setting(sources, args.batch_size)
        row = [f"S = {sources}", f"{sources} + {sources}", f"{t:.1f}", f"{c:.1f}"]
        row += [f"{c_exact / c:.1f}"]
        row += cells(scores) + [f"{spread_lam:.3f}", f"{spread_cos:.3f}"]
        emit("| " + " | ".join(row) + " |")

    batch_sizes = [
        args.n_samples if b == "all" else int(b) for b in args.batch_sizes.split(",") if b
    ]
    if batch_sizes:
        emit()
        emit(
            "Batch size at fixed S (sources are drawn anew per batch: S * n_batches draws "
            "in all; exact fit as above)"
        )
        emit()
        emit(
            f"| S | batch_size | n_batches | S x n_batches | wall s | CPU s | x exact "
            f"| Lambda err top-{k} | Lambda err all | cos top-{k} (components_) "
            f"| cos top-{k} (inverse_components_) | cos top-{2 * k} (components_) "
            f"| ln_f cos top-{k} |"
        )
        emit("| --- " * 13 + "|")
        for sources in (int(s) for s in args.batch_sources.split(",")):
            for batch_size in batch_sizes:
                t, c, scores, _, _ = run_setting(sources, batch_size)
                nb = math.ceil(args.n_samples / batch_size)
                row = [str(sources), str(batch_size), str(nb), str(sources * nb)]
                row += [f"{t:.1f}", f"{c:.1f}", f"{c_exact / c:.1f}", *cells(scores)]
                emit("| " + " | ".join(row) + " |")

    emit()
    emit(f"whole benchmark after the warm-up: {time.perf_counter() - began:.0f} s wall")
    if args.out:
        with open(args.out, "w") as file:
            file.write(out.getvalue())
        print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
