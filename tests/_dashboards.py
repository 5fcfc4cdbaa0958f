"""Synthetic payloads of the feature dashboard (``_drawing.dashboard_page``) for the tests.

:func:`make_payload` builds a valid payload of the page's schema from a seed:
node layers of ``n_features`` shown features each (indices ``0 .. n_features - 1``
of ``n_kept = n_features + 4`` kept), random edges between consecutive layers,
each feature's strongest incoming and outgoing edges taken from those, and
examples of the chosen input kind. The token table holds two hostile strings
(:data:`HOSTILE`) that must show as text.
"""

import base64

import numpy as np

#: Token strings that would run or load something if a page inserted them as HTML.
HOSTILE = ("</script><script>alert(1)</script>", "<img src=x onerror=alert(2)>")

WORDS = (
    "the",
    " cat",
    " sat",
    " on",
    " a",
    " mat",
    ".",
    "\n",
    " and",
    " then",
    " it",
    " ran",
    " away",
    " from",
    " dog",
    ",",
    " quickly",
    " into",
    " garden",
    " where",
    " flowers",
) + HOSTILE

#: View names and bases, in the order views are made.
VIEWS = (("LIB", "lib"), ("PCA", "pca"), ("Identity", "identity"))

IMAGE_SHAPE = (12, 12, 3)
CONTEXT = 17  # tokens per context: 12 before the example's own, 4 after
FOCUS = 12
N_COLUMNS = 40  # tabular: more than the 32 a card shows
TOP_EDGES = 5  # incoming and outgoing edges listed per feature


def _r(x):
    """Four significant digits: the page needs no more, and the file stays small."""
    return float(f"{float(x):.4g}")


def _input(kind):
    if kind == "tokens":
        return {"kind": "tokens", "token_strings": list(WORDS)}
    if kind == "image":
        return {"kind": "image", "image_shape": list(IMAGE_SHAPE)}
    if kind == "tabular":
        return {"kind": "tabular", "columns": [f"x{j}" for j in range(N_COLUMNS)]}
    raise ValueError(f"kind must be tokens, image or tabular; got {kind!r}")


def _positions_shape(kind, layer):
    if kind == "tokens":
        return [32]
    if kind == "image" and layer == 0:
        return [4, 4]  # a conv map: examples box a quarter-by-quarter region
    return []


def _image(rng):
    """base64 of a soft coloured blob on a dark noisy ground (uint8, channels last)."""
    h, w, c = IMAGE_SHAPE
    rows, cols = np.mgrid[0:h, 0:w]
    i, j = rng.uniform(0, h), rng.uniform(0, w)
    blob = np.exp(-((rows - i) ** 2 + (cols - j) ** 2) / (2 * (h / 5) ** 2))
    colour = rng.uniform(80, 255, c)
    image = blob[..., None] * colour + rng.uniform(0, 40, (h, w, c))
    return base64.b64encode(np.clip(image, 0, 255).astype(np.uint8).tobytes()).decode("ascii")


def _example(kind, rng, value, positions_shape):
    position = [int(rng.integers(0, n)) for n in positions_shape]
    example = {"sample": int(rng.integers(0, 1000)), "position": position, "value": _r(value)}
    if kind == "tokens":
        values = rng.normal(0, abs(value) / 2, CONTEXT)
        values[FOCUS] = value
        values[FOCUS - 3] = 0.0
        example["context"] = [int(i) for i in rng.integers(0, len(WORDS), CONTEXT)]
        example["context_values"] = [_r(v) for v in values]
        example["focus"] = FOCUS
    elif kind == "image":
        example["pixels"] = _image(rng)
    else:
        example["row"] = [_r(v) for v in rng.normal(0, 1, N_COLUMNS)]
    return example


def _feature(kind, rng, index, lam, total, positions_shape, n_examples):
    counts = rng.integers(0, 200, 20)
    counts[8] = 5000  # the spike at zero of a sparse feature
    values = np.sort(np.abs(rng.normal(0, 1, n_examples)))[::-1] * np.where(
        rng.random(n_examples) < 0.8, 1, -1
    )
    return {
        "index": index,
        "lambda": _r(lam),
        "share": _r(lam / total),
        "module": None if index % 7 == 6 else int(index % 5),
        "histogram": {"edges": [_r(x) for x in np.linspace(-2, 3, 21)], "counts": counts.tolist()},
        "ablation": _r(-rng.exponential(0.01)) if index % 4 else None,
        "incoming": [],
        "outgoing": [],
        "examples": [_example(kind, rng, v, positions_shape) for v in values],
    }


def _node(kind, rng, name, layer, n_features, n_examples):
    n_kept = n_features + 4
    lambdas = np.sort(rng.exponential(1.0, n_kept))[::-1]
    total = float(lambdas.sum())
    shape = _positions_shape(kind, layer)
    features = [
        _feature(kind, rng, i, lambdas[i], total, shape, n_examples) for i in range(n_features)
    ]
    return {
        "name": name,
        "n_kept": n_kept,
        "total_lambda": _r(total),
        "positions_shape": shape,
        "features": features,
    }


def _section(rng, source, target, n_edges):
    n_src, n_dst = len(source["features"]), len(target["features"])
    n_edges = min(n_edges, n_src * n_dst)
    pairs = rng.choice(n_src * n_dst, size=n_edges, replace=False)
    weights = rng.lognormal(0, 1.5, n_edges)
    return {
        "source": source["name"],
        "target": target["name"],
        "src": (pairs // n_dst).tolist(),
        "dst": (pairs % n_dst).tolist(),
        "weight": [_r(w) for w in weights],
    }


def _link(nodes, sections):
    """Each feature's strongest incoming and outgoing edges, from the sections."""
    by_name = {node["name"]: node for node in nodes}
    for section in sections:
        source, target = by_name[section["source"]], by_name[section["target"]]
        order = np.argsort(section["weight"])[::-1]
        for e in order:
            a, b, w = section["src"][e], section["dst"][e], section["weight"][e]
            out, into = source["features"][a]["outgoing"], target["features"][b]["incoming"]
            if len(out) < TOP_EDGES:
                out.append([target["name"], b, w])
            if len(into) < TOP_EDGES:
                into.append([source["name"], a, w])
    if len(nodes) > 1:  # an edge to a kept feature that is not shown: plain text on the page
        nodes[0]["features"][0]["outgoing"].append([nodes[1]["name"], nodes[1]["n_kept"] - 1, 0.01])


def _view(kind, rng, v, n_nodes, n_features, n_examples, edges_per_section):
    name, basis = VIEWS[v] if v < len(VIEWS) else (f"View{v}", "lib")
    names = [f"transformer.h.{i}" for i in range(n_nodes - 1)] + ["output"]
    nodes = [_node(kind, rng, names[i], i, n_features, n_examples) for i in range(n_nodes)]
    # Views differ in their edges: the view-switch test tells them apart by the count.
    n_edges = edges_per_section or max(1, (n_features * n_features) // (3 + v))
    sections = [_section(rng, a, b, n_edges) for a, b in zip(nodes[:-1], nodes[1:])]
    _link(nodes, sections)
    return {
        "name": name,
        "basis": basis,
        "nodes": nodes,
        "sections": sections,
        "modularity": 0.42 if v == 0 else None,
        "ablation": {"metric": "accuracy", "baseline": 0.97},
    }


def make_payload(
    kind="tokens",
    n_views=1,
    n_nodes=3,
    n_features=8,
    n_examples=5,
    edges_per_section=None,
    seed=0,
):
    """A valid dashboard payload of ``n_views`` views ("LIB", "PCA", ...).

    ``edges_per_section`` edges join each pair of consecutive node layers
    (at most ``n_features ** 2``; by default a third of them in the first
    view, a quarter in the second, ...).
    """
    rng = np.random.default_rng(seed)
    views = [
        _view(kind, rng, v, n_nodes, n_features, n_examples, edges_per_section)
        for v in range(n_views)
    ]
    return {
        "title": f"Synthetic {kind} dashboard <b>&amp;</b>",
        "version": "0.1.0",
        "input": _input(kind),
        "views": views,
        "notes": [
            "Ablation: accuracy change when the feature alone is mean-ablated.",
            "Synthetic data for the tests <i>not HTML</i>.",
        ],
    }


def count_features(payload, view=None):
    """How many feature cards the page should hold (of one view, or all)."""
    return sum(
        len(node["features"])
        for v in payload["views"]
        if view is None or v["name"] == view
        for node in v["nodes"]
    )


def count_edges(payload, view):
    """How many edges a view's sections hold."""
    (spec,) = [v for v in payload["views"] if v["name"] == view]
    return sum(len(section["weight"]) for section in spec["sections"])
