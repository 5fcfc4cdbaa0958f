"""Feature dashboards: what each feature responds to and what it talks to, in one HTML file.

:class:`FeatureDashboard` follows the package's Display conventions: its
constructor holds the data the page shows, :meth:`FeatureDashboard.from_estimator`
computes them from a fitted estimator and data, and
:meth:`FeatureDashboard.save_html` writes the page: one self-contained,
offline file (no server, no network request), with a card per feature and
an interactive explorer of the interaction graph.
"""

import html
import pathlib
from collections.abc import Mapping, Sequence
from importlib import metadata
from numbers import Integral

import numpy as np

from ._analysis.dashboard import (
    TokenStrings,
    page_payload,
    renderer,
    search_features,
    shown_features,
    subgraph,
    view_payload,
)
from ._analysis.graph import InteractionGraph
from ._analysis.scoring import SCORINGS
from ._core.nodes import OUTPUT_NODE
from ._core.validation import check_count
from ._drawing.dashboard_page import render_page
from ._fitted import fitted

__all__ = ["FeatureDashboard"]

_KINDS = ("auto", "tokens", "image", "tabular")


class FeatureDashboard:
    """Feature dashboards and an interaction-graph explorer, as one offline HTML page.

    For each shown feature of each node layer, a card gives its ``Lambda``
    and share of the layer's importance, a histogram of its values, its
    strongest examples (token contexts with per-token highlighting, image
    tiles, or table rows), its strongest incoming and outgoing edges as
    links, and optionally the score change when it alone is mean-ablated.
    The explorer draws node layers as columns and features as dots on a
    canvas, with zoom and pan, a slider filtering edges by strength, and
    the graph's modules as colours; clicking a dot opens its card.

    Build it with :meth:`from_estimator`; the constructor takes data already
    computed.

    Parameters
    ----------
    data : dict
        The page's payload (its schema:
        ``sklearn_lib._drawing.dashboard_page``).
    examples : dict, default=None
        ``{view: {node: FeatureExamples}}``, the searches behind the page, as
        arrays: each feature's ``values``, ``samples`` and ``positions`` of
        its strongest examples, and its histogram.

    Attributes
    ----------
    data : dict
    examples : dict

    See Also
    --------
    InteractionGraphDisplay : A static drawing of the graph.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from sklearn.datasets import load_digits
    >>> from sklearn_lib import FeatureDashboard, LIBTransformer
    >>> X = load_digits().data[:200] / 16
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> nn = torch.nn
    >>> model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    >>> lib = LIBTransformer(model, "1", downstream_layers=["2"]).fit(X)
    >>> dashboard = FeatureDashboard.from_estimator(
    ...     lib, X, n_features=4, n_examples=3, image_shape=(8, 8))
    >>> [node["name"] for node in dashboard.data["views"][0]["nodes"]]
    ['1', '2']
    >>> dashboard.save_html("digits.html")  # doctest: +SKIP
    PosixPath('digits.html')
    """

    def __init__(self, data, examples=None):
        self.data = data
        self.examples = {} if examples is None else examples

    @classmethod
    def from_estimator(
        cls,
        estimator,
        X,
        y=None,
        *,
        layers=None,
        n_features=16,
        n_examples=20,
        compare=None,
        graph="auto",
        ablation=False,
        scoring=None,
        input_kind="auto",
        tokenizer=None,
        image_shape=None,
        columns=None,
        context=(12, 4),
        title=None,
        verbose=False,
    ):
        """Compute a dashboard of ``estimator``'s features over ``X``.

        One pass over ``X`` per view finds the strongest examples of each
        shown feature (the largest ``|value|``; positions of sequences and
        locations of conv maps count one by one, padding never) and each
        feature's histogram, in memory that does not grow with ``X``; with
        ``ablation=True`` the same pass scores the model with each feature
        mean-ablated alone.

        Parameters
        ----------
        estimator : LIBTransformer
            Fitted, with any ``basis`` (``"lib"`` or ``"pca"``).
        X : array-like, dict of them, DataLoader or iterable of batches
            Model inputs, in any form the estimator takes.
        y : array-like, default=None
            Labels, for the ablation's accuracy (``scoring`` as in
            :func:`~sklearn_lib.ablation_curve`).
        layers : list of str, default=None
            Node layers shown, in forward order: None shows every node layer
            of the estimator (its ``layer`` and ``downstream_layers``); add
            ``"output"`` for the output node.
        n_features : int, default=16
            Features shown per node layer: those of largest ``Lambda``.
        n_examples : int, default=20
            Examples kept per feature.
        compare : LIBTransformer or dict of str to LIBTransformer, default=None
            More views, side by side with the first (e.g. a
            ``LIBTransformer(..., basis="pca")`` of the same layer); a dict
            names them.  Views are named by their basis (``"LIB"``, ``"PCA"``)
            otherwise.
        graph : "auto", None, InteractionGraph or dict, default="auto"
            The interaction graph of the explorer and of each card's edges:
            ``"auto"`` uses the estimator's ``interaction_graph_`` (from
            ``compute_graph=True``) or computes ``interaction_graph(X)``;
            None shows no edges; a graph is the first view's (the others
            ``"auto"``); a dict gives each view's by its name (a name that is
            no view's is refused; views it leaves out are ``"auto"``).  A
            graph must be of the view's estimator: its ``Lambda`` are
            compared.  Shown node layers with one left out between them have
            no edges between them.
        ablation : bool, default=False
            Score each shown feature mean-ablated alone (one model run of the
            rest of the model per feature and batch).
        scoring : None, "accuracy", "r2" or callable, default=None
            The ablation's score, as in :func:`~sklearn_lib.ablation_curve`.
        input_kind : {"auto", "tokens", "image", "tabular"}, default="auto"
            How examples show their inputs: ``"auto"`` takes integer
            ``(n, T)`` inputs (or an ``input_ids`` field) as tokens, floating
            inputs of per-sample shape ``(H, W)``, ``(C, H, W)`` or
            ``(H, W, C)`` (1 or 3 channels) as images, anything else as rows.
        tokenizer : None, sequence of str, or tokenizer, default=None
            Decodes token ids: a Hugging Face tokenizer (``decode``), or a
            vocabulary list indexed by id; None shows the ids.
        image_shape : tuple of int, default=None
            The per-sample shape of image inputs, where they come flattened
            (``(8, 8)`` for scikit-learn's digits); implies
            ``input_kind="image"``.  Each example keeps its image as a tile
            of bytes, scaled by its own range and averaged down to at most 64
            pixels a side (memory and the page stay small for large images).
        columns : list of str, default=None
            Names of the inputs' values, for table rows (the first 64 values
            are kept and shown).
        context : (int, int), default=(12, 4)
            Tokens shown before and after an example's own.
        title : str, default=None
            The page's title (default: the model's class and the layer).
        verbose : bool, default=False
            Progress of the passes.

        Returns
        -------
        FeatureDashboard

        Notes
        -----
        A feature's values are ``(f - mean_) @ components_.T`` of its node,
        unwhitened (``whiten`` only rescales them, which changes no ranking).
        Each histogram has 40 bins over a range found while streaming: it
        starts at the first batch's and doubles toward values beyond it, so
        its bins, not its counts, depend on how ``X`` is batched.
        """
        options = _options(locals())
        states = _views(estimator, compare)
        options["first_view"] = next(iter(states))
        _check_graph_names(options["graph"], states)
        options["strings"] = TokenStrings(tokenizer)  # one table for every view
        views, examples, kinds = [], {}, set()
        for name, state in states.items():
            view, found, kind = _view(name, state, X, options)
            views.append(view)
            examples[name] = found
            kinds.add(kind)
        (kind,) = kinds  # one X: one decision
        data = page_payload(
            options["title"] or _title(states[options["first_view"]].owner),
            _version(),
            kind,
            views,
            notes=_notes(options),
            extra=_input_fields(kind, states[options["first_view"]].owner, options, examples),
        )
        return cls(data, examples)

    def to_html(self):
        """The page: one self-contained HTML document (a str)."""
        return render_page(self.data)

    def save_html(self, path):
        """Write the page to ``path`` (UTF-8); returns the path as a ``pathlib.Path``."""
        path = pathlib.Path(path)
        path.write_text(self.to_html(), encoding="utf-8")
        return path

    def _repr_html_(self):
        # A notebook shows the page in a frame of its own, so its script and
        # styles stay out of the notebook's.
        page = html.escape(self.to_html(), quote=True)
        return f'<iframe srcdoc="{page}" style="width: 100%; height: 720px; border: 0"></iframe>'

    def __repr__(self):
        views = ", ".join(v["name"] for v in self.data.get("views", []))
        return f"FeatureDashboard(views=[{views}], input={self.data.get('input', {}).get('kind')})"


def _options(given):
    """The keyword arguments of :meth:`FeatureDashboard.from_estimator`, checked."""
    options = {k: v for k, v in given.items() if k not in ("cls", "estimator", "X", "compare")}
    options["n_features"] = check_count(options["n_features"], "n_features")
    options["n_examples"] = check_count(options["n_examples"], "n_examples")
    if options["image_shape"] is not None:
        options["image_shape"] = _image_shape(options["image_shape"])
        if options["input_kind"] == "auto":
            options["input_kind"] = "image"
    if options["input_kind"] not in _KINDS:
        raise ValueError(f"input_kind must be one of {_KINDS}; got {options['input_kind']!r}")
    options["context"] = _context(options["context"])
    if not (options["scoring"] is None or options["scoring"] in SCORINGS):
        if not callable(options["scoring"]):
            raise ValueError(
                f"scoring must be None, one of {sorted(SCORINGS)} or a callable; "
                f"got {options['scoring']!r}"
            )
    if not isinstance(options["ablation"], bool):
        raise TypeError(f"ablation must be True or False; got {options['ablation']!r}")
    _check_layers(options["layers"])
    return options


def _image_shape(shape):
    return _ints(
        shape, (2, 3), 1, "image_shape must be (H, W), (H, W, C) or (C, H, W) of positive ints"
    )


def _context(context):
    return _ints(context, (2,), 0, "context must be (tokens before, tokens after), two ints >= 0")


def _ints(value, lengths, least, message):
    """``value`` as a tuple of ints of one of ``lengths``, each ``>= least``; else a
    ValueError saying ``message`` and what was given."""
    if not (
        isinstance(value, Sequence)
        and len(value) in lengths
        and all(isinstance(v, Integral) and not isinstance(v, bool) and v >= least for v in value)
    ):
        raise ValueError(f"{message}; got {value!r}")
    return tuple(int(v) for v in value)


def _check_layers(layers):
    if layers is None:
        return
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise TypeError(f"layers must be a non-empty list of node layer names; got {layers!r}")


def _views(estimator, compare):
    """``{view name: Fitted}`` of each estimator, the given one first: each is one fit's
    state, read once (a refit in another thread changes none of them)."""
    views = {}
    others = {} if compare is None else compare
    if not isinstance(others, Mapping):
        others = {None: others}
    for name, est in [(None, estimator), *others.items()]:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"compare's names must be strs; got {name!r}")
        state = _lib_state(est)
        name = state.owner.basis.upper() if name is None else name
        base, n = name, 2
        while name in views:  # a name of its own, never another view's
            name, n = f"{base} ({n})", n + 1
        views[name] = state
    return views


def _lib_state(estimator):
    state = fitted(estimator)
    if not state.is_lib:
        raise TypeError(
            "FeatureDashboard needs a fitted LIBTransformer (basis='lib' or 'pca'); for a "
            "PCA baseline use LIBTransformer(model, layer, basis='pca')"
        )
    return state


def _view(name, state, X, options):
    """One view's payload, its searches, and the input kind they found."""
    bases = {node: state.bases[node] for node in _nodes(state, options["layers"])}
    features = {node: shown_features(b, options["n_features"]) for node, b in bases.items()}
    found, kind, scores = search_features(
        state.session(verbose=options["verbose"]),
        state.source(X),
        list(bases.values()),
        list(features.values()),
        options["n_examples"],
        options=options,
    )
    graph = _graph(name, state.owner, X, options)
    cut = None if graph is None else subgraph(graph, bases, features)
    render = renderer(
        kind,
        strings=options["strings"],
        before=options["context"][0],
    )
    view = view_payload(
        name,
        bases,
        {node: (found[node], render) for node in bases},
        graph=cut,
        modules=_modules(cut),
        ablation={"metric": _metric(options), "scores": scores} if options["ablation"] else None,
    )
    return view, found, kind


def _nodes(state, layers):
    fitted_nodes = list(state.bases)
    if layers is None:
        return [n for n in fitted_nodes if n != OUTPUT_NODE]
    unknown = [n for n in layers if n not in fitted_nodes]
    if unknown:
        raise ValueError(f"layers {unknown} are not node layers of the fit: {fitted_nodes}")
    return [n for n in fitted_nodes if n in layers]


def _graph(name, estimator, X, options):
    """The view's interaction graph (see ``graph`` of :meth:`FeatureDashboard.from_estimator`)."""
    graph = options["graph"]
    if isinstance(graph, Mapping):
        graph = graph.get(name, "auto")
    elif isinstance(graph, InteractionGraph) and name != options["first_view"]:
        graph = "auto"  # one graph is the first estimator's: another's edges differ
    if graph is None:
        return None
    if isinstance(graph, InteractionGraph):
        return _of_estimator(graph, estimator, name)
    if graph != "auto":
        raise ValueError(
            f"graph must be 'auto', None, an InteractionGraph or a dict of them; got {graph!r}"
        )
    made = getattr(estimator, "interaction_graph_", None)
    if made is not None:
        return made
    return estimator.interaction_graph(X, verbose=options["verbose"])


def _check_graph_names(graph, views):
    """A dict ``graph`` names views that exist (a misspelt name would quietly compute
    that view's graph)."""
    if isinstance(graph, Mapping):
        unknown = [name for name in graph if name not in views]
        if unknown:
            raise ValueError(
                f"graph names views {unknown} that the dashboard does not have; its views "
                f"are {list(views)}"
            )


def _of_estimator(graph, estimator, name):
    """``graph``, if its nodes' ``Lambda`` are those of ``estimator``'s bases; else a
    ValueError (a graph of another fit would put its edges on these features)."""
    for node, lambdas in graph.lambdas.items():
        basis = estimator.bases_.get(node)
        if basis is None:
            continue
        kept = np.asarray(basis.lambdas[: basis.n_components])
        if lambdas.shape != kept.shape or not np.allclose(lambdas, kept, rtol=1e-6, atol=0):
            raise ValueError(
                f"The graph given for view {name!r} is not of its estimator: its Lambda of "
                f"{node!r} differ from the fit's (a graph of another fit or basis). Pass "
                "graph='auto', or the estimator's own interaction_graph(X)"
            )
    return graph


def _modules(graph):
    """The graph's modules, or None where it has no edge to find them by."""
    if graph is None or not any(E.any() for E in graph.edges.values()):
        return None
    return graph.modules(random_state=0)


def _metric(options):
    scoring = options["scoring"]
    if callable(scoring):
        return getattr(scoring, "__name__", "score")
    if scoring is None:
        return "accuracy" if options["y"] is not None else "R²"
    return {"r2": "R²"}.get(scoring, scoring)


def _input_fields(kind, estimator, options, examples):
    """The page's ``input`` entries beside its kind."""
    if kind == "tokens":
        return {"token_strings": options["strings"].strings}
    if kind == "image":  # the tiles' shape, (h, w, C), as the examples keep them
        found = next(iter(next(iter(examples.values())).values()))
        return {"image_shape": list(found.records[0].shape[2:])}
    width = getattr(estimator, "n_features_in_", None) or 0
    names = options["columns"] or [f"x{i}" for i in range(min(width, 64))]
    return {"columns": [str(c) for c in names][:64]}


def _title(estimator):
    model = getattr(estimator, "model", None)
    return f"{type(model).__name__}: features of {estimator.layer!r}"


def _notes(options):
    notes = [
        f"The {options['n_features']} features of largest Lambda per node layer; each "
        f"feature's {options['n_examples']} strongest examples (largest |value|)."
    ]
    if options["ablation"]:
        notes.append(
            f"Ablation: the change of {_metric(options)} when the feature alone is "
            "mean-ablated (its contribution removed, everything else kept)."
        )
    return notes


def _version():
    """The installed package's version (the package itself would import this module)."""
    try:
        return metadata.version("sklearn-lib")
    except metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "(not installed)"
