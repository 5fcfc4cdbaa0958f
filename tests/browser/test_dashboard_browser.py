"""The feature dashboard's page (``_drawing.dashboard_page``) in headless Chromium.

Each test opens a page of a synthetic payload (``tests/_dashboards.py``) from
disk and drives it as a user would, with real mouse clicks, wheel turns and
drags at the screen positions the page's test API (``window.LIBDashboard``)
reports, then reads the outcome back from the page.
"""

import base64
import re

import numpy as np
import pytest
from _dashboards import HOSTILE, count_edges, count_features, make_payload

pytestmark = pytest.mark.browser

#: The first full render of a 10,000-edge graph's canvas, measured by the page: a
#: user sees the graph at once (it takes about 100 ms on two slow CPU cores).
RENDER_LIMIT_MS = 500
#: From navigation to an interactive page (cards built, graph drawn); the real
#: dashboard has ~200 cards of 20 examples, and must be usable within 2 s.
LOAD_LIMIT_MS = 2000


def shown_token(text):
    """How the page shows a token string (visible newlines and tabs)."""
    return text.replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


def rgba(css):
    """``(r, g, b, a)`` of a computed CSS colour."""
    values = [float(v) for v in re.findall(r"[\d.]+", css)]
    return (*values[:3], values[3] if len(values) > 3 else 1.0)


def test_the_page_loads_offline_without_errors(dashboard):
    payload = make_payload("tokens", n_views=2)
    dashboard.open(payload)
    page = dashboard.page
    # Exercise what loads lazily: every card body, both views, a selection, a zoom.
    page.click("button.toggle-all")  # collapse
    page.click("button.toggle-all")  # expand
    page.evaluate("() => document.querySelector('.cards-panel').scrollTo(0, 1e6)")
    dashboard.click_dot("transformer.h.1", 1)
    page.mouse.wheel(0, -200)
    page.click('button.view-tab[data-view="PCA"]')
    dashboard.click_dot("output", 0)
    dashboard.settle()
    assert dashboard.api("error") is None
    assert dashboard.requests == [dashboard.url]
    assert dashboard.problems() == []
    # The hostile token strings are shown as text: no script ran, no image loaded.
    texts = page.locator(".tok").all_text_contents()
    assert HOSTILE[0] in texts and HOSTILE[1] in texts
    assert page.locator(".tokens img, .tokens script").count() == 0
    assert page.title() == payload["title"]


def test_every_feature_has_a_card(dashboard):
    payload = make_payload("tabular", n_views=2, n_nodes=4, n_features=6)
    dashboard.open(payload)
    cards = dashboard.page.eval_on_selector_all(
        ".feature-card",
        "cards => cards.map(c => [c.dataset.view, c.dataset.node, c.dataset.index, c.id])",
    )
    assert len(cards) == count_features(payload) == 2 * 4 * 6
    expected = {
        (view["name"], node["name"], str(feature["index"]))
        for view in payload["views"]
        for node in view["nodes"]
        for feature in node["features"]
    }
    assert {tuple(card[:3]) for card in cards} == expected
    assert len({card[3] for card in cards}) == len(cards)  # ids unique
    # Grouped by node layer, under a heading that names it.
    headings = dashboard.page.locator('.view-cards[data-view="LIB"] .node-heading')
    assert headings.count() == 4
    assert headings.first.text_content().startswith("transformer.h.0")


@pytest.mark.parametrize("node, index", [("transformer.h.0", 2), ("output", 5)])
def test_clicking_a_dot_opens_its_card(dashboard, node, index):
    payload = make_payload("tokens", n_features=12)
    dashboard.open(payload)
    page = dashboard.page
    page.click("button.toggle-all")  # collapse every card: the click must open one
    assert page.locator(".feature-card.expanded").count() == 0
    dashboard.click_dot(node, index)
    assert dashboard.api("selected()") == {"view": "LIB", "node": node, "index": index}
    card = dashboard.card("LIB", node, index)
    assert set(card.get_attribute("class").split()) == {"feature-card", "expanded", "selected"}
    assert page.locator(".feature-card.selected").count() == 1
    assert page.locator(".feature-card.expanded").count() == 1
    assert card.locator(".card-body").is_visible()
    assert card.locator(".token-example").count() == 5  # its examples, rendered
    # Scrolled into view.
    top = card.evaluate("c => c.getBoundingClientRect().top")
    assert 0 <= top < page.viewport_size["height"] / 2
    # A click on no dot clears the selection.
    box = page.locator("canvas.graph-canvas").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + 12)
    dashboard.settle()
    assert dashboard.api("selected()") is None
    assert page.locator(".feature-card.selected").count() == 0


def test_a_click_goes_to_the_nearest_dot_among_many(dashboard):
    dashboard.open(make_payload("tokens", n_features=60, n_examples=6))
    panel = dashboard.page.locator(".cards-panel").bounding_box()
    for node, index in [("transformer.h.1", 31), ("transformer.h.1", 0), ("output", 59)]:
        dashboard.click_dot(node, index)
        assert dashboard.api("selected()") == {"view": "LIB", "node": node, "index": index}
        # The card stays in sight while the cards around it render their examples.
        dashboard.page.wait_for_timeout(150)
        dashboard.settle()
        top = dashboard.card("LIB", node, index).bounding_box()["y"]
        assert panel["y"] <= top < panel["y"] + 40, (node, index, top)


def expected_edges(payload, exponent):
    """How many edges the slider at ``exponent`` (log10 of the fraction) lets through."""
    total = 0
    for section in payload["views"][0]["sections"]:
        weight = np.abs(np.array(section["weight"]))
        relative = (weight / weight.max()).astype(np.float32)  # as the page keeps it
        total += len(weight) if exponent <= -4 else int((relative >= 10.0**exponent).sum())
    return total


def test_the_slider_filters_edges(dashboard):
    payload = make_payload("tokens", n_features=24)
    dashboard.open(payload)
    page = dashboard.page
    total = count_edges(payload, "LIB")
    assert dashboard.api("totalEdges()") == total
    drawn = []
    for exponent in [-4, -3, -2, -1.5, -1, -0.5, -0.2, 0]:
        page.eval_on_selector(
            "input.edge-slider",
            "(s, v) => { s.value = String(v); s.dispatchEvent(new Event('input')); }",
            exponent,
        )
        dashboard.settle()
        drawn.append(dashboard.api("drawnEdges()"))
        assert drawn[-1] == expected_edges(payload, exponent), exponent
        label = page.text_content(".edge-count")
        assert label.startswith(f"{drawn[-1]:,} of {total:,} edges shown"), label
    assert drawn[0] == total  # the lowest setting: all edges
    assert drawn == sorted(drawn, reverse=True)  # a higher threshold, fewer edges
    assert drawn[-1] < drawn[3] < total and drawn[-1] >= 2  # the strongest of each section
    assert dashboard.problems() == []


def test_a_10000_edge_graph_renders_in_time(dashboard):
    payload = make_payload("tokens", n_nodes=3, n_features=100, edges_per_section=5000)
    assert count_edges(payload, "LIB") == 10_000
    dashboard.open(payload, "large.html")
    assert dashboard.api("totalEdges()") == dashboard.api("drawnEdges()") == 10_000
    render_ms, load_ms = dashboard.api("renderMs"), dashboard.api("loadMs")
    print(f"10,000 edges: renderMs {render_ms:.0f}, loadMs {load_ms:.0f}")
    assert 0 < render_ms < RENDER_LIMIT_MS
    assert 0 < load_ms < LOAD_LIMIT_MS
    # Still responsive: a selection among them is a click away.
    dashboard.click_dot("transformer.h.1", 50)
    assert dashboard.api("selected()")["index"] == 50
    dashboard.screenshot("dashboard_10k_edges.png")
    assert dashboard.problems() == []


def test_a_page_of_the_real_size_loads_in_time(dashboard):
    """~200 cards of 20 token examples (17-token contexts), as a language model's page."""
    payload = make_payload("tokens", n_nodes=3, n_features=64, n_examples=20)
    path = dashboard.open(payload, "real_size.html")
    render_ms, load_ms = dashboard.api("renderMs"), dashboard.api("loadMs")
    print(
        f"3 x 64 features x 20 examples ({path.stat().st_size / 1e6:.2f} MB): "
        f"renderMs {render_ms:.0f}, loadMs {load_ms:.0f}"
    )
    assert dashboard.page.locator(".feature-card").count() == 192
    assert 0 < render_ms < RENDER_LIMIT_MS
    assert 0 < load_ms < LOAD_LIMIT_MS
    # Lazy: only the cards in sight (or near it) have drawn their examples.
    assert 0 < dashboard.page.locator(".token-example").count() < 20 * 20
    assert dashboard.problems() == []


def test_zoom_and_pan_change_the_view_and_clicks_still_hit(dashboard):
    dashboard.open(make_payload("image", n_features=16))
    page = dashboard.page
    assert dashboard.api("transform()") == {"k": 1, "x": 0, "y": 0}
    anchor = dashboard.api("nodeScreenPosition('transformer.h.1', 6)")
    page.mouse.move(anchor["x"], anchor["y"])
    page.mouse.wheel(0, -500)
    dashboard.settle()
    zoomed = dashboard.api("transform()")
    assert zoomed["k"] > 1.5
    # About the cursor: the dot under it stays there.
    after = dashboard.api("nodeScreenPosition('transformer.h.1', 6)")
    assert after == pytest.approx(anchor, abs=1.0)
    # A drag pans by as much as the mouse moved, and selects nothing.
    page.mouse.down()
    page.mouse.move(anchor["x"] + 60, anchor["y"] + 30, steps=6)
    page.mouse.up()
    dashboard.settle()
    panned = dashboard.api("transform()")
    assert panned["k"] == zoomed["k"]
    assert panned["x"] == pytest.approx(zoomed["x"] + 60, abs=0.5)
    assert panned["y"] == pytest.approx(zoomed["y"] + 30, abs=0.5)
    assert dashboard.api("selected()") is None
    # Zoomed in, the dots spread: a click still hits the right one, and its neighbour.
    for index in (7, 6):
        at = dashboard.click_dot("transformer.h.1", index)
        box = page.locator("canvas.graph-canvas").bounding_box()
        assert box["y"] < at["y"] < box["y"] + box["height"]
        assert dashboard.api("selected()") == {
            "view": "LIB",
            "node": "transformer.h.1",
            "index": index,
        }
    # Zooming out past the limit stops at it; "Reset view" restores the first.
    page.mouse.wheel(0, 5000)
    dashboard.settle()
    assert dashboard.api("transform()")["k"] == pytest.approx(0.25)
    page.click("button.reset-view")
    dashboard.settle()
    assert dashboard.api("transform()") == {"k": 1, "x": 0, "y": 0}


def test_edge_links_select_their_feature(dashboard):
    payload = make_payload("tokens", n_features=10)
    dashboard.open(payload)
    page = dashboard.page
    feature = payload["views"][0]["nodes"][1]["features"][3]
    assert dashboard.api("select('LIB', 'transformer.h.1', 3)") is True
    card = dashboard.card("LIB", "transformer.h.1", 3)
    for direction, entries in [
        ("incoming", feature["incoming"]),
        ("outgoing", feature["outgoing"]),
    ]:
        assert entries, direction
        links = card.locator(".edge-link")
        node, index, _ = entries[0]
        link = links.nth(0 if direction == "incoming" else len(feature["incoming"]))
        assert (link.get_attribute("data-node"), link.get_attribute("data-index")) == (
            node,
            str(index),
        )
        link.click()
        dashboard.settle()
        assert dashboard.api("selected()") == {"view": "LIB", "node": node, "index": index}
        assert "selected" in dashboard.card("LIB", node, index).get_attribute("class")
        assert page.locator(".feature-card.selected").count() == 1
        assert node in page.text_content(".selection-info")  # the graph's selection too
        dashboard.api("select('LIB', 'transformer.h.1', 3)")
    # A target that is not shown is plain text, not a link.
    first = dashboard.card("LIB", "transformer.h.0", 0)
    dashboard.api("select('LIB', 'transformer.h.0', 0)")
    missing = first.locator(".edge-missing")
    n_kept = payload["views"][0]["nodes"][1]["n_kept"]
    assert missing.count() == 1 and missing.text_content() == f"#{n_kept - 1}"


def check_tokens(dashboard, payload, card):
    feature = payload["views"][0]["nodes"][0]["features"][1]
    strings = payload["input"]["token_strings"]
    rows = card.locator(".token-example")
    assert rows.count() == len(feature["examples"])
    for n, example in enumerate(feature["examples"][:2]):
        spans = rows.nth(n).locator(".tok")
        got = spans.evaluate_all(
            "s => s.map(t => [t.textContent, getComputedStyle(t).backgroundColor, t.className])"
        )
        assert [g[0] for g in got] == [shown_token(strings[i]) for i in example["context"]]
        assert [g[2] for g in got].count("tok focus") == 1
        assert got[example["focus"]][2] == "tok focus"
        values = np.array(example["context_values"])
        largest = np.abs(values).max()
        for (_, colour, _), value in zip(got, values):
            r, g, b, a = rgba(colour)
            assert a == pytest.approx(0.8 * abs(value) / largest, abs=0.01)
            if a > 0:  # one hue for positive values, another for negative
                assert (r, g, b) == ((234, 88, 12) if value >= 0 else (37, 99, 235))
        assert rows.nth(n).locator(".example-value").text_content().replace("\u2212", "-") == (
            f"{example['value']:.3g}"
        )


def check_image(dashboard, payload, card):
    feature = payload["views"][0]["nodes"][0]["features"][1]
    h, w, c = payload["input"]["image_shape"]
    tiles = card.locator("canvas.image-tile")
    assert tiles.count() == len(feature["examples"])
    assert tiles.first.evaluate("t => getComputedStyle(t).imageRendering") == "pixelated"
    for n, example in enumerate(feature["examples"][:3]):
        pixels = np.frombuffer(base64.b64decode(example["pixels"]), np.uint8).reshape(h, w, c)
        drawn = tiles.nth(n).evaluate(
            "t => Array.from(t.getContext('2d').getImageData(0, 0, t.width, t.height).data)"
        )
        drawn = np.array(drawn, np.uint8).reshape(h, w, 4)
        np.testing.assert_array_equal(drawn[..., :3], pixels)
        assert (drawn[..., 3] == 255).all()
    # The first node is a 4 x 4 conv map: a box over the example's region.
    box = card.locator(".loc-box").first
    i, j = feature["examples"][0]["position"]
    style = box.evaluate("b => [b.style.left, b.style.top, b.style.width, b.style.height]")
    assert style == [f"{25 * j:g}%", f"{25 * i:g}%", "25%", "25%"]
    # The last node has no positions: no box.
    dashboard.api("select('LIB', 'output', 1)")
    assert dashboard.card("LIB", "output", 1).locator(".loc-box").count() == 0


def check_tabular(dashboard, payload, card):
    feature = payload["views"][0]["nodes"][0]["features"][1]
    columns = payload["input"]["columns"]
    table = card.locator("table.tabular-examples")
    assert table.locator("tbody tr").count() == len(feature["examples"])
    assert table.locator("th").all_text_contents() == ["value", "sample", *columns[:32]]
    first = table.locator("tbody tr").first.locator("td").all_text_contents()
    assert first[1] == str(feature["examples"][0]["sample"])
    assert float(first[2].replace("\u2212", "-")) == pytest.approx(
        feature["examples"][0]["row"][0], rel=0.01
    )
    assert card.locator(".table-note").text_content() == f"first 32 of {len(columns)} columns"


@pytest.mark.parametrize("kind", ["tokens", "image", "tabular"])
def test_every_input_kind_renders_its_examples(dashboard, kind):
    payload = make_payload(kind, n_features=8, n_examples=6)
    dashboard.open(payload)
    dashboard.click_dot("transformer.h.0", 1)
    card = dashboard.card("LIB", "transformer.h.0", 1)
    assert card.locator(".hist-canvas").count() == 1
    {"tokens": check_tokens, "image": check_image, "tabular": check_tabular}[kind](
        dashboard, payload, card
    )
    dashboard.api("select('LIB', 'transformer.h.0', 1)")
    dashboard.settle()
    dashboard.screenshot(f"dashboard_{kind}.png")
    assert dashboard.problems() == []


def test_switching_views_shows_the_other_cards_and_graph(dashboard):
    payload = make_payload("tokens", n_views=2, n_features=10)
    assert count_edges(payload, "LIB") != count_edges(payload, "PCA")
    dashboard.open(payload)
    page = dashboard.page
    visible = ".view-cards:not([hidden]) .feature-card"

    def shown():
        return set(page.eval_on_selector_all(visible, "cs => cs.map(c => c.dataset.view)"))

    assert shown() == {"LIB"}
    assert page.locator(visible).count() == count_features(payload, "LIB")
    assert dashboard.api("totalEdges()") == count_edges(payload, "LIB")
    dashboard.click_dot("transformer.h.0", 0)
    page.click('button.view-tab[data-view="PCA"]')
    dashboard.settle()
    assert shown() == {"PCA"}
    assert page.locator(visible).count() == count_features(payload, "PCA")
    assert page.locator(visible).first.is_visible()
    assert not page.locator('.view-cards[data-view="LIB"]').is_visible()
    assert page.get_attribute('button.view-tab[data-view="PCA"]', "aria-selected") == "true"
    assert dashboard.api("totalEdges()") == count_edges(payload, "PCA")
    assert dashboard.api("drawnEdges()") == count_edges(payload, "PCA")
    assert dashboard.api("selected()") is None  # a selection belongs to its view
    dashboard.click_dot("transformer.h.1", 4)
    assert dashboard.api("selected()") == {"view": "PCA", "node": "transformer.h.1", "index": 4}
    assert "selected" in dashboard.card("PCA", "transformer.h.1", 4).get_attribute("class")
    assert dashboard.api("setView('LIB')") is True
    dashboard.settle()
    assert shown() == {"LIB"}
    assert dashboard.api("drawnEdges()") == count_edges(payload, "LIB")
    assert dashboard.api("setView('nope')") is False


def test_a_view_without_edges_or_with_an_empty_node_still_works(dashboard):
    payload = make_payload("tabular")
    payload["views"][0]["sections"] = []
    payload["views"][0]["nodes"][1]["features"] = []
    dashboard.open(payload)
    assert dashboard.api("totalEdges()") == dashboard.api("drawnEdges()") == 0
    assert dashboard.page.text_content(".edge-count") == "0 of 0 edges shown"
    assert dashboard.page.is_disabled("input.edge-slider")
    assert dashboard.page.locator(".feature-card").count() == 16
    dashboard.click_dot("output", 2)
    assert dashboard.api("selected()") == {"view": "LIB", "node": "output", "index": 2}
    # Its incoming edges name features of the empty node: plain text, no links.
    card = dashboard.card("LIB", "output", 2)
    assert card.locator(".edge-link").count() == 0
    assert card.locator(".edge-missing").count() == len(
        payload["views"][0]["nodes"][2]["features"][2]["incoming"]
    )
    assert dashboard.problems() == []


def test_a_narrow_window_puts_the_cards_below_the_graph(dashboard):
    dashboard.page.set_viewport_size({"width": 760, "height": 900})
    dashboard.open(make_payload("tokens"))
    graph = dashboard.page.locator(".graph-panel").bounding_box()
    cards = dashboard.page.locator(".cards-panel").bounding_box()
    assert cards["y"] >= graph["y"] + graph["height"] - 1
    assert graph["width"] <= 760 and cards["width"] <= 760
    dashboard.click_dot("output", 3)
    assert dashboard.api("selected()")["index"] == 3
    dashboard.screenshot("dashboard_narrow.png")


def test_a_screenshot_is_a_png(dashboard):
    dashboard.open(make_payload("tokens", n_views=2, n_features=16, n_examples=8))
    dashboard.click_dot("transformer.h.1", 2)
    data = dashboard.screenshot("dashboard_selected.png")
    assert len(data) > 20_000  # a page with a graph and cards, not a blank one
    assert dashboard.problems() == []
