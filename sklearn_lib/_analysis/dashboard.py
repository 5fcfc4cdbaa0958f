"""The data of a feature dashboard: each feature's examples, histogram, edges and ablation.

:func:`search_features` runs the one pass a view needs (the strongest
examples of the shown features and, optionally, each feature's ablation);
:func:`view_payload` and :func:`page_payload` turn the results, the bases
and the interaction graph into the page's JSON-able payload (its schema:
:mod:`~sklearn_lib._drawing.dashboard_page`).  Numbers are rounded to a
few significant digits: the page shows them, and a file of three node
layers of 64 features with 20 token contexts each stays well under 5 MB.
"""

import base64
from numbers import Integral

import numpy as np

from .ablate import FeatureAblation, check_label_order
from .graph import InteractionGraph
from .top_examples import SampleInputs, TokenContexts, TopExamples, token_ids

__all__ = [
    "TokenStrings",
    "choose_recorder",
    "image_layout",
    "page_payload",
    "renderer",
    "search_features",
    "shown_features",
    "view_payload",
]

#: Strongest incoming and outgoing edges listed on each card.
N_NEIGHBOURS = 5


def shown_features(basis, n_features):
    """The ``n_features`` kept features of ``basis`` of largest ``Lambda`` (ties in index
    order): ``0 .. n - 1`` for a LIB or PCA basis, whose features are sorted."""
    kept = np.asarray(basis.lambdas[: basis.n_components])
    return np.sort(np.argsort(-kept, kind="stable")[:n_features])


def choose_recorder(kind, x, context):
    """What examples keep of their inputs, for ``kind`` (``"auto"``: by the first batch
    ``x``: token ids make ``"tokens"``, else ``"image"`` or ``"tabular"`` as
    :func:`image_like` says).  Returns ``(kind, recorder)``."""
    if kind == "auto":
        kind = "tokens" if token_ids(x) is not None else ("image" if image_like(x) else "tabular")
    if kind == "tokens":
        return kind, TokenContexts(*context)
    return kind, SampleInputs()


def image_like(x):
    """Whether a batch's samples look like images: ``(H, W)``, or ``(C, H, W)`` /
    ``(H, W, C)`` with 1 or 3 channels, floating."""
    shape = tuple(getattr(x, "shape", ()))[1:]
    if not getattr(x, "is_floating_point", lambda: False)() or len(shape) not in (2, 3):
        return False
    return len(shape) == 2 or shape[0] in (1, 3) or shape[-1] in (1, 3)


class _LazyRecorder:
    """Chooses what to record on the first batch (the decision, once), then records it."""

    def __init__(self, kind, context):
        self.kind, self.context, self.recorder = kind, context, None

    def records(self, x, features, samples, positions):
        if self.recorder is None:
            self.kind, self.recorder = choose_recorder(self.kind, x, self.context)
        return self.recorder.records(x, features, samples, positions)


def search_features(session, source, bases, features, n_examples, *, options):
    """One pass: the strongest examples of ``features`` of each of ``bases`` and, with
    ``options["ablation"]``, each feature's score change when mean-ablated alone.

    Returns ``(examples, kind, ablations)``: ``{node: FeatureExamples}``, the input
    kind, and ``{node: (baseline, changes)}`` (empty without ablation).
    """
    recorder = _LazyRecorder(options["input_kind"], options["context"])
    top = TopExamples(bases, features, n_examples, recorder, session.device)
    accs = [top]
    if options["ablation"]:
        check_label_order(source, options["y"])
        accs += [
            FeatureAblation(
                session,
                basis,
                chosen,
                y=options["y"],
                scoring=options["scoring"],
                n_samples=source.n_samples,
            )
            for basis, chosen in zip(bases, features)
        ]
    examples, *scores = session.run_pass(source, accs, "feature dashboard")
    ablations = {b.name: (float(s[0]), s[1:] - s[0]) for b, s in zip(bases, scores)}
    return examples, recorder.kind, ablations


def rounded(values, digits=4):
    """``values`` (array-like) rounded to ``digits`` significant digits, as a list of
    Python numbers: short in JSON, and as precise as a page shows them."""
    a = np.asarray(values, dtype=np.float64)
    magnitude = np.floor(np.log10(np.abs(a), where=a != 0, out=np.zeros_like(a)))
    scale = 10.0 ** (digits - 1 - magnitude)
    return (np.round(a * scale) / scale).tolist()


class TokenStrings:
    """The page's table of token strings: each id used gets one entry.

    Parameters
    ----------
    tokenizer : None, sequence of str, or an object with ``decode`` or
        ``convert_ids_to_tokens``
        None shows ids (``"#17"``); a sequence is a vocabulary indexed by id.
    """

    def __init__(self, tokenizer):
        self.tokenizer, self.strings, self.index = tokenizer, [], {}

    def __call__(self, ids):
        """Indices into :attr:`strings` of ``ids`` (an iterable of ints)."""
        return [self._entry(int(i)) for i in ids]

    def _entry(self, token):
        if token not in self.index:
            self.index[token] = len(self.strings)
            self.strings.append(self._decode(token))
        return self.index[token]

    def _decode(self, token):
        tokenizer = self.tokenizer
        if tokenizer is None:
            return f"#{token}"
        if hasattr(tokenizer, "decode"):
            return str(tokenizer.decode([token]))
        if hasattr(tokenizer, "convert_ids_to_tokens"):
            return str(tokenizer.convert_ids_to_tokens(token))
        if 0 <= token < len(tokenizer):
            return str(tokenizer[token])
        raise ValueError(f"token id {token} is beyond the vocabulary's {len(tokenizer)} strings")


def _token_example(found, f, e, strings, before):
    """The kind-specific fields of example ``e`` of feature ``f``: a token context
    (``before`` tokens were kept before the example's own)."""
    ids, values = found.records[0][f, e], found.records[1][f, e]
    real = ids >= 0
    own = real[before] if before < len(real) else False
    return {
        "context": strings(ids[real]),
        "context_values": rounded(np.nan_to_num(values[real]), 3),
        # The example's own token among the real ones (-1: a node without positions).
        "focus": int(real[:before].sum()) if own and not np.isnan(values[before]) else -1,
    }


def _image_example(found, f, e, image_shape):
    """The kind-specific fields of an image example: its pixels, scaled to 0..255 by
    the tile's own range (a tile shows its pattern, whatever the inputs' units)."""
    pixels = found.records[0][f, e].astype(np.float64)
    low, high = pixels.min(), pixels.max()
    scaled = np.zeros_like(pixels) if high == low else (pixels - low) / (high - low) * 255
    tile = _channels_last(scaled.round().astype(np.uint8), image_shape)
    return {"pixels": base64.b64encode(tile.tobytes()).decode("ascii")}


def image_layout(shape):
    """``((H, W, C), channels_first)`` of images of per-sample ``shape``: ``(H, W)``,
    ``(H, W, C)``, or ``(C, H, W)`` where the first axis is 1 or 3 and the last not."""
    if len(shape) == 2:
        return (*shape, 1), False
    if shape[0] in (1, 3) and shape[-1] not in (1, 3):
        return (*shape[1:], shape[0]), True
    return tuple(shape), False


def _channels_last(flat, image_shape):
    """A flattened sample as ``(H, W, C)`` bytes."""
    layout, channels_first = image_layout(image_shape)
    if channels_first:
        return np.moveaxis(flat.reshape(image_shape), 0, -1)
    return flat.reshape(layout)


def _examples(found, f, render):
    """The payload of feature ``f``'s examples, strongest first."""
    out = []
    for e in range(found.values.shape[1]):
        example = {
            "sample": int(found.samples[f, e]),
            "position": found.positions[f, e].tolist(),
            "value": rounded([found.values[f, e]])[0],
        }
        example.update(render(found, f, e))
        out.append(example)
    return out


def renderer(kind, *, strings=None, before=0, image_shape=None):
    """The function that renders an example's input-specific fields, for ``kind``."""
    if kind == "tokens":
        return lambda found, f, e: _token_example(found, f, e, strings, before)
    if kind == "image":
        return lambda found, f, e: _image_example(found, f, e, image_shape)
    return lambda found, f, e: {"row": rounded(found.records[0][f, e][:64])}


def _histogram(edges, counts):
    return {"edges": rounded(edges), "counts": [int(c) for c in counts]}


def subgraph(graph, nodes, features):
    """``graph`` cut to the shown ``features`` of the shown ``nodes`` (a dict), keeping
    the sections between consecutive shown nodes; None where no section is left."""
    nodes = [n for n in graph.nodes if n in nodes]
    edges = {
        (a, b): graph.edges[(a, b)][np.ix_(features[b], features[a])]
        for a, b in zip(nodes, nodes[1:])
        if (a, b) in graph.edges
    }
    if not edges:
        return None
    lambdas = {n: graph.lambdas[n][features[n]] for n in nodes}
    return InteractionGraph(nodes, lambdas, edges, dict(graph.info))


def _neighbours(graph, node, features, position):
    """``(incoming, outgoing)`` of the shown feature at ``position`` of ``node``: the
    strongest nonzero edges, ``[[node, feature index, weight], ...]``."""
    found = ([], [])
    for (a, b), E in graph.edges.items() if graph is not None else ():
        if b == node:
            found[0].extend((a, int(features[a][j]), w) for j, w in enumerate(E[position]))
        if a == node:
            found[1].extend((b, int(features[b][i]), w) for i, w in enumerate(E[:, position]))
    return tuple(
        [[n, j, rounded([w])[0]] for n, j, w in sorted(side, key=lambda t: -t[2]) if w > 0][
            :N_NEIGHBOURS
        ]
        for side in found
    )


def view_payload(name, bases, examples, *, graph=None, modules=None, ablation=None):
    """One view of the page (see the schema in
    :mod:`~sklearn_lib._drawing.dashboard_page`).

    Parameters
    ----------
    name : str
    bases : dict of str to NodeBasis
        The shown node layers' bases, in forward order.
    examples : dict of str to (FeatureExamples, render)
        Per node, its search result and the function rendering an example's
        input-specific fields.
    graph : InteractionGraph or None
        Already cut to the shown features (:func:`subgraph`).
    modules : GraphModules or None
        Of ``graph``.
    ablation : dict or None
        ``{"metric": str, "scores": {node: (baseline, changes)}}``.
    """
    features = {node: examples[node][0].features for node in bases}
    nodes = [
        _node_payload(basis, examples[basis.name], features, graph, modules, ablation)
        for basis in bases.values()
    ]
    sections = []
    for (a, b), E in graph.edges.items() if graph is not None else ():
        dst, src = np.nonzero(E)
        sections.append(
            {
                "source": a,
                "target": b,
                "src": features[a][src].tolist(),
                "dst": features[b][dst].tolist(),
                "weight": rounded(E[dst, src]),
            }
        )
    baselines = [s[0] for s in (ablation or {}).get("scores", {}).values()]
    return {
        "name": name,
        "basis": next(iter(bases.values())).kind,
        "nodes": nodes,
        "sections": sections,
        "modularity": None if modules is None else rounded([modules.modularity])[0],
        "ablation": None
        if ablation is None
        else {"metric": ablation["metric"], "baseline": rounded(baselines[:1] or [0.0])[0]},
    }


def _node_payload(basis, searched, features, graph, modules, ablation):
    found, render = searched
    lambdas = np.asarray(basis.lambdas[: basis.n_components])
    total = float(lambdas.sum())
    cards = []
    for f, index in enumerate(found.features):
        incoming, outgoing = _neighbours(graph, basis.name, features, f)
        changes = None if ablation is None else ablation["scores"][basis.name][1]
        cards.append(
            {
                "index": int(index),
                "lambda": rounded([lambdas[index]])[0],
                "share": rounded([lambdas[index] / total if total > 0 else 0.0])[0],
                "module": None if modules is None else int(modules.labels[basis.name][f]),
                "histogram": _histogram(*found.histograms[f]),
                "ablation": None if changes is None else rounded([changes[f]])[0],
                "incoming": incoming,
                "outgoing": outgoing,
                "examples": _examples(found, f, render),
            }
        )
    return {
        "name": basis.name,
        "n_kept": int(basis.n_components),
        "total_lambda": rounded([total])[0],
        "positions_shape": [int(p) for p in basis.shape[:-1]],
        "features": cards,
    }


def page_payload(title, version, kind, views, *, notes=(), extra=None):
    """The whole page: ``input`` is ``{"kind": kind, **extra}``."""
    if not isinstance(title, str):
        raise TypeError(f"title must be a str; got {type(title).__name__}")
    return {
        "title": title,
        "version": version,
        "input": {"kind": kind, **(extra or {})},
        "views": list(views),
        "notes": [str(n) for n in notes],
    }


def check_count(value, name):
    """``value`` as an int >= 1, or a ValueError/TypeError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name}={value} must be at least 1")
    return int(value)
