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

import numpy as np

from .ablate import FeatureAblation, check_label_order
from .graph import InteractionGraph
from .top_examples import ImageTiles, SampleInputs, TokenContexts, TopExamples, token_ids

__all__ = [
    "TokenStrings",
    "choose_recorder",
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


def choose_recorder(kind, x, context, image_shape=None):
    """What examples keep of their inputs, for ``kind`` (``"auto"``: by the first batch
    ``x``: token ids make ``"tokens"``, else ``"image"`` or ``"tabular"`` as
    :func:`image_like` says).  Returns ``(kind, recorder)``."""
    if kind == "auto":
        kind = "tokens" if token_ids(x) is not None else ("image" if image_like(x) else "tabular")
    if kind == "tokens":
        return kind, TokenContexts(*context)
    if kind == "image":
        return kind, ImageTiles(image_shape)
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

    def __init__(self, kind, context, image_shape):
        self.kind, self.context, self.image_shape = kind, context, image_shape
        self.recorder = None

    def records(self, x, features, samples, positions):
        if self.recorder is None:
            self.kind, self.recorder = choose_recorder(self.kind, x, self.context, self.image_shape)
        return self.recorder.records(x, features, samples, positions)


def search_features(session, source, bases, features, n_examples, *, options):
    """One pass: the strongest examples of ``features`` of each of ``bases`` and, with
    ``options["ablation"]``, each feature's score change when mean-ablated alone.

    Returns ``(examples, kind, ablations)``: ``{node: FeatureExamples}``, the input
    kind, and ``{node: (baseline, changes)}`` (empty without ablation).
    """
    recorder = _LazyRecorder(options["input_kind"], options["context"], options["image_shape"])
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
    with np.errstate(over="ignore", invalid="ignore"):
        magnitude = np.floor(np.log10(np.abs(a), where=a != 0, out=np.zeros_like(a)))
        scale = 10.0 ** (digits - 1 - magnitude)
        out = np.round(a * scale) / scale
    # Subnormal numbers overflow the scale: they stay as they are.
    return np.where(np.isfinite(out), out, a).tolist()


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


def _token_examples(found, strings, before):
    """``fields(f, e)``: the kind-specific fields of example ``e`` of feature ``f``, a
    token context (``before`` tokens were kept before the example's own)."""
    ids, values = found.records
    real = ids >= 0
    # One rounding for the node: the page shows 3 digits of each token's value.
    shown = rounded(np.nan_to_num(values), 3)
    width = ids.shape[-1]

    def fields(f, e):
        keep = real[f, e]
        own = before < width and keep[before] and not np.isnan(values[f, e, before])
        return {
            "context": strings(ids[f, e][keep]),
            "context_values": [v for v, k in zip(shown[f][e], keep) if k],
            # The example's own token among the real ones (-1: a node without positions).
            "focus": int(keep[:before].sum()) if own else -1,
        }

    return fields


def _image_example(found, f, e):
    """The kind-specific fields of an image example: its tile's bytes, ``(h, w, C)``."""
    return {"pixels": base64.b64encode(found.records[0][f, e].tobytes()).decode("ascii")}


def _examples(found, f, fields, values):
    """The payload of feature ``f``'s examples, strongest first (``values`` rounded)."""
    return [
        {
            "sample": int(found.samples[f, e]),
            "position": found.positions[f, e].tolist(),
            "value": values[f][e],
            **fields(f, e),
        }
        for e in range(found.values.shape[1])
    ]


def renderer(kind, *, strings=None, before=0):
    """``prepare(found) -> fields(f, e)``: what renders an example's input-specific
    fields, for ``kind``, prepared once per node."""
    if kind == "tokens":
        return lambda found: _token_examples(found, strings, before)
    if kind == "image":
        return lambda found: lambda f, e: _image_example(found, f, e)

    def rows(found):
        shown = rounded(found.records[0][:, :, :64])
        return lambda f, e: {"row": shown[f][e]}

    return rows


def _histogram(edges, counts):
    """The page's histogram; its edges with digits enough to keep neighbours apart (a
    narrow range far from 0, ``100.00`` to ``100.05``, needs more than 4)."""
    scale = np.abs(edges).max() / np.diff(edges).min()
    digits = int(np.clip(3 + np.ceil(np.log10(max(scale, 1.0))), 4, 17))
    return {"edges": rounded(edges, digits), "counts": [int(c) for c in counts]}


def subgraph(graph, nodes, features):
    """``graph`` cut to the shown ``features`` of the shown ``nodes`` (a dict); None where
    no two shown nodes are a section of it.

    Shown nodes that are not consecutive in ``graph`` (a node layer left out between
    them) have no edges between them: zeros, which no module, card or drawing reads.
    """
    nodes = [n for n in graph.nodes if n in nodes]
    pairs = list(zip(nodes, nodes[1:]))
    if not any(pair in graph.edges for pair in pairs):
        return None
    edges = {
        (a, b): graph.edges[(a, b)][np.ix_(features[b], features[a])]
        if (a, b) in graph.edges
        else np.zeros((len(features[b]), len(features[a])))
        for a, b in pairs
    }
    lambdas = {n: graph.lambdas[n][features[n]] for n in nodes}
    return InteractionGraph(nodes, lambdas, edges, dict(graph.info))


def _neighbours(graph, node, features):
    """``(incoming, outgoing)`` of each shown feature of ``node``, by its position: the
    strongest nonzero edges, ``[[node, feature index, weight], ...]`` per feature."""
    n = len(features[node])
    found = ([[] for _ in range(n)], [[] for _ in range(n)])
    for (a, b), E in graph.edges.items() if graph is not None else ():
        for side, (other, weights) in enumerate([(a, E), (b, E.T)]):
            if (b, a)[side] != node:
                continue
            # (n, k): each feature's strongest k edges, ties in index order.
            top = np.argsort(-weights, axis=1, kind="stable")[:, :N_NEIGHBOURS]
            picked = np.take_along_axis(weights, top, 1)
            shown = rounded(picked)
            for i in range(n):
                found[side][i] += [
                    (other, int(features[other][j]), w, r)
                    for j, w, r in zip(top[i], picked[i], shown[i])
                    if w > 0
                ]
    return tuple(
        [
            [[o, j, r] for o, j, _, r in sorted(edges, key=lambda t: -t[2])[:N_NEIGHBOURS]]
            for edges in side
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
    examples : dict of str to (FeatureExamples, prepare)
        Per node, its search result and :func:`renderer`'s function for its
        examples' input-specific fields.
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
        if not dst.size:  # nodes with a layer left out between them: no section
            continue
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
    found, prepare = searched
    lambdas = np.asarray(basis.lambdas[: basis.n_components])
    total = float(lambdas.sum())
    chosen = lambdas[found.features]
    # Rounded once per node: a page of hundreds of cards rounds whole arrays.
    shown = {
        "lambda": rounded(chosen),
        "share": rounded(chosen / total if total > 0 else np.zeros_like(chosen)),
        "ablation": None if ablation is None else rounded(ablation["scores"][basis.name][1]),
    }
    values, fields = rounded(found.values), prepare(found)
    incoming, outgoing = _neighbours(graph, basis.name, features)
    cards = [
        {
            "index": int(index),
            "lambda": shown["lambda"][f],
            "share": shown["share"][f],
            "module": None if modules is None else int(modules.labels[basis.name][f]),
            "histogram": _histogram(*found.histograms[f]),
            "ablation": None if shown["ablation"] is None else shown["ablation"][f],
            "incoming": incoming[f],
            "outgoing": outgoing[f],
            "examples": _examples(found, f, fields, values),
        }
        for f, index in enumerate(found.features)
    ]
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
