"""The offline HTML page of a feature dashboard (:func:`render_page`).

The page is one self-contained file: its script and style sheet
(``assets/dashboard.js`` and ``assets/dashboard.css``) are inlined, and the
payload travels as JSON in ``<script type="application/json"
id="lib-dashboard-data">``. It makes no network request of any kind (its
Content-Security-Policy forbids them), so it opens from disk in any browser.

Notes
-----
The payload, as the dashboard's builder makes it from fitted estimators
(JSON-able: str, int, finite float, bool, None, list and dict)::

    page = {
      "title": str,
      "version": str,                # sklearn-lib version
      "input": INPUT,
      "views": [VIEW, ...],          # >= 1; e.g. "LIB" and "PCA" side by side
      "notes": [str, ...],           # shown under the title
    }
    INPUT = {"kind": "tokens", "token_strings": [str, ...]}     # examples index into it
          | {"kind": "image", "image_shape": [H, W, C]}          # C is 1 (grey) or 3 (RGB)
          | {"kind": "tabular", "columns": [str, ...]}           # names of a row's values
    VIEW = {
      "name": str,                   # "LIB", "PCA", ...
      "basis": "lib" | "pca" | "identity",
      "nodes": [NODE, ...],          # forward order: the graph's columns, left to right
      "sections": [SECTION, ...],    # edges between consecutive nodes, may be []
      "modularity": float | None,    # of the graph modules, if computed
      "ablation": {"metric": str, "baseline": float} | None,
    }
    NODE = {
      "name": str,                   # module name, e.g. "transformer.h.0", or "output"
      "n_kept": int,                 # features kept by the basis
      "total_lambda": float,         # sum of Lambda over the kept features
      "positions_shape": [int, ...], # [T] for sequences, [H, W] for conv maps, [] for none
      "features": [FEATURE, ...],    # shown features, most important first
    }
    FEATURE = {
      "index": int,                  # index in the basis (0 = largest Lambda)
      "lambda": float, "share": float,            # Lambda and Lambda / total_lambda
      "module": int | None,          # graph module (community) id: its colour
      "histogram": {"edges": [float] * (B + 1), "counts": [int] * B},
      "ablation": float | None,      # score change when this feature alone is mean-ablated
      "incoming": [[node_name, index, weight], ...],  # strongest edges from the previous node
      "outgoing": [[node_name, index, weight], ...],  # strongest edges to the next node
      "examples": [EXAMPLE, ...],    # strongest first (by |value|)
    }
    EXAMPLE = {"sample": int, "position": [int, ...], "value": float, ...}, and by kind:
      tokens:  "context": [int, ...]           indices into input.token_strings
               "context_values": [float, ...]  the feature's value at each context token
               "focus": int                    index in context of the example's own token
      image:   "pixels": str                   base64 of H*W*C uint8, row-major, channels last
               (for a node of positions_shape [h, w], "position" [i, j] is boxed on the image)
      tabular: "row": [float, ...]             values for input.columns
    SECTION = {"source": node_name, "target": node_name,
               "src": [int, ...], "dst": [int, ...], "weight": [float, ...]}
               # parallel arrays of FEATURE.index values; only edges between shown features

The page's script exposes ``window.LIBDashboard`` (``ready``, ``loadMs``,
``renderMs``, ``drawnEdges()``, ``totalEdges()``, ``selected()``,
``select(view, node, index)``, ``nodeScreenPosition(node, index)``,
``setView(name)``, ``transform()``) for the browser tests.
"""

import html
import json
import math
from collections.abc import Mapping, Sequence
from importlib import resources

KINDS = ("tokens", "image", "tabular")

_PAGE_KEYS = ("title", "version", "input", "views", "notes")
_VIEW_KEYS = ("name", "basis", "nodes", "sections")
_NODE_KEYS = ("name", "n_kept", "total_lambda", "positions_shape", "features")
#: The key each input kind needs beside "kind".
_INPUT_KEYS = {"tokens": "token_strings", "image": "image_shape", "tabular": "columns"}

# No network request of any kind: the script and style are inline, nothing else loads.
_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; base-uri 'none'; form-action 'none'"
)


def _mapping(value, what):
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a dict; got {type(value).__name__}")
    return value


def _list(value, what):
    # A str is a sequence too, but never the list of things a payload means.
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{what} must be a list; got {type(value).__name__}")
    return value


def _require(mapping, keys, what):
    missing = [key for key in keys if key not in mapping]
    if missing:
        raise ValueError(f"{what} lacks the key(s) {missing}; it has {sorted(mapping)}")


def _check_input(spec):
    spec = _mapping(spec, "payload['input']")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"payload['input']['kind'] must be one of {list(KINDS)}; got {kind!r}")
    key = _INPUT_KEYS[kind]
    _require(spec, [key], f"payload['input'] of kind {kind!r}")
    _list(spec[key], f"payload['input'][{key!r}]")
    if kind == "image":
        shape = spec[key]
        if len(shape) != 3 or shape[2] not in (1, 3) or min(shape) < 1:
            raise ValueError(f"image_shape must be [H, W, C] with C 1 or 3; got {list(shape)}")


def _check_view(view, where):
    view = _mapping(view, where)
    _require(view, _VIEW_KEYS, where)
    if not isinstance(view["name"], str):
        raise TypeError(f"{where}['name'] must be a str; got {type(view['name']).__name__}")
    for j, node in enumerate(_list(view["nodes"], f"{where}['nodes']")):
        node = _mapping(node, f"{where}['nodes'][{j}]")
        _require(node, _NODE_KEYS, f"{where}['nodes'][{j}]")
        _list(node["features"], f"{where}['nodes'][{j}]['features']")
    for j, section in enumerate(_list(view["sections"], f"{where}['sections']")):
        section = _mapping(section, f"{where}['sections'][{j}]")
        _require(section, ("source", "target", "src", "dst", "weight"), f"section {j} of {where}")
        if not len(section["src"]) == len(section["dst"]) == len(section["weight"]):
            raise ValueError(f"section {j} of {where}: src, dst and weight differ in length")


def check_payload(payload):
    """Check the top-level structure of a dashboard's payload.

    Parameters
    ----------
    payload : dict
        As the module's notes describe it.

    Raises
    ------
    TypeError
        Where a part is not of its type (a dict, a list, a str).
    ValueError
        Where a required key is missing, ``views`` is empty, view names repeat,
        or ``input.kind`` is not one of ``tokens``, ``image``, ``tabular``.
    """
    payload = _mapping(payload, "the payload")
    _require(payload, _PAGE_KEYS, "the payload")
    for key in ("title", "version"):
        if not isinstance(payload[key], str):
            raise TypeError(f"payload[{key!r}] must be a str; got {type(payload[key]).__name__}")
    if not all(isinstance(note, str) for note in _list(payload["notes"], "payload['notes']")):
        raise TypeError("payload['notes'] must be a list of str")
    _check_input(payload["input"])
    views = _list(payload["views"], "payload['views']")
    if not views:
        raise ValueError("payload['views'] is empty: the dashboard shows at least one view")
    for i, view in enumerate(views):
        _check_view(view, f"payload['views'][{i}]")
    names = [view["name"] for view in views]
    if len(set(names)) != len(names):
        raise ValueError(f"the views' names repeat ({names}): the page switches views by name")


def _non_finite(value, where="payload"):
    """Where the first NaN or infinity of ``value`` sits (a path), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where} = {value!r}"
    items = ()
    if isinstance(value, Mapping):
        items = ((f"{where}[{key!r}]", item) for key, item in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{i}]", item) for i, item in enumerate(value))
    for path, item in items:
        found = _non_finite(item, path)
        if found:
            return found
    return None


def _plain(value):
    """numpy's scalars and arrays as Python's (``json`` knows neither)."""
    if callable(getattr(value, "tolist", None)):
        return value.tolist()
    raise TypeError(
        f"the payload holds a value of type {type(value).__name__}, which JSON cannot carry"
    )


def payload_json(payload):
    """The payload as JSON that is safe inside a ``<script>`` element.

    ``<``, ``>`` and ``&`` are written as ``\\u003c``, ``\\u003e`` and
    ``\\u0026``, so no string (a token ``</script>``) can end the element;
    a NaN or an infinity raises a ValueError naming where it sits.
    """
    try:
        text = json.dumps(payload, allow_nan=False, separators=(",", ":"), default=_plain)
    except ValueError as exc:
        where = _non_finite(json.loads(json.dumps(payload, default=_plain)))
        raise ValueError(
            f"the payload holds a non-finite number ({where or exc}); JSON has no NaN or "
            "infinity, and the dashboard's builder gives finite numbers only"
        ) from exc
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _asset(name):
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def render_page(payload):
    """The whole HTML document of a feature dashboard.

    Parameters
    ----------
    payload : dict
        As the module's notes describe it; checked by :func:`check_payload`.

    Returns
    -------
    str
        The page: open it from disk in any browser, it loads nothing else.
    """
    check_payload(payload)
    data = payload_json(payload)
    title = html.escape(payload["title"])
    version = html.escape(payload["version"])
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">\n'
        f'<meta name="generator" content="sklearn-lib {version}">\n'
        f"<title>{title}</title>\n"
        f"<style>\n{_asset('dashboard.css')}</style>\n</head>\n<body>\n"
        '<div id="lib-dashboard" class="lib-dashboard">'
        "<noscript>The dashboard needs JavaScript.</noscript></div>\n"
        f'<script type="application/json" id="lib-dashboard-data">{data}</script>\n'
        f"<script>\n{_asset('dashboard.js')}</script>\n</body>\n</html>\n"
    )
