"""
Choosing LIB's truncation threshold by grid search, next to PCA's n_components
===============================================================================

Raw faithfulness always prefers more features, so a plain grid search would
pick the smallest threshold.  ``sparsest_faithful`` is a ``refit`` rule that
picks the *sparsest* basis whose faithfulness (the model's accuracy when only
the kept features are used, the rest mean-ablated) stays above a floor.  The
same scorers work for a scikit-learn ``PCA`` on the raw activations, so both
land on one plot.

Run ``python examples/plot_grid_search_threshold.py`` (about a minute on a
laptop CPU; ``--smoke`` for a few seconds).  It prints the search tables and
saves ``figures/grid_search_threshold.png``.
"""

# %%
# Data and model: scikit-learn's bundled digits and a small MLP trained on the
# spot (64-32-32-10, ReLU; layers fc1, fc2, out).  The node layer is the input of ``fc2``.
import argparse
import os

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline

from sklearn_lib import (
    ActivationTransformer,
    LIBTransformer,
    faithfulness_scorer,
    n_features_scorer,
    sparsest_faithful,
)
from sklearn_lib.demo import train_digits_mlp

parser = argparse.ArgumentParser()
parser.add_argument("--smoke", action="store_true", help="tiny run for the tests")
parser.add_argument("--output-dir", default="figures")
args = parser.parse_args()  # an unknown flag is an error, not ignored
if args.smoke:  # the gallery's pages come from smoke runs: say so where the numbers are
    print(
        "SMOKE RUN (--smoke): a tiny version of this example, to show that it runs; "
        "its numbers and figures are not results (run it without --smoke for those).\n"
    )

X, y = load_digits(return_X_y=True)
X = X / 16.0
if args.smoke:
    X, y = X[:300], y[:300]
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
model = train_digits_mlp(X_train, y_train, epochs=30 if args.smoke else 300)
with torch.no_grad():
    accuracy = float(
        (model(torch.as_tensor(X_test, dtype=torch.float32)).argmax(1).numpy() == y_test).mean()
    )
print(f"MLP test accuracy: {accuracy:.4f}")

# %%
# Two scorers and one refit rule.  ``faithfulness`` is the accuracy of the
# model run on the kept features; ``n_features`` is minus the number of kept
# features.  The floor is one point of accuracy below the model's own.
scoring = {"faithfulness": faithfulness_scorer, "n_features": n_features_scorer}
floor = accuracy - 0.01

lib_search = GridSearchCV(
    LIBTransformer(model, "fc2", downstream_layers=["out"]),
    {"truncation_threshold": [0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 1e-4, 0.0]},
    scoring=scoring,
    refit=sparsest_faithful(floor),
    cv=3,
).fit(X_train, y_train)

pca_search = GridSearchCV(
    Pipeline([("acts", ActivationTransformer(model, "fc2")), ("pca", PCA())]),
    {"pca__n_components": [1, 2, 3, 4, 6, 8, 10, 12, 16, 20]},
    scoring=scoring,
    refit=sparsest_faithful(floor),
    cv=3,
).fit(X_train, y_train)

# %%
# The tables: mean faithfulness against the number of kept features.
for name, search, param in [
    ("LIB", lib_search, "param_truncation_threshold"),
    ("PCA", pca_search, "param_pca__n_components"),
]:
    results = search.cv_results_
    print(f"\n{name}: {param[6:]} -> features, faithfulness (floor {floor:.4f})")
    for value, n, f in zip(
        results[param], -results["mean_test_n_features"], results["mean_test_faithfulness"]
    ):
        mark = "  <- chosen" if value == results[param][search.best_index_] else ""
        print(f"  {value!s:>8}  {n:5.1f}  {f:.4f}{mark}")
    chosen = search.best_estimator_
    test_faithfulness = faithfulness_scorer(chosen, X_test, y_test)
    print(
        f"  test faithfulness of the chosen basis: {test_faithfulness:.4f}"
        f" with {-n_features_scorer(chosen):.0f} features"
    )

# %%
# One plot: faithfulness against features kept, the chosen bases circled.
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("\nmatplotlib is not installed: no figures drawn (the numbers above are the result)")
    plt = None
if plt is not None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, search in [
        ("LIB (truncation_threshold)", lib_search),
        ("PCA (n_components)", pca_search),
    ]:
        results = search.cv_results_
        n = -results["mean_test_n_features"]
        order = np.argsort(n)
        (line,) = ax.plot(
            n[order], results["mean_test_faithfulness"][order], marker="o", label=name
        )
        best = search.best_index_
        ax.scatter(
            [n[best]],
            [results["mean_test_faithfulness"][best]],
            s=200,
            facecolors="none",
            edgecolors=line.get_color(),
        )
    ax.axhline(floor, color="grey", linestyle="--", label="floor")
    ax.set_xlabel("features kept")
    ax.set_ylabel("faithfulness (accuracy, CV mean)")
    ax.set_title("Sparsest faithful basis")
    ax.legend()
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "grid_search_threshold.png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"\nSaved {path}")
