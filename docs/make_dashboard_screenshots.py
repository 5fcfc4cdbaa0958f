"""Remake the README's screenshots of feature dashboards: run by hand, not by the tests.

Writes ``docs/figures/dashboard_images.png`` and ``docs/figures/dashboard_tokens.png``
from real dashboards, drawn by headless Chromium through Playwright:

- the images: the README's own dashboard (section "Feature dashboards"): the digits
  demo's MLP, LIB's features of ``fc1``, ``fc2`` and ``out`` next to PCA's of ``fc1``,
  with the interaction graph and the single-feature ablation;
- the tokens: the dashboard ``examples/plot_language_model.py`` writes (LIB vs PCA
  features of a small GPT-2's residual stream, characters of Python source), from a
  short run of the example (about a minute on 2 CPU cores).

Needs Chromium (``apt-get install -y chromium``; ``$CHROMIUM`` names another) and
Playwright (``pip install -e ".[browser]"``), ``transformers`` for the example, and
nothing from the network.  Run from anywhere::

    python docs/make_dashboard_screenshots.py [--keep DIR]

``--keep DIR`` also keeps the two HTML pages there.  Each PNG is a 1280 x 800
viewport, a feature selected so that its card and examples are open.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from browser.chromium import VIEWPORT, launch  # noqa: E402  (the tests' one home)

FIGURES = ROOT / "docs" / "figures"
#: A short run of the language-model example: a better trained model than --smoke's,
#: at a fraction of the full run's time.
LANGUAGE_MODEL_ARGS = [
    "--max-steps",
    "400",
    "--corpus-mb",
    "0.5",
    "--context",
    "48",
    "--n-embd",
    "64",
    "--fit-samples",
    "256",
    "--eval-samples",
    "256",
    "--no-edges",
]
MAX_BYTES = 300_000


def digits_dashboard(folder):
    """The README's dashboard of the digits demo's MLP; returns its path."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from sklearn_lib import FeatureDashboard, LIBTransformer
    from sklearn_lib.demo import train_digits_mlp

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
    model = train_digits_mlp(X_train, y_train)
    lib = LIBTransformer(model, "fc1", downstream_layers=["fc2", "out"]).fit(X_train)
    pca = LIBTransformer(model, "fc1", basis="pca").fit(X_train)
    graph = lib.interaction_graph(X_train)
    dashboard = FeatureDashboard.from_estimator(
        lib,
        X_test,
        y_test,
        compare=pca,
        graph={"LIB": graph, "PCA": None},
        n_features=16,
        n_examples=20,
        ablation=True,
        image_shape=(8, 8),
    )
    return dashboard.save_html(Path(folder) / "dashboard_images.html")


def language_model_dashboard(folder):
    """The language-model example's dashboard, from a short run of it; returns its path."""
    script = ROOT / "examples" / "plot_language_model.py"
    command = [sys.executable, str(script), *LANGUAGE_MODEL_ARGS, "--output-dir", str(folder)]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return Path(folder) / "language_model_dashboard.html"


def screenshot(browser, page_path, png, view, node, index, scroll=None):
    """Open ``page_path``, select feature ``index`` of ``node`` in ``view``, save ``png``."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    requests, errors = [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda error: errors.append(str(error)))
    url = Path(page_path).resolve().as_uri()
    page.goto(url)
    page.wait_for_function("() => window.LIBDashboard && LIBDashboard.ready === true")
    selected = page.evaluate(
        "([v, n, i]) => window.LIBDashboard.select(v, n, i)", [view, node, index]
    )
    if not selected:
        raise RuntimeError(f"{page_path.name}: no feature {index} of {node!r} in view {view!r}")
    if scroll is not None:  # where the window shows the page: the explorer above the card
        page.evaluate("(y) => window.scrollTo(0, y)", scroll)
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    page.screenshot(path=str(png))
    context.close()
    foreign = [r for r in requests if r != url]
    if errors or foreign:
        raise RuntimeError(f"{page_path.name}: errors {errors}, requests {foreign}")
    size = png.stat().st_size
    print(f"{png.relative_to(ROOT)}: {size / 1e3:.0f} kB")
    if size > MAX_BYTES:
        print(f"  larger than {MAX_BYTES / 1e3:.0f} kB: keep the README light", file=sys.stderr)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="also keep the two HTML pages in this folder")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        images = digits_dashboard(folder)
        tokens = language_model_dashboard(folder)
        with sync_playwright() as playwright:
            browser = launch(playwright)
            screenshot(browser, images, FIGURES / "dashboard_images.png", "LIB", "fc2", 0)
            screenshot(
                browser, tokens, FIGURES / "dashboard_tokens.png", "LIB", "transformer.h.1", 0
            )
            browser.close()


if __name__ == "__main__":
    main()
