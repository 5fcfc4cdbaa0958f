"""The feature dashboard's page (``_drawing.dashboard_page``) without a browser.

The page is checked as text: the payload's structure, the escaping of
strings that would end the data element or the title, NaN refused, and
nothing in the page or its assets that reaches the network. The browser
tests (``tests/browser``) check what the page does.
"""

import copy
import html
import json
import re
from importlib import resources

import numpy as np
import pytest
from _dashboards import HOSTILE, make_payload

from sklearn_lib._drawing.dashboard_page import check_payload, payload_json, render_page

ASSETS = resources.files("sklearn_lib._drawing").joinpath("assets")

#: What would make the page load something: a URL, a script or style import, a request.
NETWORK = ("http://", "https://", "//cdn", "fetch(", "XMLHttpRequest", "import(", "@import", "url(")


def _data_of(page):
    """The payload the page carries, read back as the browser's JSON.parse would."""
    match = re.search(
        r'<script type="application/json" id="lib-dashboard-data">(.*?)</script>', page, re.S
    )
    assert match, "no data element"
    return json.loads(match.group(1))


@pytest.mark.parametrize("kind", ["tokens", "image", "tabular"])
def test_a_valid_payload_renders_a_whole_page(kind):
    payload = make_payload(kind, n_views=2)
    check_payload(payload)
    page = render_page(payload)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert _data_of(page) == payload
    # The assets are inlined, not linked.
    assert ASSETS.joinpath("dashboard.js").read_text(encoding="utf-8") in page
    assert ASSETS.joinpath("dashboard.css").read_text(encoding="utf-8") in page
    assert "<link" not in page and "<img" not in page


def _without(payload, *path):
    broken = copy.deepcopy(payload)
    target = broken
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return broken


@pytest.mark.parametrize(
    "path, message",
    [
        (("title",), r"the payload lacks the key\(s\) \['title'\]"),
        (("views",), r"lacks the key\(s\) \['views'\]"),
        (("input", "token_strings"), r"payload\['input'\] of kind 'tokens' lacks"),
        (("views", 0, "nodes"), r"payload\['views'\]\[0\] lacks the key\(s\) \['nodes'\]"),
        (("views", 0, "nodes", 1, "features"), r"\['nodes'\]\[1\] lacks .*'features'"),
        (("views", 0, "sections", 0, "weight"), r"section 0 of payload\['views'\]\[0\] lacks"),
    ],
)
def test_a_missing_key_is_named(path, message):
    with pytest.raises(ValueError, match=message):
        check_payload(_without(make_payload(), *path))


def test_empty_views_are_refused():
    payload = make_payload()
    payload["views"] = []
    with pytest.raises(ValueError, match=r"payload\['views'\] is empty"):
        render_page(payload)


@pytest.mark.parametrize("kind", ["text", "", None, "Tokens"])
def test_an_unknown_input_kind_is_refused(kind):
    payload = make_payload()
    payload["input"]["kind"] = kind
    with pytest.raises(ValueError, match=r"must be one of \['tokens', 'image', 'tabular'\]"):
        check_payload(payload)


def test_an_image_shape_needs_one_or_three_channels():
    payload = make_payload("image")
    payload["input"]["image_shape"] = [8, 8, 2]
    with pytest.raises(ValueError, match="C 1 or 3"):
        check_payload(payload)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda p: p.__setitem__("views", {"LIB": 1}), TypeError, r"'views'\] must be a list"),
        (lambda p: p.__setitem__("views", "LIB"), TypeError, r"'views'\] must be a list"),
        (lambda p: p.__setitem__("input", ["tokens"]), TypeError, r"'input'\] must be a dict"),
        (lambda p: p.__setitem__("title", 3), TypeError, r"'title'\] must be a str"),
        (lambda p: p.__setitem__("notes", ["a", 1]), TypeError, r"list of str"),
        (lambda p: p["views"][0].__setitem__("name", None), TypeError, r"'name'\] must be a str"),
        (lambda p: p["views"][1].__setitem__("name", "LIB"), ValueError, r"names repeat"),
        (lambda p: p["views"][0]["sections"][0]["src"].pop(), ValueError, r"differ in length"),
    ],
)
def test_a_wrong_type_or_shape_is_named(change, error, message):
    payload = make_payload(n_views=2)
    change(payload)
    with pytest.raises(error, match=message):
        render_page(payload)


def test_a_payload_that_is_not_a_dict_is_refused():
    with pytest.raises(TypeError, match="the payload must be a dict; got list"):
        render_page([])


def test_a_hostile_token_string_stays_data():
    payload = make_payload()
    assert HOSTILE[0] in payload["input"]["token_strings"]
    page = render_page(payload)
    # The only </script> are those closing the page's own two script elements.
    assert page.count("</script>") == 2
    assert "<script>alert" not in page and "<img" not in page
    assert "\\u003c/script\\u003e\\u003cscript\\u003ealert(1)" in page
    assert _data_of(page)["input"]["token_strings"] == payload["input"]["token_strings"]


def test_ampersands_and_brackets_are_escaped_in_the_data():
    text = payload_json({"a": "<&>", "b": "]]></script><!--"})
    assert not set("<>&") & set(text)
    assert json.loads(text) == {"a": "<&>", "b": "]]></script><!--"}


def test_the_title_is_escaped():
    payload = make_payload()
    payload["title"] = "</title><script>alert(1)</script> & more"
    page = render_page(payload)
    head = page.split("</head>")[0]
    assert f"<title>{html.escape(payload['title'])}</title>" in head
    assert "<script>alert" not in page


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), np.float64("nan")])
def test_a_non_finite_number_is_refused_and_located(bad):
    payload = make_payload()
    payload["views"][0]["nodes"][1]["features"][2]["lambda"] = bad
    with pytest.raises(ValueError, match=r"non-finite number.*\['nodes'\]\[1\]\['features'\]\[2\]"):
        render_page(payload)


def test_numpy_numbers_are_written_as_plain_ones():
    assert json.loads(payload_json({"a": np.float32(0.5), "b": np.arange(3)})) == {
        "a": 0.5,
        "b": [0, 1, 2],
    }
    with pytest.raises(TypeError, match="holds a value of type object"):
        payload_json({"a": object()})


@pytest.mark.parametrize("name", ["dashboard.js", "dashboard.css", "page"])
def test_nothing_reaches_the_network(name):
    if name == "page":
        text = render_page(make_payload(n_views=2))
    else:
        text = ASSETS.joinpath(name).read_text(encoding="utf-8")
    found = [pattern for pattern in NETWORK if pattern in text]
    assert not found, f"{name} holds {found}"


def test_the_script_never_writes_html():
    script = ASSETS.joinpath("dashboard.js").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink


def test_the_page_forbids_requests():
    page = render_page(make_payload())
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
