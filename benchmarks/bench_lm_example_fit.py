"""Benchmark: the language-model example's fit, LIB against PCA, and where LIB's time goes.

The example's model shape (``examples/plot_language_model.py``: a GPT-2 of
2 layers, width 128, 4 heads, 97 characters, 64 positions), random weights
(the cost does not depend on them), 1,024 sequences of 16 to 64 random
tokens in Hugging Face's default batches of 128 (``DataCollatorWithPadding``),
float32, nodes ``h.0``, ``h.1`` and ``ln_f``.  Side by side in one process,
best of ``--repeats``:

- PCA (``basis="pca"``) and LIB with ``n_stochastic_sources=--sources``;
- LIB's setup (everything before the plan is said: the probe, the traces,
  the route checks, the pricing) and its passes, from the verbose
  timestamps.

    python benchmarks/bench_lm_example_fit.py
"""

import argparse
import contextlib
import io
import re
import time

import numpy as np
import torch
from _gpt2 import random_gpt2

from sklearn_lib import LIBTransformer


def loader(n, positions, vocab, seed=0):
    """``n`` sequences of ``positions / 4`` to ``positions`` random tokens, padded per batch."""
    from tokenizers import Tokenizer, models
    from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0}, unk_token="<pad>")),
        pad_token="<pad>",
    )
    rng = np.random.default_rng(seed)
    lengths = rng.integers(positions // 4, positions + 1, size=n)
    features = [
        {"input_ids": rng.integers(1, vocab, size=k).tolist(), "attention_mask": [1] * k}
        for k in lengths
    ]
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    return torch.utils.data.DataLoader(features, batch_size=128, collate_fn=collate)


def timed_fit(model, X, layers, basis, sources):
    """Seconds of the fit, and of its setup (the plan's timestamp), from verbose lines."""
    lib = LIBTransformer(
        model, layers[0], downstream_layers=layers[1:], output="logits",
        forward_kwargs={"use_cache": False}, dtype="float32", random_state=0,
        basis=basis, n_stochastic_sources=sources, verbose=True,
    )  # fmt: skip
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err):
        lib.fit(X)
    seconds = time.perf_counter() - start
    plan = re.search(r"\[LIBTransformer\]\s+([\d.]+)s fitting runs", err.getvalue())
    return seconds, float(plan.group(1)) if plan else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024, help="sequences")
    parser.add_argument("--sources", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = random_gpt2(128, 97, 64, initializer_range=0.02, n_layer=2, n_head=4)
    X = loader(args.n, 64, 97)
    layers = ["transformer.h.0", "transformer.h.1", "transformer.ln_f"]
    best = {}
    for _ in range(args.repeats):
        for basis, sources in (("pca", None), ("lib", args.sources)):
            seconds, setup = timed_fit(model, X, layers, basis, sources)
            if basis not in best or seconds < best[basis][0]:
                best[basis] = (seconds, setup)
    (pca, pca_setup), (lib, lib_setup) = best["pca"], best["lib"]
    print(f"{args.n} sequences, batches of 128, {torch.get_num_threads()} threads, best of "
          f"{args.repeats}")  # fmt: skip
    print(f"  PCA                {pca:6.2f} s (setup {pca_setup:5.2f} s)")
    print(f"  LIB, S={args.sources:<3d}         {lib:6.2f} s (setup {lib_setup:5.2f} s, "
          f"passes {lib - lib_setup:5.2f} s)")  # fmt: skip
    print(f"  ratio LIB / PCA    {lib / pca:6.2f}x (passes alone {(lib - lib_setup) / pca:.2f}x)")


if __name__ == "__main__":
    main()
