"""Benchmark: what the stale-basis check costs every call, against the private copy it sits beside.

Every call fingerprints the user's model (exact SHA-256 digests of every
tensor's bytes in its own dtype, and of every module's class and plain
attributes; ``sklearn_lib/_model/fingerprint.py``) and makes a private copy
of it in the compute dtype.  Side by side in one process, best of
``--repeats``, on a model of ``--millions`` million float32 parameters
(square linear layers of width ``--width``, with a tanh between them) and
on a Hugging Face GPT-2 of 124M parameters built from its config (random
weights; skipped without ``transformers``):

- the fingerprint;
- the private copy in float32 and in float64 (what every call already paid).

    python benchmarks/bench_fingerprint.py
"""

import argparse
import time

import torch
from torch import nn

from sklearn_lib._model.fingerprint import fingerprint
from sklearn_lib._model.session import private_copy


def best(fn, repeats):
    """The best of ``repeats`` wall times of ``fn()``, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def square_mlp(millions, width):
    """Linear layers of ``width``, as many as make about ``millions`` million parameters."""
    layers = max(1, round(millions * 1e6 / (width * width + width)))
    blocks = []
    for _ in range(layers):
        blocks += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*blocks)


def gpt2_small():
    """GPT-2 small's shape with random weights, or None without ``transformers``."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    return GPT2LMHeadModel(GPT2Config()).eval()


def report(name, model, repeats):
    n = sum(p.numel() for p in model.parameters())
    digest = best(lambda: fingerprint(model), repeats)
    copy32 = best(lambda: private_copy(model, "cpu", torch.float32), repeats)
    copy64 = best(lambda: private_copy(model, "cpu", torch.float64), repeats)
    print(
        f"| {name} | {n / 1e6:.1f}M | {digest:.3f} s | {copy32:.3f} s | {copy64:.3f} s "
        f"| {digest / copy32:.2f}x | {digest / copy64:.2f}x |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--millions", type=float, default=100.0)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    print(
        "| model | parameters | fingerprint | copy, float32 | copy, float64 | / copy32 | / copy64 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with torch.no_grad():
        report("square MLP, float32", square_mlp(args.millions, args.width), args.repeats)
        model = gpt2_small()
        if model is not None:
            report("GPT-2 small (HF, random)", model, args.repeats)


if __name__ == "__main__":
    main()
