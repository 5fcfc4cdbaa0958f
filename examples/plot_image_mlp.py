"""
LIB vs PCA in an image MLP
==========================

The paper's image-MLP experiment on scikit-learn's bundled 8x8 digits
(nothing is downloaded): train a small ReLU MLP, fit LIB and the PCA baseline
at the input of every Linear layer, compare the test accuracy when only the
top ``k`` features of a layer are kept, count the features and edges each
needs, draw LIB's interaction graph, and write a feature dashboard of LIB's
features (an offline HTML page: image tiles, edges, single-feature ablation).

``--dataset cifar10 --data-dir DIR`` runs the same on CIFAR-10 through
torchvision where both are available (the data must already be in ``DIR``).

Run ``python examples/plot_image_mlp.py`` (under a minute on a laptop CPU;
``--smoke`` for seconds).
"""

# %%
# Data and model.
import argparse
import os
import sys
import time

import numpy as np
from sklearn.model_selection import train_test_split

from sklearn_lib import (
    AblationCurveDisplay,
    FeatureDashboard,
    InteractionGraphDisplay,
    LIBTransformer,
    SpectrumDisplay,
    edges_needed,
    features_needed,
)
from sklearn_lib.datasets import load_digit_images
from sklearn_lib.models import accuracy, train_image_mlp

parser = argparse.ArgumentParser()
parser.add_argument("--dataset", choices=["digits", "cifar10"], default="digits")
parser.add_argument("--data-dir", default="data")
parser.add_argument("--smoke", action="store_true", help="tiny run for the tests")
parser.add_argument("--output-dir", default="figures")
parser.add_argument("--tolerance", type=float, default=0.01, help="accuracy tolerance")
args = parser.parse_args()  # an unknown flag is an error, not ignored
if args.smoke:  # the gallery's pages come from smoke runs: say so where the numbers are
    print(
        "SMOKE RUN (--smoke): a tiny version of this example, to show that it runs; "
        "its numbers and figures are not results (run it without --smoke for those).\n"
    )
os.makedirs(args.output_dir, exist_ok=True)


def load_cifar10(root):
    """CIFAR-10 from ``root`` via torchvision (no download), as float arrays."""
    try:
        from torchvision.datasets import CIFAR10
    except ImportError:
        sys.exit("CIFAR-10 needs torchvision (pip install torchvision); use --dataset digits")
    try:
        train, test = (CIFAR10(root, train=t, download=False) for t in (True, False))
    except RuntimeError as exc:
        sys.exit(f"CIFAR-10 is not in {root!r} ({exc}); this example does not download it")
    to_x = lambda d: (np.asarray(d.data, dtype=np.float32) / 255).transpose(0, 3, 1, 2)  # noqa: E731
    return to_x(train), to_x(test), np.asarray(train.targets), np.asarray(test.targets)


if args.dataset == "cifar10":
    X_train, X_test, y_train, y_test = load_cifar10(args.data_dir)
    hidden, epochs = (256, 256), 200
else:
    X, y = load_digit_images()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
    hidden, epochs = (64, 64), 500
if args.smoke:
    X_train, y_train, X_test, y_test = X_train[:300], y_train[:300], X_test[:200], y_test[:200]
    epochs = 50

model, _ = train_image_mlp(X_train, y_train, hidden=hidden, epochs=epochs)
baseline = accuracy(model, X_test, y_test)
layers = model.node_layers  # ["fc1", "fc2", ..., "out"]: inputs of the Linear layers
print(f"{args.dataset}: MLP {hidden}, test accuracy {baseline:.4f}; node layers {layers}")

# %%
# LIB and PCA on every node layer (one fit each: bases run backwards from the output).
fits = {
    basis: LIBTransformer(model, layers[0], downstream_layers=layers[1:], basis=basis).fit(X_train)
    for basis in ("lib", "pca")
}
print(f"\nFeatures needed (test accuracy within {args.tolerance} of all features), LIB vs PCA:")
for layer in layers:
    a, b = (
        features_needed(fits[basis], X_test, y_test, tolerance=args.tolerance, layer=layer)
        for basis in ("lib", "pca")
    )
    lib_cell = f"LIB {a.n_needed:3d} of {a.n_total:3d}"
    print(f"  {layer:5s} {lib_cell}   PCA {b.n_needed:3d} of {b.n_total:3d}")

graphs = {basis: est.interaction_graph(X_train) for basis, est in fits.items()}
edges = {
    basis.upper(): edges_needed(est, graphs[basis], X_test, y_test, tolerance=args.tolerance)
    for basis, est in fits.items()
}
print("\nEdges needed per section, LIB vs PCA:")
for section in graphs["lib"].sections:
    a, b = edges["LIB"][section], edges["PCA"][section]
    print(
        f"  {section[0]:>5s} -> {section[1]:6s} LIB {a.n_needed:5d} of {a.n_total:5d}"
        f"   PCA {b.n_needed:5d} of {b.n_total:5d}"
    )

# %%
# A feature dashboard of LIB's features at every node layer, in one offline HTML
# file (``image_mlp_digits_dashboard.html`` in ``--output-dir``): for each of the 16
# features of largest Lambda per layer, a card shows the test images that drive it
# most (as tiles), its histogram, its strongest edges of the interaction graph above,
# and the change of test accuracy when it alone is mean-ablated; an explorer draws
# the graph, with its modules as colours (click a feature to open its card).  The
# images come as ``(n, 1, 8, 8)`` arrays, so no ``image_shape`` is needed (flat rows
# of 64 pixels would take ``image_shape=(8, 8)``).
#
# The page of the gallery's run: `image_mlp_digits_dashboard.html
# <image_mlp_digits_dashboard.html>`__ (open it in a browser; it loads nothing).
start = time.perf_counter()
dashboard = FeatureDashboard.from_estimator(
    fits["lib"],
    X_test,
    y_test,
    n_features=16,
    n_examples=20,
    graph=graphs["lib"],
    ablation=True,
    title=f"Image MLP on {args.dataset}: LIB features",
)
page = dashboard.save_html(
    os.path.join(args.output_dir, f"image_mlp_{args.dataset}_dashboard.html")
)
print(
    f"\nDashboard of LIB's features on {len(X_test)} test images "
    f"({time.perf_counter() - start:.1f}s): {page} ({page.stat().st_size / 1e3:.0f} kB)"
)

# %%
# Figures: spectra and ablation curves per layer (LIB and PCA on each axis),
# edges needed, LIB's interaction graph.
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("\nmatplotlib is not installed: no figures drawn (the numbers above are the result)")
    plt = None
if plt is not None:
    from sklearn_lib.plotting import plot_edges_needed

    # Top row: LIB's Lambda next to PCA's variances; bottom row: both bases'
    # ablation curves on one axis per layer.
    fig, axes = plt.subplots(2, len(layers), figsize=(5 * len(layers), 8), squeeze=False)
    for col, layer in enumerate(layers):
        SpectrumDisplay.from_estimator(fits["lib"], fits["pca"], layer=layer, ax=axes[0, col])
        K = min(fits["lib"].bases_[layer].lambdas.size, fits["pca"].bases_[layer].lambdas.size)
        ks = [k for k in (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if k <= K]
        for est in fits.values():  # one baseline: the displays draw its dashed line once
            AblationCurveDisplay.from_estimator(
                est, X_test, y_test, n_features=ks, layer=layer, baseline=baseline, ax=axes[1, col]
            )
        axes[1, col].set_ylabel("test accuracy")
    fig.tight_layout()
    fig.savefig(os.path.join(args.output_dir, f"image_mlp_{args.dataset}_ablation.png"), dpi=110)

    fig, axes = plt.subplots(1, 2, figsize=(15, 5))
    plot_edges_needed(edges, ax=axes[0])
    InteractionGraphDisplay.from_graph(graphs["lib"], top_edges=80, max_features=20, ax=axes[1])
    fig.tight_layout()
    fig.savefig(os.path.join(args.output_dir, f"image_mlp_{args.dataset}_graph.png"), dpi=110)
    print(f"\nSaved figures in {args.output_dir}/")
