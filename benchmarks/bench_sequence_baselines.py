"""Benchmark: which PCA is LIB's baseline on a sequence layer, measured side by side.

On a small random GPT-2 (``transformers``, nothing downloaded), the
faithfulness R² of the logits (``ablation_curve``'s default score, pooled
over real tokens) when only the top ``k`` features of the residual stream
entering block 1 are kept, for

- ``LIBTransformer(basis="lib")``;
- ``LIBTransformer(basis="pca")``: the position-shared PCA, one basis of
  the ``d`` residual dimensions for every token, fitted on ``n * T`` rows,
  as LIB's basis is (the fair baseline);
- ``Pipeline([ActivationTransformer, PCA])``: scikit-learn's PCA of each
  sequence flattened into one ``T * d`` vector (``k`` components for the
  whole sequence, not per token).

The third keeps ``k`` numbers per *sequence*, the first two ``k`` per
*token* (``T * k`` per sequence): the flattened PCA is a different
decomposition, and its R² is not comparable with LIB's.  Its last row gives
it ``T * k`` components, as many numbers per sequence as the others keep.

    python benchmarks/bench_sequence_baselines.py [--n 512] [--T 16] [--width 64]
"""

import argparse
import time
import warnings

import numpy as np
from _gpt2 import random_gpt2
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline

from sklearn_lib import ActivationTransformer, LIBTransformer, ablation_curve


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="sequences (fit and score)")
    parser.add_argument("--T", type=int, default=16, help="tokens per sequence")
    parser.add_argument("--width", type=int, default=64, help="n_embd")
    parser.add_argument("--vocab", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = random_gpt2(args.width, args.vocab, args.T, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    X = rng.integers(0, args.vocab, size=(args.n, args.T))
    layer, ks = "transformer.h.1", [1, 4, 16]
    common = {"output": "logits", "forward_kwargs": {"use_cache": False}}
    start = time.perf_counter()
    estimators = {
        "LIB": LIBTransformer(model, layer, n_stochastic_sources=8, random_state=0, **common),
        "position-shared PCA (basis='pca')": LIBTransformer(model, layer, basis="pca", **common),
        "flattened PCA (ActivationTransformer + PCA)": Pipeline(
            [("act", ActivationTransformer(model, layer, **common)), ("pca", PCA())]
        ),
    }
    rows = {}
    for name, estimator in estimators.items():
        estimator.fit(X)
        with warnings.catch_warnings():  # the flattened PCA warns that it is not comparable
            warnings.simplefilter("ignore")
            _, scores = ablation_curve(estimator, X, n_features=ks, layer=None)
            rows[name] = scores
            if name.startswith("flattened"):
                # As many numbers per sequence as the per-token bases keep: T * k.
                _, scores = ablation_curve(
                    estimator, X, n_features=[args.T * k for k in ks], layer=None
                )
                rows[f"  the same with T * k = {', '.join(str(args.T * k) for k in ks)}"] = scores
    print(
        f"GPT-2 (2 layers, width {args.width}, random init), {args.n} random sequences of "
        f"{args.T} tokens; R² of the logits with the top k features of {layer!r} kept "
        f"({time.perf_counter() - start:.0f}s):"
    )
    print(f"  {'':46s}" + "".join(f"k={k:<8d}" for k in ks))
    for name, scores in rows.items():
        print(f"  {name:46s}" + "".join(f"{s:<10.3f}" for s in scores))


if __name__ == "__main__":
    main()
