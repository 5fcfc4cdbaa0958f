"""Node and edge ablation: keep some features or edges of a fitted basis, run the rest of the model.

Works on any :class:`~sklearn_lib.NodeBasis` of a node layer: a
``LIBTransformer``'s (``basis="lib"`` or ``"pca"``), or one made from a
fitted :class:`~sklearn.decomposition.PCA` on activations flattened per
sample (its width is then ``P * d``).  Each ablation is an accumulator of a
pass (see ``_model.session``): one forward pass per batch reads the node layer
(and the model output where a score needs it), then every ablated variant
runs the rest of the model from there.
"""

import numpy as np
import torch

from .._core.nodes import OUTPUT_NODE
from .._core.numerics import CHUNK_ELEMENTS
from .._model.session import outside_inference_mode
from .scoring import IGNORE_INDEX, check_labels, make_scorer


class _Ablation:
    """What node and edge ablation share: scorers, labels and the original output.

    Parameters
    ----------
    layer : str
        The node layer whose activations the ablation starts from.
    n_variants : int
        Ablated variants scored side by side.
    y : array-like or None
        Labels (or a callable scoring's targets) of every sample, in data order.
    scoring : None, "accuracy", "r2" or callable
    n_samples : int or None
        Samples in the data, where known before the pass.
    """

    def __init__(self, layer, n_variants, y, scoring, n_samples):
        make = make_scorer(scoring, y is not None)
        self.scorers = [make() for _ in range(n_variants)]
        self.needs_original = any(s.needs_original for s in self.scorers)
        self.reads = (layer, OUTPUT_NODE) if self.needs_original else (layer,)
        self.y = None if y is None else np.asarray(y)
        # Class labels are checked against the first outputs, once.
        self.unchecked_labels = y is not None and scoring in (None, "accuracy")
        self.n_samples = n_samples
        self.count = 0

    def _targets(self, batch, output_shape):
        """This batch's rows of ``y``."""
        if self.y is None:
            return None
        if self.unchecked_labels:
            self.y = check_labels(self.y, self.n_samples, output_shape)
            self.unchecked_labels = False
        targets = self.y[batch.start : batch.stop]
        if len(targets) != batch.n:
            raise ValueError(
                f"y has {len(self.y)} samples, but X has at least {batch.stop}; they must match"
            )
        return _trimmed(targets, output_shape)

    def result(self):
        if self.y is not None and self.count != len(self.y):
            raise ValueError(
                f"y has {len(self.y)} samples, but X has {self.count}; they must match"
            )
        return np.array([s.result() for s in self.scorers])


class NodeAblation(_Ablation):
    """Scores of the model with only the top ``k`` features of a node kept, for each ``k``.

    For each ``k`` the activations are rebuilt as
    ``mean + (f - mean) @ C[:, :k] @ C_pinv[:k]`` (the other features are
    mean-ablated) and the rest of the model runs on them.

    Parameters
    ----------
    session : ModelSession
    basis : NodeBasis
    n_features : ndarray of int
    y, scoring, n_samples
        See :class:`_Ablation`.
    """

    def __init__(self, session, basis, n_features, y=None, scoring=None, n_samples=None):
        super().__init__(basis.name, len(n_features), y, scoring, n_samples)
        if n_features.size and (n_features.min() < 0 or n_features.max() > basis.matrix.shape[1]):
            raise ValueError(
                f"n_features must lie in [0, {basis.matrix.shape[1]}] (the non-null features "
                f"of the basis), got {n_features.tolist()}"
            )
        self.session, self.layer, self.n_features = session, basis.name, n_features
        self.mean, self.matrix, self.pinv = basis.tensors(session.device, kept=False)
        # A basis without positions takes one row per sample, of its whole width.
        self.per_sample = len(basis.shape) == 1

    def update(self, batch, acts):
        self.count += batch.n
        f, original = acts[self.layer], acts.get(OUTPUT_NODE)
        if self.per_sample and f[0].numel() != self.mean.shape[0]:
            raise ValueError(
                f"The basis of {self.layer!r} is {self.mean.shape[0]} wide, one row per sample "
                f"(a PCA of activations flattened per sample), but a batch has activations of "
                f"shape {tuple(f.shape[1:])} there: sequences of another length than the fit's. "
                "A flattened PCA takes only the length it was fitted on; "
                "LIBTransformer(..., basis='pca') takes any"
            )
        # Rows of the basis' width: one per position (D = d), or one per
        # sample for a PCA on flattened activations (D = P * d).
        centred = f.to(torch.float64).reshape(f.shape[0], -1, self.mean.shape[0]) - self.mean
        features = centred @ self.matrix  # (n, P, K)
        targets = None
        for k, scorer in zip(self.n_features, self.scorers):
            rebuilt = features[..., :k] @ self.pinv[:k] + self.mean
            ablated = self.session.section(
                batch.x, self.layer, rebuilt.reshape(f.shape).to(f.dtype)
            )
            if targets is None:
                targets = self._targets(batch, ablated.shape[1:])
                valid = batch.valid(ablated.shape[1:])
            scorer.update(ablated, original, targets, valid)


class EdgeAblation(_Ablation):
    """Scores of the model with only some edges of one section kept, for each edge mask.

    Each output feature ``i`` of the section is computed separately, from the
    input features ``j`` with a kept edge ``(i, j)`` (the others zeroed, i.e.
    mean-ablated); the next node's activations are rebuilt from these
    features and the rest of the model runs on them.

    Parameters
    ----------
    session : ModelSession
    src, dst : NodeBasis
        The section's nodes (``dst`` may be the output).
    masks : list of ndarray of bool, shape (k_out, k_in)
    y, scoring, n_samples
        See :class:`_Ablation`.
    """

    def __init__(self, session, src, dst, masks, *, y=None, scoring=None, n_samples=None):
        super().__init__(src.name, len(masks), y, scoring, n_samples)
        self.session, self.src, self.dst, self.masks = session, src.name, dst.name, masks
        self.src_t = src.tensors(session.device)
        self.dst_t = dst.tensors(session.device)

    def update(self, batch, acts):
        self.count += batch.n
        f, original = acts[self.src], acts.get(OUTPUT_NODE)
        mean, matrix, _ = self.src_t
        f_hat = (f.to(torch.float64) - mean) @ matrix  # (n, *pos, k_in)
        targets = None
        for mask, scorer in zip(self.masks, self.scorers):
            features = self._masked_section(batch.x, f_hat, mask, f.dtype)
            rebuilt = features @ self.dst_t[2] + self.dst_t[0]  # next node's activations
            if self.dst == OUTPUT_NODE:
                output = rebuilt
            else:
                output = self.session.section(batch.x, self.dst, rebuilt.to(f.dtype))
            if targets is None:
                targets = self._targets(batch, output.shape[1:])
                valid = batch.valid(output.shape[1:])
            scorer.update(output, original, targets, valid)

    def _masked_section(self, x, f_hat, mask, dtype):
        """Next-node features, each computed from its kept input features only.

        Output features whose rows of ``mask`` are equal share one pass (after a
        bisection step most rows keep either no edge or every edge), so the cost
        is one section run per distinct row, in chunks that bound memory.

        Returns a float64 tensor of shape (n, *positions_out, k_out).
        """
        n = f_hat.shape[0]
        src_mean, _, src_pinv = self.src_t
        dst_mean, dst_matrix, _ = self.dst_t
        mask = torch.as_tensor(mask, device=f_hat.device)
        patterns, which = torch.unique(mask, dim=0, return_inverse=True)  # (u, k_in), (k_out,)
        patterns = patterns.to(torch.float64)
        width = max(f_hat[0].numel() * src_pinv.shape[1] // f_hat.shape[-1], 1)
        chunk = max(1, CHUNK_ELEMENTS // (n * width))
        result = None
        for start in range(0, patterns.shape[0], chunk):
            rows = patterns[start : start + chunk]  # (c, k_in)
            c = rows.shape[0]
            view = (c, 1) + (1,) * (f_hat.ndim - 2) + (rows.shape[1],)
            masked = f_hat.unsqueeze(0) * rows.view(view)  # (c, n, *pos_in, k_in)
            acts = (masked @ src_pinv + src_mean).reshape(c * n, *f_hat.shape[1:-1], -1)
            out = self.session.section(x, self.src, acts.to(dtype), self.dst)
            out = out.to(torch.float64).reshape(c, n, *out.shape[1:]) - dst_mean
            if result is None:
                result = torch.empty(
                    *out.shape[1:-1], mask.shape[0], dtype=torch.float64, device=f_hat.device
                )  # (n, *pos_out, k_out)
            # Output feature i reads its own column of C_next from its pattern's run.
            features = torch.nonzero((which >= start) & (which < start + c)).flatten()
            columns = dst_matrix[:, features].T  # (m, d_next)
            picked = out[which[features] - start]  # (m, n, *pos_out, d_next)
            cview = (len(features), 1) + (1,) * (out.ndim - 3) + (columns.shape[1],)
            values = (picked * columns.view(cview)).sum(-1)  # (m, n, *pos_out)
            result[..., features] = torch.movedim(values, 0, -1)
        return result


class FeatureAblation(_Ablation):
    """Scores of the model with each of some features of a node mean-ablated alone.

    Variant 0 ablates nothing (the baseline, through the same section run);
    variant ``1 + i`` removes feature ``features[i]``'s contribution,
    ``f - ((f - mean) @ C[:, j]) C_pinv[j]``, and keeps everything else of
    the activations, the part outside the basis included.

    Parameters
    ----------
    session : ModelSession
    basis : NodeBasis
    features : array-like of int
        The features' indices in the basis.
    y, scoring, n_samples
        See :class:`_Ablation`.
    """

    def __init__(self, session, basis, features, *, y=None, scoring=None, n_samples=None):
        super().__init__(basis.name, len(features) + 1, y, scoring, n_samples)
        self.session, self.layer = session, basis.name
        features = np.asarray(features, dtype=np.int64)
        device = session.device
        self.mean = torch.as_tensor(basis.mean, dtype=torch.float64, device=device)
        columns = np.asarray(basis.matrix[:, features])  # an identity's columns alone
        self.columns = torch.as_tensor(columns, dtype=torch.float64, device=device)  # (d, F)
        rows = np.asarray(basis.pinv[features])
        self.rows = torch.as_tensor(rows, dtype=torch.float64, device=device)  # (F, d)

    def update(self, batch, acts):
        self.count += batch.n
        f, original = acts[self.layer], acts.get(OUTPUT_NODE)
        n, d = f.shape[0], self.mean.shape[0]
        f64 = f.to(torch.float64).reshape(n, -1, d)  # (n, P, d)
        features = (f64 - self.mean) @ self.columns  # (n, P, F)
        n_variants = len(self.scorers)
        chunk = max(1, CHUNK_ELEMENTS // max(f64.numel(), 1))
        targets = None
        for start in range(0, n_variants, chunk):
            which = torch.arange(start, min(start + chunk, n_variants), device=f.device)
            # Variant 0 keeps f; variant 1 + i drops feature i's part, its value
            # times its pseudo-inverse row: (c, n, P, 1) * (c, 1, 1, d).
            picked = (which - 1).clamp(min=0)
            kept = (which > 0).to(torch.float64).view(-1, 1, 1, 1)
            values = torch.movedim(features[..., picked], -1, 0).unsqueeze(-1) * kept
            variants = f64 - values * self.rows[picked].view(len(which), 1, 1, d)
            rows = variants.reshape(len(which) * n, *f.shape[1:]).to(f.dtype)
            # At the output node the ablated outputs are the scores' input themselves.
            out = (
                rows
                if self.layer == OUTPUT_NODE
                else self.session.section(batch.x, self.layer, rows)
            )
            out = out.reshape(len(which), n, *out.shape[1:])
            if targets is None:
                targets = self._targets(batch, out.shape[2:])
                valid = batch.valid(out.shape[2:])
            for i, variant in enumerate(which.tolist()):
                self.scorers[variant].update(out[i], original, targets, valid)


def _trimmed(targets, output_shape):
    """A batch's labels cut to its sequence length, where ``y`` is padded for longer ones.

    Batches of a dynamically padded stream differ in length, and one array
    ``y`` holds the labels of all of them, padded to the longest with
    :data:`~sklearn_lib._analysis.scoring.IGNORE_INDEX` on the right.
    """
    length = output_shape[0] if len(output_shape) >= 2 else None
    if length is None or targets.ndim < 2 or targets.shape[1] == length:
        return targets
    if targets.shape[1] < length:
        raise ValueError(
            f"y has labels at {targets.shape[1]} positions, but a batch of X has sequences of "
            f"{length}: pad y on the right with {IGNORE_INDEX} to the longest sequence"
        )
    if np.any(targets[:, length:] != IGNORE_INDEX):
        raise ValueError(
            f"y has labels at {targets.shape[1]} positions, but a batch of X has sequences of "
            f"{length}: labels beyond a batch's length must be {IGNORE_INDEX} (y padded on the "
            "right for the longest batch)"
        )
    return targets[:, :length]


def check_label_order(source, y):
    if y is not None and not source.ordered:
        raise ValueError(
            "y is given in data order, but X is a DataLoader that shuffles its samples, so "
            "they would not be paired with their labels; pass a DataLoader with shuffle=False"
        )


@outside_inference_mode
def node_ablation_scores(session, source, basis, n_features, y=None, scoring=None):
    """Scores of :class:`NodeAblation` after one pass over ``source``: ``(len(n_features),)``."""
    check_label_order(source, y)
    n_features = np.asarray(n_features, dtype=int).reshape(-1)
    acc = NodeAblation(session, basis, n_features, y=y, scoring=scoring, n_samples=source.n_samples)
    (scores,) = session.run_pass(source, [acc], "ablation")
    return scores


@outside_inference_mode
def edge_ablation_scores(session, source, graph, src, dst, n_edges, *, y=None, scoring=None):
    """Scores with the top ``m`` edges of the section ``src -> dst`` of ``graph``, for each ``m``.

    Parameters
    ----------
    session : ModelSession
    source : ArraySource or StreamSource
    graph : InteractionGraph
    src, dst : NodeBasis
        The fitted nodes of one of the graph's sections.
    n_edges : array-like of int
    y, scoring
        See :class:`_Ablation`.

    Returns
    -------
    ndarray of shape (len(n_edges),)
    """
    check_label_order(source, y)
    section = (src.name, dst.name)
    E = graph.edges[section]
    if E.shape != (dst.n_components, src.n_components):
        raise ValueError(
            f"The graph's edges {section} have shape {E.shape}, but the estimator's bases "
            f"need {(dst.n_components, src.n_components)}: was the graph computed "
            "from this estimator?"
        )
    n_edges = np.asarray(n_edges, dtype=int).reshape(-1)
    if n_edges.size and (n_edges.min() < 0 or n_edges.max() > E.size):
        raise ValueError(f"n_edges must lie in [0, {E.size}], got {n_edges.tolist()}")
    masks = [graph.top_edges(section, m) for m in n_edges]
    acc = EdgeAblation(session, src, dst, masks, y=y, scoring=scoring, n_samples=source.n_samples)
    (scores,) = session.run_pass(source, [acc], f"edge ablation {src.name!r} -> {dst.name!r}")
    return scores
