"""Benchmark: a language model's last section, all of autograd's rows vs the final map's factor.

The section from the final LayerNorm to the logits of a random GPT-2
(``transformers``, nothing downloaded) ends in ``lm_head``, a linear map of
``n_embd`` inputs to ``vocab_size`` logits.  The exact ``M'`` takes one
backward row per position and logit on the autograd route
(``jacobian="autograd"``), and one per position and input of the map on the
default route (``jacobian="auto"``, the factor of ``A C C^T A^T``, see
``sklearn_lib/_routes/forms/final_linear.py``).  Both fits run side by side,
best of ``--repeat``, and their Lambdas are compared first.

    python benchmarks/bench_final_linear.py [--vocab 500] [--width 64] [--T 16] [--n 64]
"""

import argparse
import time

import numpy as np
from _gpt2 import random_gpt2

from sklearn_lib import LIBTransformer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=500)
    parser.add_argument("--width", type=int, default=64, help="n_embd")
    parser.add_argument("--T", type=int, default=16, help="positions")
    parser.add_argument("--n", type=int, default=64, help="sequences")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dtype", default="float64")
    args = parser.parse_args()
    model = random_gpt2(args.width, args.vocab, args.T)
    X = np.random.default_rng(0).integers(0, args.vocab, size=(args.n, args.T))
    common = {"output": "logits", "forward_kwargs": {"use_cache": False}, "dtype": args.dtype}
    best, lambdas = {}, {}
    for _ in range(args.repeat):
        for jacobian in ("autograd", "auto"):
            start = time.perf_counter()
            lib = LIBTransformer(model, "transformer.ln_f", jacobian=jacobian, **common).fit(X)
            seconds = time.perf_counter() - start
            best[jacobian] = min(best.get(jacobian, np.inf), seconds)
            lambdas[jacobian] = lib.lambdas_
    error = np.abs(lambdas["auto"] - lambdas["autograd"]).max() / lambdas["autograd"][0]
    print(
        f"GPT-2 (2 layers, width {args.width}, vocabulary {args.vocab}, {args.T} positions), "
        f"{args.n} sequences, {args.dtype}: the fit of 'transformer.ln_f' -> logits, exact M', "
        f"best of {args.repeat}"
    )
    print(f"  all rows (autograd, {args.T * args.vocab:,} per batch)  {best['autograd']:8.2f} s")
    print(f"  the factor's rows ({args.T * args.width:,} per batch)   {best['auto']:8.2f} s")
    print(f"  ratio {best['autograd'] / best['auto']:.1f}x; Lambda differs by {error:.1e}")


if __name__ == "__main__":
    main()
