"""Benchmark: more accuracy per backward row? Each lever against plain sign sources, at equal cost.

Issue 23, item 2.  The setting of ``bench_lm_auto_sources.py`` (a tiny GPT-2:
2 layers, width 64, 16 positions, vocabulary 128, N = 256, batch 16, float64,
one thread), LIB at ``transformer.h.1`` -> ``transformer.ln_f`` -> logits.
Only the section ``h.1 -> ln_f`` is estimated; ``ln_f``'s own basis is
exact, so every difference from the exact fit is the estimator's.  Each
estimator spends ``R`` backward rows per sample and pass (the closed-form
route's rows, drawn for each sample apart), as a fit with
``n_stochastic_sources=R`` does; each is run ``--repeats`` times with new
draws, and the table gives, against the exact fit of ``h.1``:

- the top-5 Lambda error (relative to the largest), mean and worst;
- the smallest principal cosine of the top features' subspace (5, grown past
  Lambdas within 10%), mean and worst;
- the seconds per fit.

The estimators (each a set of cotangent rows ``(R, n, P, k)`` over output
positions ``P`` and next features ``k``, weighted so that the estimate is
unbiased):

- ``signs``: ``R`` random +-1 combinations of all ``P k`` rows (the package's);
- ``orthogonal``: ``R`` orthonormal combinations (scaled by ``sqrt(P k)``),
  each sample's own: ``S = P k`` rows would be exact;
- ``positions``: the paper's code: ``R / k`` random +-1 combinations of
  positions, each for every next feature exactly (``k`` rows each);
- ``top j``: the exact rows of the ``j`` top next features (``P j`` rows),
  signs for the rest (``R - P j``): the next basis scales its features by
  their importance, so the top ones carry most of ``M'``.

    python benchmarks/bench_source_levers.py [--rows 64,256] [--repeats 6]
"""

import argparse
import time
import warnings

import numpy as np
import scipy.linalg
import torch
from _gpt2 import random_gpt2

from sklearn_lib import LIBTransformer
from sklearn_lib._core.identity import Identity
from sklearn_lib._fitting import jacobian_gram
from sklearn_lib._fitting.stochastic import _gapped_top
from sklearn_lib._routes.cotangents import Cotangents

LAYER, NEXT = "transformer.h.1", "transformer.ln_f"


def _weighted(rows, weights):
    """Rows ``(R, n, P, k)`` scaled so that ``scale = 1 / R`` of :class:`Cotangents`
    gives each its ``weights`` (``R``: exact rows 1, sources 1 / their count)."""
    return rows * torch.sqrt(torch.as_tensor(weights, dtype=rows.dtype) * rows.shape[0]).view(
        -1, 1, 1, 1
    )


def signs(n_rows, n, P, k, generator):
    r = torch.randint(0, 2, (n_rows, n, P, k), generator=generator).to(torch.float64) * 2 - 1
    return _weighted(r, [1 / n_rows] * n_rows)


def orthogonal(n_rows, n, P, k, generator):
    g = torch.randn(n, P * k, n_rows, generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(g)  # (n, P k, R), orthonormal columns per sample
    rows = (q * np.sqrt(P * k)).permute(2, 0, 1).reshape(n_rows, n, P, k)
    return _weighted(rows, [1 / n_rows] * n_rows)


def positions(n_rows, n, P, k, generator):
    n_sources = n_rows // k
    r = torch.randint(0, 2, (n_sources, n, P), generator=generator).to(torch.float64) * 2 - 1
    # Source s, feature i: r_s at every position, feature i alone.
    rows = r[:, None, :, :, None] * torch.eye(k, dtype=torch.float64)[None, :, None, None, :]
    rows = rows.reshape(n_sources * k, n, P, k)
    return _weighted(rows, [1 / n_sources] * len(rows))


def top(j):
    def top_j(n_rows, n, P, k, generator):
        n_exact, n_sources = P * j, n_rows - P * j
        exact = torch.zeros(n_exact, n, P, k, dtype=torch.float64)
        for t in range(P):
            for i in range(j):
                exact[t * j + i, :, t, i] = 1
        r = torch.randint(0, 2, (n_sources, n, P, k - j), generator=generator) * 2 - 1
        tail = torch.zeros(n_sources, n, P, k, dtype=torch.float64)
        tail[..., j:] = r.to(torch.float64)
        rows = torch.cat([exact, tail])
        return _weighted(rows, [1.0] * n_exact + [1 / n_sources] * n_sources)

    top_j.__name__ = f"top {j}"
    return top_j


def patched(estimator, n_rows):
    """``m_prime_sources`` for the fit: ``estimator``'s rows on ``h.1 -> ln_f``, exact on
    the unembedding (whose next basis is the output's identity)."""

    def sources(exact, n_sources, generator, n_samples=None, features=None):
        if isinstance(exact.matrix, Identity):
            return exact
        P, k = exact.n_positions, exact.matrix.shape[1]
        rows = estimator(n_rows, n_samples, P, k, generator)
        return Cotangents(exact.matrix, P, rows.to(exact.matrix.dtype))

    return sources


def errors(reference, fitted):
    a, b = reference.bases_[LAYER], fitted.bases_[LAYER]
    lam = np.max(np.abs(a.lambdas[:5] - b.lambdas[:5])) / a.lambdas[0]
    c = _gapped_top(a.lambdas[: a.n_components], 0.0)
    cos = np.cos(scipy.linalg.subspace_angles(a.matrix[:, :c], b.matrix[:, :c])).min()
    return lam, cos


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="64,256", help="backward rows per sample and pass")
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = random_gpt2(64, 128, 16, seed=0, initializer_range=0.02)
    X = np.random.default_rng(0).integers(0, 128, size=(256, 16))
    common = dict(
        downstream_layers=[NEXT],
        output="logits",
        forward_kwargs={"use_cache": False},
        batch_size=16,
        device="cpu",
    )
    exact = LIBTransformer(model, LAYER, **common).fit(X)
    k = exact.bases_[NEXT].n_components
    print(f"next node's kept features k = {k}, positions P = 16: {16 * k:,} exact rows")
    print("| rows | estimator | Lambda err mean | worst | cosine mean | worst | s per fit |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    original = jacobian_gram.m_prime_sources
    for n_rows in map(int, args.rows.split(",")):
        levers = [signs, orthogonal, positions, top(1), top(2), top(4)]
        for estimator in levers:
            if (
                estimator is positions
                and n_rows < k
                or "top" in estimator.__name__
                and (16 * int(estimator.__name__.split()[1]) >= n_rows)
            ):
                continue
            jacobian_gram.m_prime_sources = patched(estimator, n_rows)
            found, start = [], time.perf_counter()
            for seed in range(args.repeats):
                lib = LIBTransformer(
                    model, LAYER, n_stochastic_sources=n_rows, random_state=seed, **common
                )
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    found.append(errors(exact, lib.fit(X)))
            seconds = (time.perf_counter() - start) / args.repeats
            lam, cos = np.array(found).T
            print(
                f"| {n_rows} | {estimator.__name__} | {lam.mean():.4f} | {lam.max():.4f} | "
                f"{cos.mean():.4f} | {cos.min():.4f} | {seconds:.1f} |",
                flush=True,
            )
    jacobian_gram.m_prime_sources = original


if __name__ == "__main__":
    main()
