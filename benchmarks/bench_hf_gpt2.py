"""Benchmark: a Hugging Face GPT-2's blocks by the traced section (torch.export) vs the loop.

Goal (issue 22): a tiny random ``GPT2LMHeadModel`` (2 layers, width 64, 16
positions; ``transformers``, nothing downloaded), exact ``M'`` at
``transformer.h.0``, ``transformer.h.1`` and ``transformer.ln_f`` -> logits,
at least 5x the per-output loop, with Lambda equal to 1e-9.

The per-output loop is ``jacobian="autograd"``: one backward pass per
output row (each output position and next feature), for the whole batch at
once, as the paper's code does.  The default route (``jacobian="auto"``)
takes the blocks through the traced section's products (the model is
exported with ``torch.export``, fx cannot trace it) and the unembedding
through the final linear map's factor.  Both fit side by side, best of
``--repeat``, after one warm-up fit each; their Lambdas are compared first.
The export's one-time cost is timed apart: the first export in the process
(with torch's imports) and a second one.

    python benchmarks/bench_hf_gpt2.py [--n 256] [--vocab 500] [--attention eager|sdpa]
"""

import argparse
import time

import numpy as np
import torch
from _gpt2 import random_gpt2

from sklearn_lib import LIBTransformer

LAYERS = ["transformer.h.0", "transformer.h.1", "transformer.ln_f"]


def fit(model, X, jacobian, dtype, batch_size):
    common = {"output": "logits", "forward_kwargs": {"use_cache": False}, "dtype": dtype}
    lib = LIBTransformer(
        model, LAYERS[0], downstream_layers=LAYERS[1:], jacobian=jacobian,
        batch_size=batch_size, **common,
    )  # fmt: skip
    start = time.perf_counter()
    lib.fit(X)
    return time.perf_counter() - start, [lib.bases_[name].lambdas for name in LAYERS]


def export_seconds(model, X):
    ids = torch.as_tensor(X[:16])
    start = time.perf_counter()
    torch.export.export(model, (), {"input_ids": ids, "use_cache": False}, strict=False)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=500)
    parser.add_argument("--width", type=int, default=64, help="n_embd")
    parser.add_argument("--T", type=int, default=16, help="positions")
    parser.add_argument("--n", type=int, default=256, help="sequences")
    parser.add_argument("--batch-size", default="auto")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--attention", default="eager", choices=["eager", "sdpa"])
    args = parser.parse_args()
    batch = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    model = random_gpt2(args.width, args.vocab, args.T)
    model.config._attn_implementation = args.attention
    X = np.random.default_rng(0).integers(0, args.vocab, size=(args.n, args.T))
    first, second = export_seconds(model, X), export_seconds(model, X)
    best, lambdas = {}, {}
    for jacobian in ("autograd", "auto"):
        fit(model, X[:32], jacobian, args.dtype, batch)  # warm-up
    for _ in range(args.repeat):
        for jacobian in ("autograd", "auto"):
            seconds, lambdas[jacobian] = fit(model, X, jacobian, args.dtype, batch)
            best[jacobian] = min(best.get(jacobian, np.inf), seconds)
    error = max(np.abs(a - b).max() / b[0] for a, b in zip(lambdas["auto"], lambdas["autograd"]))
    tolerance = 1e-9 if args.dtype == "float64" else 1e-5
    assert error < tolerance, f"Lambda differs by {error:.1e}"
    print(
        f"GPT-2 (2 layers, width {args.width}, {args.attention} attention, vocabulary "
        f"{args.vocab}, {args.T} positions), {args.n} sequences, {args.dtype}, exact M' at "
        f"{', '.join(LAYERS)} -> logits, {torch.get_num_threads()} torch threads, "
        f"best of {args.repeat}"
    )
    print(f"  the per-output loop (jacobian='autograd')  {best['autograd']:8.2f} s")
    print(f"  the default route (traced blocks)           {best['auto']:8.2f} s")
    print(f"  ratio {best['autograd'] / best['auto']:.1f}x; Lambda differs by {error:.1e}")
    print(f"  torch.export of the model: {first:.2f} s first in the process, {second:.2f} s again")


if __name__ == "__main__":
    main()
