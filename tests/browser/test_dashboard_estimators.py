"""Pages made by ``FeatureDashboard.from_estimator`` from fitted estimators, in headless Chromium:
a digits MLP (image tiles, edges, modules, ablation) and a tiny GPT-2 (token contexts, LIB and
PCA side by side)."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from toy_models import GPT2_VOCAB, tiny_gpt2

from sklearn_lib import FeatureDashboard, LIBTransformer

pytestmark = pytest.mark.browser


def _cards(data):
    return [
        (view["name"], node["name"], card["index"])
        for view in data["views"]
        for node in view["nodes"]
        for card in node["features"]
    ]


def _open(dashboard_page, display, name):
    dashboard_page.page.goto("about:blank")
    path = display.save_html(dashboard_page.folder / name)
    dashboard_page.url = path.as_uri()
    dashboard_page.page.goto(dashboard_page.url)
    dashboard_page.page.wait_for_function("() => window.LIBDashboard && LIBDashboard.ready")
    dashboard_page.settle()


def _check_page(dashboard, display, clicks):
    assert dashboard.problems() == []
    cards = _cards(display.data)
    assert dashboard.page.locator(".feature-card").count() == len(cards)
    for view, node, index in cards:
        assert dashboard.card(view, node, index).count() == 1
    for node, index in clicks:
        dashboard.click_dot(node, index)
        selected = dashboard.api("selected()")
        assert (selected["node"], selected["index"]) == (node, index)
        assert "selected" in dashboard.card(selected["view"], node, index).get_attribute("class")


def test_a_digits_dashboard_with_image_tiles(dashboard):
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)[:400]
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 10)
    )
    lib = LIBTransformer(model, "2", downstream_layers=["4"]).fit(X)
    display = FeatureDashboard.from_estimator(
        lib, X, y[:400], n_features=8, n_examples=6, image_shape=(8, 8), ablation=True
    )
    _open(dashboard, display, "digits.html")
    _check_page(dashboard, display, [("2", 0), ("4", 3)])
    assert dashboard.api("totalEdges()") > 0
    card = dashboard.card("LIB", "4", 3)
    assert card.locator("canvas").count() >= 6  # the example tiles (and the histogram)
    dashboard.screenshot("dashboard_digits_estimator.png")


def test_a_language_model_dashboard_with_token_contexts(dashboard):
    pytest.importorskip("transformers", reason="needs the models extra")
    gpt2 = tiny_gpt2()
    ids = np.random.default_rng(0).integers(0, GPT2_VOCAB, size=(32, 8))
    kw = dict(
        downstream_layers=["transformer.h.1"], output="logits", forward_kwargs={"use_cache": False}
    )
    lib = LIBTransformer(gpt2, "transformer.h.0", n_stochastic_sources=2, random_state=0, **kw)
    pca = LIBTransformer(gpt2, "transformer.h.0", basis="pca", **kw)
    lib.fit(ids), pca.fit(ids)
    graph = lib.interaction_graph(ids[:8], n_stochastic_sources=2, random_state=0)
    vocabulary = [f"<w{i}>" for i in range(GPT2_VOCAB)]  # markup-like strings stay text
    display = FeatureDashboard.from_estimator(
        lib,
        ids,
        compare=pca,
        n_features=6,
        n_examples=4,
        graph={"LIB": graph, "PCA": None},
        tokenizer=vocabulary,
    )
    _open(dashboard, display, "gpt2.html")
    _check_page(dashboard, display, [("transformer.h.0", 1), ("transformer.h.1", 0)])
    text = dashboard.card("LIB", "transformer.h.1", 0).inner_text()
    example = display.data["views"][0]["nodes"][1]["features"][0]["examples"][0]
    first = display.data["input"]["token_strings"][example["context"][0]]
    assert first in text  # the decoded context, as text
    dashboard.api("setView(a)", "PCA")
    dashboard.settle()
    assert dashboard.api("totalEdges()") == 0
    dashboard.screenshot("dashboard_gpt2_estimator.png")
