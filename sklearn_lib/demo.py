"""Demo: LIB vs PCA on a small MLP trained on scikit-learn's digits.

Run with ``python -m sklearn_lib.demo``.  Nothing is downloaded: the data is
bundled with scikit-learn and the MLP (64-32-32-10, ReLU) trains on the spot
in a few seconds.  For the hidden layer ``fc2`` (the input of the second
Linear layer) it fits LIB and the PCA
baseline on the training split, then keeps the top ``k`` features of each
(the others mean-ablated), runs the rest of the network and prints the
test accuracy side by side.  ``--plot FILE`` also saves the two spectra and
the two ablation curves, each pair on one axis (needs matplotlib).
"""

import argparse
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from . import LIBTransformer
from .models import train_image_mlp


def train_digits_mlp(X_train, y_train, epochs=300, seed=0):
    """The demo's 64-32-32-10 ReLU MLP (layers ``fc1``, ``fc2``, ``out``), trained full batch."""
    model, _ = train_image_mlp(
        X_train, y_train, hidden=(32, 32), epochs=epochs, lr=1e-2, weight_decay=1e-4, seed=seed
    )
    return model


def main(argv=None):
    """Run the demo, ``python -m sklearn_lib.demo``: LIB against PCA on the digits MLP.

    Trains :func:`train_digits_mlp` on a 70/30 split of scikit-learn's
    digits, fits LIB and the PCA baseline (``basis="pca"``) to one layer of
    it on the training split, and prints for each basis its fitting time,
    its number of non-null features and how many of them hold 99% of its
    Lambda (or variance), then the test accuracy of the model when only the
    top ``k`` features of the layer are kept (the rest mean-ablated), next
    to the unablated model's.

    Parameters
    ----------
    argv : list of str, optional
        The command-line arguments (default: ``sys.argv[1:]``):

        ``--layer NAME``
            The node layer (default ``fc2``, the input of the second Linear
            layer), ``fc1`` or ``fc2``: ``out`` is the downstream node layer.
        ``--device DEVICE``
            As :class:`~sklearn_lib.LIBTransformer`'s ``device`` (default
            ``auto``).
        ``--ks K1,K2,...``
            The feature counts to keep (default ``1,2,3,4,6,8,12,16``); a
            count beyond a basis' non-null features prints ``-``.
        ``--plot FILE``
            Also save the two spectra and the two ablation curves, each pair
            on one axis, to ``FILE`` (needs matplotlib).

    Returns
    -------
    None
        The results are printed to stdout (and saved to ``--plot``'s file).

    Examples
    --------
    >>> from sklearn_lib.demo import main
    >>> main(["--layer", "fc1", "--ks", "1,2,4"])  # doctest: +SKIP
    """
    args = _arguments(argv)
    ks = [int(k) for k in args.ks.split(",")]
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, test_size=0.3, random_state=0)
    start = time.perf_counter()
    model = train_digits_mlp(X_train, y_train)
    with torch.no_grad():
        acc = model(torch.as_tensor(X_test, dtype=torch.float32)).argmax(1).numpy() == y_test
    seconds = time.perf_counter() - start
    print(f"Trained a 64-32-32-10 MLP on digits in {seconds:.1f}s: test accuracy {acc.mean():.4f}")
    common = dict(downstream_layers=["out"], device=args.device, truncation_threshold=0.0)
    fits = _fits(model, args.layer, X_train, common)
    print("\nTest accuracy keeping the top k features (the rest mean-ablated):")
    print(f"  {'k':>3}  {'LIB':>7}  {'PCA':>7}")
    for k in ks:
        print(
            f"  {k:>3}  {_ablated(model, args.layer, fits, k, (X_train, X_test, y_test), common)}"
        )
    print(f"  all  {acc.mean():7.4f}  {acc.mean():7.4f}  (unablated model)")
    if args.plot:
        _plot(fits, X_test, y_test, ks, acc.mean(), args.plot)


def _arguments(argv):
    """The demo's command line (see :func:`main`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="fc2", help="node layer (default: fc2)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ks", default="1,2,3,4,6,8,12,16", help="feature counts to keep")
    parser.add_argument("--plot", default=None, metavar="FILE", help="save the figures here")
    return parser.parse_args(argv)


def _fits(model, layer, X_train, common):
    """The LIB and PCA fits of ``layer``, timed, with a line each on their spectra."""
    fits = {}
    for basis in ("lib", "pca"):
        start = time.perf_counter()
        fits[basis] = LIBTransformer(model, layer, basis=basis, **common).fit(X_train)
        fits[basis].fit_seconds = time.perf_counter() - start
    print(f"\nLayer {layer!r}: {fits['lib'].activation_shape_[-1]} activations")
    for basis, fit in fits.items():
        lam = fit.lambdas_
        needed = int(np.searchsorted(np.cumsum(lam) / lam.sum(), 0.99)) + 1
        print(
            f"  {basis.upper():3s}: fitted in {fit.fit_seconds:.2f}s, {fit.n_components_} "
            f"non-null features, {needed} hold 99% of the "
            f"{'importance (Lambda)' if basis == 'lib' else 'variance'}"
        )
    return fits


def _ablated(model, layer, fits, k, data, common):
    """The test accuracies of LIB and PCA keeping ``k`` features, as two table cells."""
    X_train, X_test, y_test = data
    cells = []
    for basis in ("lib", "pca"):
        if k > fits[basis].n_components_:
            cells.append(f"{'-':>7}")
            continue
        # A refit with n_components=k keeps the demo to the public API;
        # each fit takes well under a second here.
        est = LIBTransformer(model, layer, basis=basis, n_components=k, **common)
        cells.append(f"{est.fit(X_train).score(X_test, y_test):7.4f}")
    return "  ".join(cells)


def _plot(fits, X_test, y_test, ks, baseline, path):
    """LIB next to PCA: spectra on one axis, ablation curves on another; saved to ``path``."""
    from ._display import AblationCurveDisplay, SpectrumDisplay
    from ._drawing.figure import pyplot

    fig, (left, right) = pyplot().subplots(1, 2, figsize=(11, 4))
    SpectrumDisplay.from_estimator(fits["lib"], fits["pca"], ax=left)
    for fit in fits.values():
        # Every fit's own width ends its curve: all features kept, the model's accuracy.
        n = sorted({k for k in ks if k <= fit.n_components_} | {fit.n_components_})
        AblationCurveDisplay.from_estimator(
            fit, X_test, y_test, n_features=n, baseline=baseline, ax=right
        )
    fig.tight_layout()
    fig.savefig(path)
    print(f"\nSaved the spectra and ablation curves to {path}")


if __name__ == "__main__":
    main()
