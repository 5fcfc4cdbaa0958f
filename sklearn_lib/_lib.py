"""The Local Interaction Basis as a scikit-learn transformer."""

from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, RealNotInt, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted

from ._base import OUTPUT_NODE, _ModelLayerTransformer, check_activations, check_finite
from ._basis import NodeBasis, eigh_descending, lib_rotation, n_kept, orthogonal_step
from ._capture import check_cut, inspect_node_layers
from ._data import ArraySource, StreamSource, is_stream
from ._integration import INTEGRATION_RULES, integration_rule
from ._jacobian import cotangent_rows, source_rows
from ._section import SectionJacobian, jacobian_gram_batch
from ._stats import MomentAccumulator, all_reduce_sum, global_count
from ._structure import linear_elementwise_section, structured_gram_batch
from ._utils import Progress, null_space_rtol


@dataclass
class _FitPass:
    """What every pass of one fit shares."""

    runner: object  # ModelRunner
    source: object  # ArraySource or StreamSource
    rule: tuple  # (alphas, weights) tensors on the device
    progress: Progress
    generator: torch.Generator  # stochastic sources


class _JacobianGram:
    """``M'`` of one section, accumulated batch by batch.

    Exact: one row per output position and next feature, or, for a
    Linear -> elementwise section of an ``nn.Sequential``, the closed form of
    ``_structure.py`` (no per-row backward passes); the rows themselves come
    from a :class:`~sklearn_lib._section.SectionJacobian`.  With
    ``n_stochastic_sources=S``: ``S`` random +-1 combinations of all rows per
    batch, whose average Gram is an unbiased estimate.

    Parameters
    ----------
    est : LIBTransformer
    ctx : _FitPass
    src, dst : NodeLayer (dst None: the model output)
    basis_next : torch.Tensor of shape (d_next, k_next)
        The next node's kept LIB matrix, in the fit's dtype and device.
    n_pos_out : int
        Positions of the next node.
    next_name : str
    """

    def __init__(self, est, ctx, src, dst, basis_next, n_pos_out, next_name):
        self.ctx, self.src, self.basis_next, self.n_pos_out = ctx, src, basis_next, n_pos_out
        self.what = f"Jacobians {src.name!r} -> {next_name!r}"
        self.sources = est.n_stochastic_sources
        self.structure = None
        if est._structured and not self.sources:
            self.structure = linear_elementwise_section(
                est.model, src.name, None if dst is None else dst.name, est.capture
            )
        self.rows = None
        if not (self.sources or self.structure):
            self.rows = cotangent_rows(basis_next, n_pos_out)
        self.section = SectionJacobian(ctx.runner, src, dst, closed_form=est._structured)
        n = src.n_features
        self.total = torch.zeros(n, n, dtype=torch.float64, device=ctx.runner.device)

    def add(self, x, f=None):
        """Add one batch of model inputs ``x`` (``f``: ``src``'s activations, if read)."""
        ctx, rows = self.ctx, self.rows
        if self.sources:
            shape = (self.sources, self.n_pos_out, self.basis_next.shape[1])
            draws = torch.randint(0, 2, shape, generator=ctx.generator)
            rows = source_rows(self.basis_next, (2 * draws - 1).to(ctx.runner.device))
        if self.structure:
            self.total += structured_gram_batch(
                ctx.runner, x, self.src, *self.structure, self.basis_next, *ctx.rule, f=f
            )
        else:
            self.total += jacobian_gram_batch(self.section, x, rows, *ctx.rule, f=f)

    def result(self):
        """``M'`` averaged over all ``N * P_in`` rows (of every rank), as a numpy array."""
        total = self.total / self.sources if self.sources else self.total
        all_reduce_sum(total)
        n = global_count(self.ctx.source.n_samples, total.device)
        return (total / (n * self.src.n_positions)).cpu().numpy()


# Samples used to check call order, shapes and cuts before the real passes.
_PROBE_SIZE = 64


class LIBTransformer(_ModelLayerTransformer):
    """Local Interaction Basis (LIB) features of one layer of a torch model.

    LIB (Bushnaq et al., 2024) re-expresses a layer's activations in a basis
    that drops directions the rest of the network ignores and aligns the
    remaining ones with what the next layer computes: PCA of the activations,
    whitened, rotated onto the eigenvectors of the averaged Jacobian Gram of
    the next node layer's LIB features, each feature scaled by the square
    root of its eigenvalue ``Lambda``.  Bases are computed backwards from the
    model output, through ``downstream_layers``.

    ``X`` holds the *model's inputs*; ``transform`` returns LIB features of
    the activations at ``layer``.  A feature's ``Lambda`` is both its
    importance and its variance on the fitting data.

    Parameters
    ----------
    model : torch.nn.Module
        Called as ``model(batch)`` on a tensor made from rows of ``X``.  It is
        never modified: parameters, dtype, device, train/eval flags and
        ``requires_grad`` stay as they are, and no hook is left behind.  Fits
        run in eval mode.  Do not share one model between estimators fitting
        concurrently in threads (hooks are registered while a pass runs).
    layer : str
        Name of the node layer to transform, from ``model.named_modules()``.
    downstream_layers : sequence of str, default=()
        Later node layers, in forward order.  ``layer``'s basis uses the
        Jacobian into the first of them; ``()`` goes straight to the model
        output.  Every node layer must be a *cut* (the next node layer depends
        on the input only through it), which ``fit`` checks.
    capture : {"input", "output"}, default="input"
        A node layer is the named module's first positional input (the paper's
        convention) or its output.
    basis : {"lib", "pca"}, default="lib"
        ``"pca"`` is the paper's baseline: ordinary centred PCA of every node
        layer, computed by the same machinery (no Jacobians).
    n_components : int, float or None, default=None
        Features of ``layer`` to keep: all (None), the top ``n`` (int), or the
        fewest whose ``Lambda`` sum to that fraction of the total (float in
        (0, 1)), as in :class:`~sklearn.decomposition.PCA`.
    truncation_threshold : float in [0, 1), default=1e-10
        Drop features with ``Lambda < truncation_threshold * max(Lambda)``, at
        every node layer.  A separate, fixed numerical tolerance removes the
        Gram matrix's null space, so raising this threshold never removes
        directions before the rotation.
    center : bool, default=True
        Centre activations (``mu = E[f]``); False uses ``mu = 0`` and the
        uncentred Gram.
    integration : {"gradient", "trapezoidal", "gauss-legendre"}, default="gradient"
        How Jacobians are integrated along ``alpha * f`` for ``alpha`` in
        [0, 1].  ``"gradient"`` (the paper's default) is the plain Jacobian.
    n_intervals : int, default=0
        0 for ``"gradient"``; the number of intervals (``n + 1`` points) for
        the other rules.
    output_basis : {"identity", "pca"}, default="identity"
        Basis of the model-output node.  It is orthogonal and never truncated,
        so it leaves every upstream basis unchanged; it matters for the
        interaction graph's last edges.
    batch_size : int, default=256
        Samples per forward/backward pass.  Peak memory is set by this and a
        fixed chunk of Jacobian rows, never by the number of samples.
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device, default="auto"
        Where passes run; ``"auto"`` uses CUDA when available.
    dtype : {"float64", "float32"}, default="float64"
        Precision of the forward and backward passes.  ``"float64"``
        reproduces the paper; ``"float32"`` is faster.  Accumulators and
        eigensolves are float64 either way.  Integer inputs are never cast.
    n_stochastic_sources : int or None, default=None
        None computes ``M'`` exactly, with one backward pass per output
        position and next-layer feature.  An int ``S`` uses ``S`` random +-1
        combinations of all of them per batch instead: an unbiased estimate
        of ``M'`` at a fraction of the cost for wide outputs or many
        positions (its error shrinks like ``1 / sqrt(S * n_batches)``).
    random_state : int, RandomState instance or None, default=None
        Seeds the permutation of the cut check and the stochastic sources.
    verbose : bool, default=False
        Print progress of each pass to stderr.

    Attributes
    ----------
    components_ : ndarray of shape (n_components_, n_features)
        Rows are the kept columns of ``C``:
        ``transform_activations(A) == (A - mean_) @ components_.T``.
    inverse_components_ : ndarray of shape (n_components_, n_features)
        The first ``n_components_`` rows of the *full* pseudo-inverse ``C+``;
        ``inverse_transform(Z) == Z @ inverse_components_ + mean_``.
    mean_ : ndarray of shape (n_features,)
        Per-feature mean of the activations (zeros if ``center=False``).
    lambdas_ : ndarray of shape (n_components_,)
        ``Lambda`` of the kept features, descending (variances for PCA).
    n_components_ : int
        Number of kept features.
    activation_shape_ : tuple
        Per-sample shape ``(*positions, n_features)`` of ``layer``'s activations.
    n_positions_ : int
        Number of positions (1 for a plain ``(n, d)`` layer).
    bases_ : dict of str to NodeBasis
        Every fitted basis in forward order: ``layer``, each downstream layer,
        and ``"output"``.  Each holds the full matrix, pseudo-inverse, mean,
        ``Lambda`` and the kept count, so interaction graphs need no refit.
    output_shape_ : tuple
        Per-sample shape of the model output.
    input_shape_ : tuple
        Per-sample shape of ``X``.
    n_features_in_ : int
        ``X.shape[1]``, as in every scikit-learn estimator.

    See Also
    --------
    ActivationTransformer : The raw activations, e.g. for ``sklearn.decomposition.PCA``.

    Notes
    -----
    Layers with positions, activations of shape ``(n, P, d)`` (or any
    ``(n, *positions, d)``), share one basis across positions and every
    average runs over ``n * P`` rows.  ``transform`` returns one row per
    sample with the columns in position-major order: column
    ``p * n_components_ + j`` is feature ``j`` at position ``p``.

    The constant (bias) direction of the paper is not a feature here: with
    centring, the non-constant features and their ``Lambda`` do not depend on
    it.

    Jacobians come from autograd, from a closed form for Linear ->
    elementwise sections of an ``nn.Sequential``, or from the model's own
    ``lib_section_vjp`` / ``lib_section_gram`` where it has them (checked
    against autograd once per section; see ``sklearn_lib/_section.py``).

    References
    ----------
    L. Bushnaq, S. Heimersheim, N. Goldowsky-Dill, D. Braun, J. Mendel,
    K. Hänni, A. Griffin, J. Stöhler, M. Wache, M. Hobbhahn. "The Local
    Interaction Basis: Identifying Computationally-Relevant and Sparsely
    Interacting Features in Neural Networks", arXiv:2405.10928, 2024.

    Examples
    --------
    >>> import torch
    >>> from sklearn_lib import LIBTransformer
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> X = torch.randn(200, 4).numpy()
    >>> lib = LIBTransformer(model, "2").fit(X)
    >>> lib.transform(X).shape
    (200, 3)
    >>> bool(abs(lib.transform(X).var(axis=0) - lib.lambdas_).max() < 1e-8 * lib.lambdas_[0])
    True
    """

    _parameter_constraints = {
        **_ModelLayerTransformer._parameter_constraints,
        "downstream_layers": [list, tuple],
        "basis": [StrOptions({"lib", "pca"})],
        "n_components": [
            Interval(Integral, 1, None, closed="left"),
            Interval(RealNotInt, 0, 1, closed="neither"),
            None,
        ],
        "truncation_threshold": [Interval(Real, 0, 1, closed="left")],
        "center": ["boolean"],
        "integration": [StrOptions(set(INTEGRATION_RULES))],
        "n_intervals": [Interval(Integral, 0, None, closed="left")],
        "output_basis": [StrOptions({"identity", "pca"})],
        "n_stochastic_sources": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    _min_samples = 2
    # Use closed forms where they apply: Linear -> elementwise sections and a
    # model's own ``lib_section_vjp`` (tests turn them off to compare with the
    # generic path).
    _structured = True

    def __init__(
        self,
        model,
        layer,
        *,
        downstream_layers=(),
        capture="input",
        basis="lib",
        n_components=None,
        truncation_threshold=1e-10,
        center=True,
        integration="gradient",
        n_intervals=0,
        output_basis="identity",
        batch_size=256,
        device="auto",
        dtype="float64",
        n_stochastic_sources=None,
        random_state=None,
        verbose=False,
    ):
        self.model = model
        self.layer = layer
        self.downstream_layers = downstream_layers
        self.capture = capture
        self.basis = basis
        self.n_components = n_components
        self.truncation_threshold = truncation_threshold
        self.center = center
        self.integration = integration
        self.n_intervals = n_intervals
        self.output_basis = output_basis
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.n_stochastic_sources = n_stochastic_sources
        self.random_state = random_state
        self.verbose = verbose

    # -- fitting -----------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the bases of ``layer`` and every downstream layer.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), DataLoader or iterable of batches
            Model inputs (any per-sample shape; integer token ids stay
            integers).  A ``torch.utils.data.DataLoader`` or another
            re-iterable object yielding batches (arrays, tensors, or tuples
            whose first item is one) is streamed: read once per pass, so
            memory does not grow with the number of samples.
        y : Ignored

        Returns
        -------
        self : LIBTransformer
        """
        self._fit(X)
        return self

    def _fit(self, X):
        if is_stream(X):
            source = StreamSource(X)
            probe = self._validate_input(source.probe(_PROBE_SIZE), reset=True)
        else:
            X = self._validate_input(X, reset=True)
            source, probe = ArraySource(X, self.batch_size), X[:_PROBE_SIZE]
        names = [self.layer, *self.downstream_layers]
        if OUTPUT_NODE in names:
            raise ValueError(
                f"A node layer may not be called {OUTPUT_NODE!r}: that name is "
                "reserved for the model-output node"
            )
        alphas, weights = integration_rule(self.integration, self.n_intervals)
        progress = Progress(type(self).__name__, self.verbose)
        rng = check_random_state(self.random_state)
        with self._model_session() as runner:
            probe = self._to_tensor(runner, probe)
            with torch.no_grad():
                nodes, output_shape = inspect_node_layers(runner, probe, names)
                if self.basis == "lib":
                    for src, dst in zip(nodes, [*nodes[1:], None]):
                        dst_name = "the model output" if dst is None else f"layer {dst.name!r}"
                        check_cut(runner, probe, src, dst, dst_name, rng)
            rule = (
                torch.as_tensor(alphas, device=runner.device),
                torch.as_tensor(weights, device=runner.device),
            )
            # Stochastic sources draw on the CPU from a seeded generator, so a
            # fit is reproducible on any device.
            generator = torch.Generator().manual_seed(int(rng.randint(2**31 - 1)))
            ctx = _FitPass(runner, source, rule, progress, generator)
            last = None
            if self.basis == "lib" and self.output_basis == "identity":
                # The output's basis is known before any pass, so the last
                # section's M' joins the pass that collects the statistics:
                # one pass over the data fewer.
                d_out = output_shape[-1]
                eye = torch.eye(d_out, device=runner.device, dtype=runner.dtype)
                n_pos_out = int(np.prod(output_shape[:-1], dtype=int))
                last = _JacobianGram(self, ctx, nodes[-1], None, eye, n_pos_out, OUTPUT_NODE)
            moments, output_moments = self._collect_moments(ctx, nodes, output_shape, last)
            bases = self._fit_bases(ctx, nodes, moments, output_moments, output_shape, last)

        self.bases_ = bases
        main = bases[self.layer]
        self.activation_shape_ = main.shape
        self.n_positions_ = main.n_positions
        self.output_shape_ = output_shape
        self.n_components_ = main.n_components
        self.components_ = main.kept_matrix.T.copy()
        self.inverse_components_ = main.kept_pinv.copy()
        self.mean_ = main.mean
        self.lambdas_ = main.lambdas[: main.n_components].copy()
        progress("done")
        return X

    def _collect_moments(self, ctx, nodes, output_shape, last=None):
        """One pass: mean and Gram of every node layer, mean of the output.

        ``last``, a :class:`_JacobianGram` of the last section, accumulates
        in the same pass.
        """
        runner, source = ctx.runner, ctx.source
        device = runner.device
        moments = [MomentAccumulator(node.n_features, device, self.center) for node in nodes]
        output_moments = MomentAccumulator(
            output_shape[-1], device, center=True, gram=self.output_basis == "pca"
        )
        modules = [node.module for node in nodes]
        what = "activation statistics" + ("" if last is None else f" and {last.what}")
        batches = ctx.progress.samples(source.batches(), source.n_samples, what)
        for batch in batches:
            x = self._to_tensor(runner, batch)
            with torch.no_grad():
                reads, output = runner.run(x, reads=modules)
            for node, f, acc in zip(nodes, reads, moments):
                check_finite(f, node.name)
                acc.update(f.reshape(-1, node.n_features))
            check_finite(output, "model output")
            output_moments.update(output.reshape(-1, output_shape[-1]))
            if last is not None:
                last.add(x, reads[-1])
        for acc in [*moments, output_moments]:
            acc.reduce()
        return moments, output_moments

    def _output_basis(self, output_moments, output_shape):
        d = output_shape[-1]
        mean = output_moments.mean.cpu().numpy()
        if self.output_basis == "identity":
            # No ranking among logits: the identity basis has unit "importance".
            eye = np.eye(d)
            return NodeBasis(
                OUTPUT_NODE, output_shape, mean, eye, eye, np.ones(d), d, kind="identity"
            )
        # Orthogonal and untruncated (null directions kept), so upstream bases
        # stay exactly as with the identity.
        values, vectors = eigh_descending(output_moments.gram.cpu().numpy())
        # Eigenvalues can be slightly negative from rounding, hence the clip.
        values = np.clip(values, 0, None)
        return NodeBasis(
            OUTPUT_NODE,
            output_shape,
            mean,
            vectors,
            vectors.T.copy(),
            values,
            d,
            gram_eigenvalues=values,
            kind="pca",
        )

    def _fit_bases(self, ctx, nodes, moments, output_moments, output_shape, last=None):
        rtol = null_space_rtol(ctx.runner.dtype)
        next_basis = self._output_basis(output_moments, output_shape)
        bases = {OUTPUT_NODE: next_basis}
        for i in reversed(range(len(nodes))):
            node, acc = nodes[i], moments[i]
            D, U = orthogonal_step(acc.gram.cpu().numpy(), rtol, node.name)
            if self.basis == "pca":
                lambdas, C, C_pinv = D, U, U.T.copy()
            else:
                if last is not None and i == len(nodes) - 1:
                    m_prime = last.result()
                else:
                    dst = nodes[i + 1] if i + 1 < len(nodes) else None
                    m_prime = self._jacobian_gram(ctx, node, dst, next_basis)
                lambdas, C, C_pinv = lib_rotation(D, U, m_prime, rtol, node.name)
            k = n_kept(
                lambdas,
                self.n_components if i == 0 else None,
                self.truncation_threshold,
                node.name,
            )
            mean = acc.mean.cpu().numpy() if self.center else np.zeros(node.n_features)
            next_basis = NodeBasis(
                node.name,
                node.shape,
                mean,
                C,
                C_pinv,
                lambdas,
                k,
                gram_eigenvalues=D,
                kind=self.basis,
            )
            bases[node.name] = next_basis
        # Forward order: layer, downstream layers, output.
        return {name: bases[name] for name in [n.name for n in nodes] + [OUTPUT_NODE]}

    def _jacobian_gram(self, ctx, src, dst, next_basis):
        """``M'`` of the section ``src -> dst`` by one pass over the data (see _JacobianGram)."""
        basis_next = torch.as_tensor(
            next_basis.kept_matrix, device=ctx.runner.device, dtype=ctx.runner.dtype
        )
        acc = _JacobianGram(
            self, ctx, src, dst, basis_next, next_basis.n_positions, next_basis.name
        )
        for batch in ctx.progress.samples(ctx.source.batches(), ctx.source.n_samples, acc.what):
            acc.add(self._to_tensor(ctx.runner, batch))
        return acc.result()

    # -- mapping -----------------------------------------------------------------------
    @property
    def _n_features_out(self):
        return self.n_positions_ * self.n_components_

    def get_feature_names_out(self, input_features=None):
        """Names of the output features, position-major for layers with positions.

        ``libtransformer{j}`` for plain layers; ``libtransformer{j}_pos{p}``
        when the layer has positions.
        """
        names = super().get_feature_names_out(input_features)
        if self.n_positions_ == 1:
            return names
        prefix = type(self).__name__.lower()
        return np.asarray(
            [
                f"{prefix}{j}_pos{p}"
                for p in range(self.n_positions_)
                for j in range(self.n_components_)
            ],
            dtype=object,
        )

    def transform(self, X):
        """LIB features of ``layer``'s activations on the model inputs ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Model inputs of the per-sample shape seen in ``fit``.

        Returns
        -------
        ndarray of shape (n_samples, n_positions_ * n_components_)
            Position-major columns (see Notes of the class).
        """
        check_is_fitted(self)
        X = self._validate_input(X, reset=False)
        return self._map_layer(X, self.layer, self._project, self._n_features_out)

    def transform_activations(self, A):
        """LIB features of raw activations: ``(A - mean_) @ components_.T``.

        Parameters
        ----------
        A : array-like of shape (n_samples, *activation_shape_) or (n_samples, P * d)

        Returns
        -------
        ndarray of shape (n_samples, n_positions_ * n_components_)
        """
        check_is_fitted(self)
        A = check_activations(A, self.activation_shape_, type(self).__name__)
        return self._project(torch.from_numpy(A)).numpy()

    def _project(self, f):
        """(n, P, d) float64 tensor -> (n, P * k) features."""
        mean = torch.as_tensor(self.mean_, device=f.device)
        components = torch.as_tensor(self.components_, device=f.device)
        return ((f - mean) @ components.T).reshape(f.shape[0], -1)

    def inverse_transform(self, X):
        """Activations reconstructed from LIB features.

        Uses the first ``n_components_`` rows of the full pseudo-inverse, so
        dropped features are mean-ablated.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_positions_ * n_components_)

        Returns
        -------
        ndarray of shape (n_samples, n_positions_ * n_features)
            Activations flattened per sample, position-major (as
            :class:`ActivationTransformer` returns them).
        """
        check_is_fitted(self)
        Z = check_array(X, dtype=np.float64, input_name="X")
        if Z.shape[1] != self._n_features_out:
            raise ValueError(
                f"X has {Z.shape[1]} features, but inverse_transform expects "
                f"{self._n_features_out} (n_positions_ * n_components_)"
            )
        Z = Z.reshape(Z.shape[0], self.n_positions_, self.n_components_)
        return (Z @ self.inverse_components_ + self.mean_).reshape(Z.shape[0], -1)

    # -- interaction graph -------------------------------------------------------------
    def interaction_graph(
        self,
        X,
        *,
        integration=None,
        n_intervals=None,
        n_stochastic_sources=None,
        random_state=None,
        verbose=None,
    ):
        """Squared edges between the features of consecutive node layers.

        Sections run from ``layer`` through each downstream layer to
        ``"output"``.  Edges connect the kept, non-constant features of each
        node (the paper's constant bias feature is not part of the basis):

        ``E[i, j] = 1/(N P_in) sum_x sum_t (sum_s sum_a w_a g_{ij,ts}(a) f_hat_{j,s})^2``
        with ``g_{ij,ts}(a) = dF_hat_{i,t} / df_hat_{j,s}`` at ``a * f_hat``,

        where ``F_hat`` maps the node's features (through the full
        pseudo-inverse's kept rows, the section and the next basis) to the
        next node's features.  The integration path scales the centred
        features: ``f = a * f_hat @ C_pinv + mean``.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Model inputs (usually the fitting data).
        integration, n_intervals : optional
            Integration rule (defaults: the estimator's).  The paper's edges
            use ``"gradient"``.
        n_stochastic_sources : int, optional
            Replace the sum over output positions ``t`` by this many random
            +-1 projections (an unbiased estimate, exact with one output
            position).  Worth it when the next node has many positions.
        random_state : int, RandomState instance or None
            Seeds the projections (default: the estimator's ``random_state``).
        verbose : bool, optional
            Progress on stderr (default: the estimator's ``verbose``).

        Returns
        -------
        InteractionGraph
        """
        from ._graph import compute_interaction_graph

        check_is_fitted(self)
        return compute_interaction_graph(
            self,
            X,
            integration=integration,
            n_intervals=n_intervals,
            n_stochastic_sources=n_stochastic_sources,
            random_state=random_state,
            verbose=verbose,
        )

    # -- faithfulness ------------------------------------------------------------------
    def score(self, X, y=None):
        """Faithfulness of the kept features: the model run on their reconstruction.

        ``layer``'s activations are replaced by ``inverse_transform(transform(.))``
        (the dropped features mean-ablated) and the rest of the model runs on
        them.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Model inputs.
        y : array-like of shape (n_samples,) or (n_samples, *output positions), default=None
            Class labels.  Given, the score is the accuracy of the argmax of
            the last output axis of the ablated model.  Without ``y`` it is
            the coefficient of determination ``1 - SSE / SST`` of the ablated
            outputs against the original outputs, pooled over all output
            entries (``r2_score(..., multioutput="variance_weighted")``):
            1 is perfect, higher is better.

        Returns
        -------
        score : float
        """
        from ._ablate import ablation_view, node_ablation_scores

        check_is_fitted(self)
        view = ablation_view(self)
        return float(node_ablation_scores(view, X, y, [self.n_components_])[0])
