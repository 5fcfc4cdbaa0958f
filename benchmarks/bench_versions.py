"""Benchmark: this checkout against another version of the package, side by side.

Copies the other version's ``sklearn_lib`` folder into a temporary folder as
``sklearn_lib_other``, imports both in one process, and times the same work
with each in turns (the order alternating), best of ``--repeat`` after one
warm-up run each.  For checking that a change keeps (or improves) speed:

    git worktree add /tmp/before HEAD~3
    python benchmarks/bench_versions.py --other /tmp/before [--device cuda] [--repeat 3]

Needs the paper's checkpoints (``$SKLEARN_LIB_CHECKPOINTS``).  Versions
before the ``jacobian`` parameter took the hidden ``_structured`` flag
instead; both are handled.
"""

import argparse
import inspect
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

import sklearn_lib as this
from sklearn_lib.datasets import make_modular_addition
from sklearn_lib.models import ImageMLP, load_modular_addition

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_user_transformer import user_model  # noqa: E402

LAYERS = ["blocks.0.attn", "blocks.0.mlp", "unembed"]


def import_other(path):
    """The other version's package, imported as ``sklearn_lib_other``."""
    folder = tempfile.mkdtemp()
    shutil.copytree(
        os.path.join(path, "sklearn_lib"),
        os.path.join(folder, "sklearn_lib_other"),
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    sys.path.insert(0, folder)
    import sklearn_lib_other

    return sklearn_lib_other


def estimator(pkg, model, layer, downstream, autograd, **params):
    if "jacobian" in inspect.signature(pkg.LIBTransformer).parameters:
        params["jacobian"] = "autograd" if autograd else "auto"
        return pkg.LIBTransformer(model, layer, downstream_layers=downstream, **params)
    lib = pkg.LIBTransformer(model, layer, downstream_layers=downstream, **params)
    lib._structured = not autograd
    return lib


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", required=True, help="checkout of the other version")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    other = import_other(args.other)
    device = args.device
    model = load_modular_addition(0)
    X = make_modular_addition()[0]
    torch.manual_seed(0)
    mlp = ImageMLP((784,), (512, 512), 10).eval()
    X_mlp = np.random.default_rng(0).normal(size=(20_000, 784)).astype(np.float32)

    def modadd(pkg, autograd, n):
        lib = estimator(pkg, model, LAYERS[0], LAYERS[1:], autograd, device=device)
        lib.fit(X[:n]).interaction_graph(X[:n])

    # The same architecture as a user's own class: residual MLP formula, affine
    # unembedding and autograd attention (the generic routes).
    user = user_model(0)

    def user_fit(pkg, n):
        lib = estimator(pkg, user, LAYERS[0], LAYERS[1:], False, device=device)
        lib.set_params(compute_graph=True).fit(X[:n])

    def mlp_fit(pkg):
        lib = estimator(pkg, mlp, "fc1", ["fc2", "out"], False, device=device, dtype="float32")
        lib.set_params(batch_size=2048).fit(X_mlp)

    def mlp_transform(pkg):
        lib = estimator(pkg, mlp, "fc2", ["out"], False, device=device).fit(X_mlp[:512])
        for _ in range(5):
            lib.transform(X_mlp)

    cases = {
        "paper model, closed forms, fit + graph (N=3830)": lambda p: modadd(p, False, len(X)),
        "paper model, autograd, fit + graph (N=1024)": lambda p: modadd(p, True, 1024),
        "user's transformer, default routes, fit + graph (N=1024)": lambda p: user_fit(p, 1024),
        "784-512-512-10 MLP fit, float32, N=20000": mlp_fit,
        "MLP transform x5, N=20000": mlp_transform,
    }

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    print(f"device {device}, torch threads {torch.get_num_threads()}, best of {args.repeat}")
    print("| work | other (s) | this (s) | this / other |\n| --- | --- | --- | --- |")
    for name, work in cases.items():
        times = {other: [], this: []}
        for pkg in (other, this):
            work(pkg)  # warm-up: lazy imports, caches
        for i in range(args.repeat):
            for pkg in (other, this) if i % 2 == 0 else (this, other):
                sync()
                start = time.perf_counter()
                work(pkg)
                sync()
                times[pkg].append(time.perf_counter() - start)
        a, b = min(times[other]), min(times[this])
        print(f"| {name} | {a:.2f} | {b:.2f} | {b / a:.2f} |", flush=True)


if __name__ == "__main__":
    main()
