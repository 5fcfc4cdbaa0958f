"""Ablation curves, edge sparsity and model selection for LIB and PCA bases.

The paper's evaluation (Bushnaq et al. 2024, section 4): keep the top ``k``
features of a node layer, or the top ``m`` edges of a section, and measure
how well the model still works.  Every function here takes a fitted
:class:`~sklearn_lib.LIBTransformer` (``basis="lib"`` or ``"pca"``); node
ablation also takes a ``Pipeline`` of
:class:`~sklearn_lib.ActivationTransformer` and a fitted
:class:`~sklearn.decomposition.PCA`, so a plain sklearn PCA lands on the same
axis.  On a layer with positions (a sequence's, a conv map's) that PCA
flattens them into one vector per sample, a decomposition LIB's
position-shared basis does not compare with: these functions then warn with
:class:`~sklearn_lib.exceptions.FlattenedPositionsWarning`, naming the fair
baseline, ``LIBTransformer(model, layer, basis="pca")``.

Scores (``scoring``): None means accuracy of the argmax of the model's last
output axis when ``y`` holds class labels, and the pooled R² of the ablated
against the unablated outputs without ``y``.  ``"accuracy"`` and ``"r2"``
name them; a callable ``scoring(y_true, outputs)`` receives the labels (or,
without ``y``, the unablated outputs) and the ablated outputs as arrays, and
returns one float where **higher is better** (``edges_needed`` and
``features_needed`` keep the score within a tolerance below the unablated
one): return the negated loss for a loss.  With padded dict inputs it gets
the valid positions as rows (see :mod:`~sklearn_lib._analysis.scoring`).
R² is undefined, and refused with a ``ValueError``, on fewer than 2 samples
or when the unablated outputs do not vary over ``X``; accuracy is defined on
any number of samples.
"""

from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
from sklearn.utils._param_validation import StrOptions, validate_params

from ._analysis.ablate import edge_ablation_scores, node_ablation_scores
from ._analysis.graph import InteractionGraph
from ._analysis.scoring import SCORINGS
from ._core.validation import StrictInterval, check_counts, check_sections
from ._fitted import fitted, fitted_section

__all__ = [
    "Sparsity",
    "ablation_curve",
    "edge_ablation_curve",
    "edges_needed",
    "features_needed",
    "faithfulness_scorer",
    "n_features_scorer",
    "sparsest_faithful",
]


_SCORING = [None, StrOptions(set(SCORINGS)), callable]
# One count, or an array-like of them that check_counts checks element by element.
_COUNTS = ["array-like", StrictInterval(Integral, 0, None, closed="left")]
# A score difference: finite (inf would keep nothing), not NaN, not a bool.
_TOLERANCE = [StrictInterval(Real, 0, None, closed="left")]


@validate_params(
    {
        "X": "no_validation",  # an array-like or a stream, checked by the estimator
        "y": ["array-like", None],
        "n_features": _COUNTS,
        "layer": [str, None],
        "scoring": _SCORING,
        "verbose": ["verbose"],
    },
    prefer_skip_nested_validation=True,
)
def ablation_curve(estimator, X, y=None, *, n_features, layer=None, scoring=None, verbose=False):
    """Score of the model when only the top ``k`` features of a layer are kept.

    For each ``k`` the layer's activations are rebuilt from the first ``k``
    features with the first ``k`` rows of the *full* pseudo-inverse (the
    other features are set to zero, which in the centred basis is mean
    ablation), and the rest of the model runs on them.

    Parameters
    ----------
    estimator : LIBTransformer or Pipeline
        Fitted: a ``LIBTransformer`` (any ``basis``), a ``Pipeline`` starting
        with one, or ``Pipeline([ActivationTransformer, PCA, ...])`` (which
        warns with ``FlattenedPositionsWarning`` on a layer with positions).
    X : array-like of shape (n_samples, ...), dict of them, DataLoader or iterable of batches
        Model inputs (the paper evaluates on the test split).
    y : array-like, default=None
        Class labels, or None.
    n_features : int or array-like of int
        Feature counts ``k`` (an int, or a non-empty 1-D array-like of ints;
        bools and floats are refused); 0 ablates every feature (the mean
        activation).
    layer : str, optional
        For a ``LIBTransformer``: any of its fitted node layers (default: its
        ``layer``), so one fit gives the curves of every layer.
    scoring : None, "accuracy", "r2" or callable, default=None
        See the module docstring.
    verbose : bool, default=False
        Progress on stderr.

    Returns
    -------
    n_features : ndarray of shape (n_points,)
    scores : ndarray of shape (n_points,)

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn_lib import LIBTransformer, ablation_curve
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> X = np.random.default_rng(0).normal(size=(100, 4))
    >>> lib = LIBTransformer(model, "2").fit(X)
    >>> k, r2 = ablation_curve(lib, X, n_features=[0, 3])
    >>> [round(float(s), 6) for s in r2]
    [0.0, 1.0]
    """
    state = fitted(estimator, layer)
    n_features = check_counts(n_features, "n_features")
    state.warn_if_positions_flattened()
    session = state.session(verbose=verbose)
    return n_features, node_ablation_scores(
        session, state.source(X), state.basis, n_features, y, scoring
    )


@validate_params(
    {
        "graph": [InteractionGraph],
        "X": "no_validation",
        "y": ["array-like", None],
        "section": [tuple, list],
        "n_edges": _COUNTS,
        "scoring": _SCORING,
        "verbose": ["verbose"],
    },
    prefer_skip_nested_validation=True,
)
def edge_ablation_curve(
    estimator, graph, X, y=None, *, section, n_edges, scoring=None, verbose=False
):
    """Score of the model when only the top ``m`` edges of one section are kept.

    Each output feature ``i`` of the section is computed separately from the
    input features with a kept edge ``(i, j)``; the other inputs are zeroed
    (mean-ablated).  The next node's activations are rebuilt from these
    features and the rest of the model runs.

    Parameters
    ----------
    estimator : LIBTransformer
        Fitted; ``graph`` must come from it.
    graph : InteractionGraph
    X, y : model inputs and optional class labels
    section : (str, str)
        A key of ``graph.edges``, e.g. ``("fc2", "fc3")`` or ``("fc3", "output")``.
    n_edges : int or array-like of int
        Numbers of strongest edges to keep, as ``n_features`` of
        :func:`ablation_curve`.
    scoring : None, "accuracy", "r2" or callable

    Returns
    -------
    n_edges : ndarray of shape (n_points,)
    scores : ndarray of shape (n_points,)
    """
    state, src, dst = fitted_section(estimator, graph, section)
    n_edges = check_counts(n_edges, "n_edges")
    session = state.session(verbose=verbose)
    scores = edge_ablation_scores(
        session, state.source(X), graph, src, dst, n_edges, y=y, scoring=scoring
    )
    return n_edges, scores


@dataclass(frozen=True)
class Sparsity:
    """How many edges of a section the model needs.

    Attributes
    ----------
    n_needed : int
        The fewest strongest edges (or features) whose score stays within
        ``tolerance`` of ``baseline``.
    n_total : int
        All edges of the section (``n_out * n_in``), or all non-null features.
    score : float
        The score with ``n_needed`` edges (or features).
    baseline : float
        The score with every edge kept.
    """

    n_needed: int
    n_total: int
    score: float
    baseline: float

    @property
    def fraction(self):
        return self.n_needed / self.n_total


@validate_params(
    {
        "graph": [InteractionGraph],
        "X": "no_validation",
        "y": ["array-like", None],
        "tolerance": _TOLERANCE,
        "scoring": _SCORING,
        "sections": [list, tuple, None],
        "verbose": ["verbose"],
    },
    prefer_skip_nested_validation=True,
)
def edges_needed(
    estimator, graph, X, y=None, *, tolerance=1e-3, scoring=None, sections=None, verbose=False
):
    """The paper's sparsity figure: the fewest edges that keep the score.

    For each section, the smallest ``m`` such that keeping the top ``m``
    edges scores at least ``baseline - tolerance``, where ``baseline`` is the
    score with every edge kept, found by bisection (so it assumes the score
    does not fall as edges are added, as the paper does).

    Parameters
    ----------
    estimator : LIBTransformer
    graph : InteractionGraph
    X, y : model inputs and optional class labels
    tolerance : float, default=1e-3
        Finite and non-negative.  The paper uses 0.001 of accuracy.
    scoring : None, "accuracy", "r2" or callable
    sections : list of (str, str), optional
        Non-empty; default (None): every section of the graph.

    Returns
    -------
    dict of (str, str) to Sparsity
    """
    # Every section is checked before any work; all share one session and source.
    sections = graph.sections if sections is None else check_sections(sections)
    found = [fitted_section(estimator, graph, section) for section in sections]
    if not found:
        return {}
    state = found[0][0]
    session, source = state.session(verbose=verbose), state.source(X)
    results = {}
    for _, src, dst in found:
        total = graph.edges[(src.name, dst.name)].size

        def score(m, src=src, dst=dst):
            scores = edge_ablation_scores(
                session, source, graph, src, dst, [m], y=y, scoring=scoring
            )
            return scores[0]

        m, best, baseline = _smallest_within(score, total, tolerance)
        results[(src.name, dst.name)] = Sparsity(int(m), int(total), float(best), float(baseline))
    return results


def _smallest_within(score, total, tolerance):
    """Smallest ``m`` in ``[0, total]`` with ``score(m) >= score(total) - tolerance``.

    Bisection, assuming the score does not fall as ``m`` grows (the paper's
    assumption).  Returns ``(m, score(m), score(total))``.
    """
    baseline = _finite(score(total), total)
    lo, hi, best = 0, total, baseline
    while lo < hi:  # invariant: score(hi) >= baseline - tolerance
        mid = (lo + hi) // 2
        value = _finite(score(mid), mid)
        if value >= baseline - tolerance:
            hi, best = mid, value
        else:
            lo = mid + 1
    return hi, best, baseline


def _finite(value, n_features):
    """``value``, a score the bisection compares; ValueError for NaN or inf, which every
    comparison would take as a failure (the search would then say every feature is
    needed, with a score of NaN)."""
    if not np.isfinite(value):
        raise ValueError(
            f"the scoring gave {value} with {n_features} feature(s) kept: a search for the "
            "fewest features needs finite scores (check the scorer, or that y fits the outputs)"
        )
    return value


@validate_params(
    {
        "X": "no_validation",
        "y": ["array-like", None],
        "tolerance": _TOLERANCE,
        "layer": [str, None],
        "scoring": _SCORING,
        "verbose": ["verbose"],
    },
    prefer_skip_nested_validation=True,
)
def features_needed(
    estimator, X, y=None, *, tolerance=1e-3, layer=None, scoring=None, verbose=False
):
    """The fewest top features of a layer that keep the score.

    The smallest ``k`` such that :func:`ablation_curve` at ``k`` scores at
    least ``baseline - tolerance``, where ``baseline`` keeps every non-null
    feature, found by bisection.  ``layer`` as in :func:`ablation_curve`.

    Returns
    -------
    Sparsity
        ``n_needed`` features of ``n_total`` (all non-null features).
    """
    state = fitted(estimator, layer)
    state.warn_if_positions_flattened()
    session, source, basis = state.session(verbose=verbose), state.source(X), state.basis
    available = basis.matrix.shape[1]

    def score(k):
        return node_ablation_scores(session, source, basis, [k], y, scoring)[0]

    k, best, baseline = _smallest_within(score, available, tolerance)
    return Sparsity(int(k), int(available), float(best), float(baseline))


# -- model selection ------------------------------------------------------------------


def faithfulness_scorer(estimator, X, y=None):
    """Scorer: the model's score with only the estimator's kept features.

    Usable as ``scoring`` in :class:`~sklearn.model_selection.GridSearchCV`
    for a ``LIBTransformer``, a ``Pipeline`` starting with one, or
    ``Pipeline([ActivationTransformer, PCA, ...])`` (which warns with
    ``FlattenedPositionsWarning`` on a layer with positions).  Accuracy with
    labels, pooled R² of the outputs without.
    """
    state = fitted(estimator)
    state.warn_if_positions_flattened()
    basis = state.basis
    scores = node_ablation_scores(state.session(), state.source(X), basis, [basis.n_components], y)
    return float(scores[0])


def n_features_scorer(estimator, X=None, y=None):
    """Scorer: minus the number of kept features (higher means sparser).

    Takes the estimators :func:`faithfulness_scorer` takes, and warns as it does.
    """
    state = fitted(estimator)
    state.warn_if_positions_flattened()
    return -float(state.basis.n_components)


@validate_params(
    {
        # NaN would make every candidate fail the floor and silently pick the
        # most faithful one.
        "floor": [StrictInterval(Real, None, None, closed="neither")],
        "faithfulness": [str],
        "n_features": [str],
    },
    prefer_skip_nested_validation=True,
)
def sparsest_faithful(floor, *, faithfulness="faithfulness", n_features="n_features"):
    """A ``refit`` rule for GridSearchCV: the sparsest basis that stays faithful.

    Raw faithfulness always prefers more features.  With
    ``scoring={"faithfulness": faithfulness_scorer, "n_features": n_features_scorer}``,
    this rule picks, among candidates whose mean faithfulness is at least
    ``floor``, the one with the fewest features (ties: the more faithful);
    if none reaches the floor, the most faithful candidate.

    Parameters
    ----------
    floor : float
        Minimum mean faithfulness (e.g. 0.99 of accuracy); finite.
    faithfulness, n_features : str
        Names of the two scorers in ``scoring``.

    Returns
    -------
    callable
        ``refit(cv_results) -> best_index``.
    """

    def refit(cv_results):
        faithful = np.asarray(cv_results[f"mean_test_{faithfulness}"], dtype=float)
        sparsity = np.asarray(cv_results[f"mean_test_{n_features}"], dtype=float)
        ok = np.flatnonzero(faithful >= floor)
        if ok.size == 0:
            return int(np.argmax(faithful))
        # lexsort sorts by the last key first: sparsity, then faithfulness.
        order = np.lexsort((-faithful[ok], -sparsity[ok]))
        return int(ok[order[0]])

    return refit
