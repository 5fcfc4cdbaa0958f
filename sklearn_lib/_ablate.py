"""Node ablation: keep the top ``k`` features of a layer, run the rest of the model.

Works for any fitted basis that can be seen as ``(mean, C, C_pinv)`` on a
layer of a model: a :class:`LIBTransformer` (``basis="lib"`` or ``"pca"``),
or a ``Pipeline`` of :class:`ActivationTransformer` followed by a fitted
:class:`~sklearn.decomposition.PCA` (whose basis acts on the activations
flattened per sample).
"""

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from ._activation import ActivationTransformer
from ._base import check_finite
from ._capture import inspect_node_layers, resolve_module
from ._lib import LIBTransformer
from ._scoring import check_labels, make_scorer
from ._utils import Progress, batch_slices


@dataclass
class AblationView:
    """A fitted basis on a layer of a model, as node ablation needs it.

    Attributes
    ----------
    owner : _ModelLayerTransformer
        The estimator that reads the layer (model, device, dtype, batches).
    mean : ndarray of shape (D,)
    matrix : ndarray of shape (D, K)
        Full basis ``C``, most important feature first.
    pinv : ndarray of shape (K, D)
        Its full pseudo-inverse; keeping ``k`` features uses ``pinv[:k]``.
        ``D`` is the activation width ``d`` for a basis shared by positions,
        or ``P * d`` for a PCA fitted on activations flattened per sample.
    n_kept : int
        The estimator's own number of kept features.
    layer : str
        The node layer the basis belongs to.
    """

    owner: object
    mean: np.ndarray
    matrix: np.ndarray
    pinv: np.ndarray
    n_kept: int
    layer: str

    @property
    def n_available(self):
        return self.matrix.shape[1]


def ablation_view(estimator, layer=None):
    """The :class:`AblationView` of a fitted estimator, or a clear TypeError.

    ``layer`` picks any fitted node layer of a ``LIBTransformer`` (its
    ``layer`` or a downstream layer); None is the estimator's own layer.
    """
    if isinstance(estimator, LIBTransformer):
        check_is_fitted(estimator)
        layer = estimator.layer if layer is None else layer
        if layer not in estimator.bases_ or layer == "output":
            raise ValueError(
                f"layer={layer!r} is not a fitted node layer; choose one of "
                f"{[n for n in estimator.bases_ if n != 'output']}"
            )
        basis = estimator.bases_[layer]
        return AblationView(
            estimator, basis.mean, basis.matrix, basis.pinv, basis.n_components, layer
        )
    if isinstance(estimator, Pipeline):
        steps = [step for _, step in estimator.steps]
        if isinstance(steps[0], LIBTransformer):
            return ablation_view(steps[0], layer)
        if (
            len(steps) >= 2
            and isinstance(steps[0], ActivationTransformer)
            and isinstance(steps[1], PCA)
        ):
            acts, pca = steps[0], steps[1]
            if layer not in (None, acts.layer):
                raise ValueError(f"layer={layer!r}: this PCA pipeline reads {acts.layer!r}")
            check_is_fitted(acts)
            check_is_fitted(pca)
            # PCA's components are orthonormal, so its pseudo-inverse is the transpose.
            return AblationView(
                acts, pca.mean_, pca.components_.T, pca.components_, pca.n_components_, acts.layer
            )
    raise TypeError(
        "Expected a fitted LIBTransformer, a Pipeline starting with one, or a Pipeline of "
        f"ActivationTransformer followed by PCA; got {type(estimator).__name__}"
    )


def node_ablation_scores(view, X, y, n_features, scoring=None, verbose=False):
    """Scores of the model with only the top ``k`` features of the layer kept.

    For each ``k`` the activations are rebuilt as
    ``mean + (f - mean) @ C[:, :k] @ C_pinv[:k]`` (the other features are
    mean-ablated) and the rest of the model runs on them.

    Returns
    -------
    ndarray of shape (len(n_features),)
    """
    owner = view.owner
    X = owner._validate_input(X, reset=False)
    n_features = np.asarray(n_features, dtype=int).reshape(-1)
    if n_features.size and (n_features.min() < 0 or n_features.max() > view.n_available):
        raise ValueError(
            f"n_features must lie in [0, {view.n_available}] (the non-null features of "
            f"the basis), got {n_features.tolist()}"
        )
    progress = Progress("ablation", verbose)
    make = make_scorer(scoring, y is not None)
    scorers = [make() for _ in n_features]
    needs_original = any(s.needs_original for s in scorers)
    with owner._model_session() as runner, torch.no_grad():
        module = resolve_module(owner.model, view.layer)
        if y is not None and scoring in (None, "accuracy"):
            _, output_shape = inspect_node_layers(
                runner, owner._to_tensor(runner, X[:2]), [view.layer]
            )
            y = check_labels(y, X.shape[0], output_shape)
        mean = torch.as_tensor(view.mean, device=runner.device)
        matrix = torch.as_tensor(view.matrix, device=runner.device)
        pinv = torch.as_tensor(view.pinv, device=runner.device)
        slices = progress.batches(batch_slices(X.shape[0], owner.batch_size), len(X), "ablation")
        for sl in slices:
            x = owner._to_tensor(runner, X[sl])
            (f,) = runner.read(x, [module])
            check_finite(f, view.layer)
            # Rows of the basis' width: one per position (D = d), or one per
            # sample for a PCA on flattened activations (D = P * d).
            width = mean.shape[0]
            centred = f.to(torch.float64).reshape(f.shape[0], -1, width) - mean
            features = centred @ matrix  # (n, P, K)
            original = runner.run(x)[1] if needs_original else None
            for k, scorer in zip(n_features, scorers):
                rebuilt = (features[..., :k] @ pinv[:k] + mean).reshape(f.shape).to(f.dtype)
                ablated = runner.section(x, module, rebuilt)
                scorer.update(ablated, original, None if y is None else y[sl])
    return np.array([s.result() for s in scorers])


# Elements per chunk of stacked masked copies of a batch (see edge ablation).
_EDGE_CHUNK_ELEMENTS = 1 << 22


def edge_ablation_scores(lib, graph, section, X, y, n_edges, scoring=None, verbose=False):
    """Scores of the model with only the top ``m`` edges of one section kept.

    Each output feature ``i`` of the section is computed separately, from
    the input features ``j`` with a kept edge ``(i, j)`` (the others zeroed,
    i.e. mean-ablated); the next node's activations are rebuilt from these
    features and the rest of the model runs on them.

    Returns
    -------
    ndarray of shape (len(n_edges),)
    """
    from ._graph import section_nodes

    check_is_fitted(lib)
    X = lib._validate_input(X, reset=False)
    section = tuple(section)
    if section not in graph.edges:
        raise ValueError(f"section={section!r} is not one of the graph's {graph.sections}")
    src_name, dst_name = section
    src_b, dst_b = lib.bases_[src_name], lib.bases_[dst_name]
    E = graph.edges[section]
    if E.shape != (dst_b.n_components, src_b.n_components):
        raise ValueError(
            f"The graph's edges {section} have shape {E.shape}, but the estimator's bases "
            f"need {(dst_b.n_components, src_b.n_components)}: was the graph computed "
            "from this estimator?"
        )
    n_edges = np.asarray(n_edges, dtype=int).reshape(-1)
    if n_edges.size and (n_edges.min() < 0 or n_edges.max() > E.size):
        raise ValueError(f"n_edges must lie in [0, {E.size}], got {n_edges.tolist()}")
    masks = [graph.top_edges(section, m) for m in n_edges]
    nodes = dict(zip(lib.bases_, section_nodes(lib)))
    src, dst = nodes[src_name], nodes[dst_name]
    if y is not None and scoring in (None, "accuracy"):
        y = check_labels(y, X.shape[0], lib.output_shape_)
    make = make_scorer(scoring, y is not None)
    scorers = [make() for _ in masks]
    needs_original = any(s.needs_original for s in scorers)
    progress = Progress("edge ablation", verbose)
    with lib._model_session() as runner, torch.no_grad():
        device = runner.device
        src_t = _basis_tensors(src_b, device)
        dst_t = _basis_tensors(dst_b, device)
        what = f"edge ablation {src_name!r} -> {dst_name!r}"
        for sl in progress.batches(batch_slices(len(X), lib.batch_size), len(X), what):
            x = lib._to_tensor(runner, X[sl])
            (f,) = runner.read(x, [src.module])
            f_hat = (f.to(torch.float64) - src_t["mean"]) @ src_t["matrix"]  # (n, *pos, k_in)
            original = runner.run(x)[1] if needs_original else None
            for mask, scorer in zip(masks, scorers):
                feats = _masked_section(runner, x, src, dst, f_hat, mask, src_t, dst_t, f.dtype)
                rebuilt = feats @ dst_t["pinv"] + dst_t["mean"]  # next node's activations
                if dst is None:
                    output = rebuilt
                else:
                    output = runner.section(x, dst.module, rebuilt.to(f.dtype))
                scorer.update(output, original, None if y is None else y[sl])
    return np.array([s.result() for s in scorers])


def _basis_tensors(basis, device):
    from ._graph import kept_tensors

    return dict(zip(("mean", "matrix", "pinv"), kept_tensors(basis, device)))


def _masked_section(runner, x, src, dst, f_hat, mask, src_t, dst_t, dtype):
    """Next-node features, each computed from its kept input features only.

    Output features whose rows of ``mask`` are equal share one pass (after a
    bisection step most rows keep either no edge or every edge), so the cost
    is one section run per distinct row, in chunks that bound memory.

    Returns a float64 tensor of shape (n, *positions_out, k_out).
    """
    n = x.shape[0]
    mask = torch.as_tensor(mask, device=x.device)
    patterns, which = torch.unique(mask, dim=0, return_inverse=True)  # (u, k_in), (k_out,)
    patterns = patterns.to(torch.float64)
    width = max(f_hat[0].numel() * src_t["pinv"].shape[1] // f_hat.shape[-1], 1)
    chunk = max(1, _EDGE_CHUNK_ELEMENTS // (n * width))
    result = None
    for start in range(0, patterns.shape[0], chunk):
        rows = patterns[start : start + chunk]  # (c, k_in)
        c = rows.shape[0]
        view = (c, 1) + (1,) * (f_hat.ndim - 2) + (rows.shape[1],)
        masked = f_hat.unsqueeze(0) * rows.view(view)  # (c, n, *pos_in, k_in)
        acts = (masked @ src_t["pinv"] + src_t["mean"]).reshape(c * n, *f_hat.shape[1:-1], -1)
        out = runner.section(x, src.module, acts.to(dtype), None if dst is None else dst.module)
        out = out.to(torch.float64).reshape(c, n, *out.shape[1:]) - dst_t["mean"]
        if result is None:
            result = torch.empty(
                *out.shape[1:-1], mask.shape[0], dtype=torch.float64, device=x.device
            )  # (n, *pos_out, k_out)
        # Output feature i reads its own column of C_next from its pattern's run.
        features = torch.nonzero((which >= start) & (which < start + c)).flatten()
        columns = dst_t["matrix"][:, features].T  # (m, d_next)
        picked = out[which[features] - start]  # (m, n, *pos_out, d_next)
        cview = (len(features), 1) + (1,) * (out.ndim - 3) + (columns.shape[1],)
        values = (picked * columns.view(cview)).sum(-1)  # (m, n, *pos_out)
        result[..., features] = torch.movedim(values, 0, -1)
    return result
