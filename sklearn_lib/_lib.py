"""The Local Interaction Basis as a scikit-learn transformer."""

import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import _fit_context
from sklearn.utils._param_validation import Interval, RealNotInt, StrOptions, validate_params
from sklearn.utils.validation import check_array, check_is_fitted

from ._analysis.ablate import node_ablation_scores
from ._analysis.edges import interaction_graph
from ._analysis.graph import InteractionGraph
from ._base import (
    _ModelLayerTransformer,
    check_activations,
    check_padded_positions,
    map_arrays,
    reads_one_fit,
)
from ._core.nodes import OUTPUT_NODE, sections_of
from ._core.validation import StrictInterval
from ._files import fit_file
from ._files.fit_file import input_dtypes
from ._files.npz import as_path
from ._fitting.fit import FitSettings, bytes_per_sample, fit_bases, inspect, plan_fit
from ._fitting.plan import announce
from ._model.capture import node_shapes
from ._model.session import resolve_device
from ._model.sources import ArraySource
from ._routes.integration import (
    INTEGRATION_RULES,
    MAX_INTERVALS,
    integration_rule,
    rule_tensors,
)
from ._routes.table import JACOBIAN_ROUTES, decide_routes


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
    model : torch.nn.Module or skorch net
        A skorch ``NeuralNet`` (fitted or initialised) is read through its
        ``module_``.  Called as ``model(batch)`` on a tensor made from rows of ``X``, or as
        ``model(**batch)`` on a dict of them (keyword inputs).  It is
        never touched: every call works on a private copy (its own parameters
        and buffers, in ``dtype`` on ``device``, in eval mode), so the model's
        parameters, buffers, flags and hooks stay as they are, even while a
        pass runs, and several threads may use one model or one fitted
        estimator at once.  If its parameters or floating buffers change
        after ``fit`` (an optimiser step, a weight edit), the methods that
        run it warn with :class:`~sklearn_lib.StaleBasisWarning`.
    layer : str
        Name of the node layer to transform, from ``model.named_modules()``.
    downstream_layers : sequence of str, default=()
        Later node layers, in forward order.  ``layer``'s basis uses the
        Jacobian into the first of them; ``()`` goes straight to the model
        output.  Every node layer must be a *cut* (the next node layer depends
        on the input only through it), which ``fit`` checks.
    capture : {"input", "output"}, default="input"
        A node layer is the named module's first positional input (the paper's
        convention) or its output.  A module called with more arguments (a
        transformer block gets the residual stream, a cache, keyword
        arguments) has its first positional argument read and substituted,
        the rest passed through unchanged; a module that returns a tuple has
        its first item as the output.
    output : None, str, int or callable, default=None
        The model-output node among what the model returns: the return value
        itself (None, a tensor), the key or attribute of that name
        (``output="logits"`` for a Hugging Face model), that index of a
        returned tuple, or ``output(returned)``.  It is the node of the
        identity (or PCA) output basis, ``output_shape_`` and ``score``'s
        outputs.
    forward_kwargs : dict or None, default=None
        Keyword arguments of every call of the model, e.g.
        ``{"use_cache": False}``, so that no wrapper is needed.
    feature_axis : int, dict or None, default=None
        The axis of the activations (batch axis 0) that holds the features,
        at every node layer and the output (an int), or per node layer (a
        dict of node-layer names and ``"output"`` to axes; the others keep
        the last axis).  ``feature_axis=1`` makes the
        channels of ``(N, C, H, W)`` maps the features and the ``H * W``
        locations the positions, with one basis shared over locations.
        None: the last axis, as for ``(N, d)`` and ``(N, T, d)``;
        activations of 4 or more dimensions then need an explicit
        ``feature_axis`` (channels-first, as PyTorch convolutions make
        them: 1; channels-last: -1) and are refused without one.
        Everything the estimator returns has the features last
        (``activation_shape_ == (H, W, C)``).
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
    whiten : bool, default=False
        As in :class:`~sklearn.decomposition.PCA`: ``transform`` divides each
        feature by ``sqrt(Lambda)``, so that the features have unit variance
        on the fitting data (Lambda is their variance), and
        ``inverse_transform`` multiplies it back.  LIB features' variances
        span orders of magnitude; a downstream linear model converges much
        faster on whitened ones.  The bases, ``components_`` and every
        analysis (scores, ablations, graphs) are unchanged.
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
    batch_size : int or "auto", default="auto"
        Samples per forward/backward pass of array data (a stream brings its
        own batches).  Peak memory is set by this and a fixed chunk of
        Jacobian rows, never by the number of samples.  ``"auto"`` takes the
        largest power of two up to 4096 whose working set (four times what
        autograd saves per sample in the costliest section, or, for passes
        without gradients, twice what the forward's tensors hold at once,
        measured on the first 64 samples, and the signs of sources drawn per
        sample) fits
        512 MiB on the CPU, or a quarter of the free memory, at most 8 GiB,
        on a GPU; larger batches amortise the fixed cost of every operation,
        so at least 64 where they fit, fewer (down to one) for larger
        samples, which the plan says.  With ``n_stochastic_sources`` it is at most 256.
        ``batch_size_`` holds the size used.
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device, default="auto"
        Where passes run; ``"auto"`` uses CUDA when available.
    dtype : {"float64", "float32"}, default="float64"
        Precision of the forward and backward passes.  ``"float64"``
        reproduces the paper; ``"float32"`` is faster.  Accumulators and
        eigensolves are float64 either way; a float32 fit multiplies a Gram
        in float32 only where its first batch proves the products within
        1e-5 of float64's in every direction.  Integer inputs are never cast.
    n_stochastic_sources : int, "auto" or None, default=None
        None computes ``M'`` exactly, with one backward pass per output
        position and next-layer feature.  An int ``S`` uses ``S`` random +-1
        combinations of all of them per batch instead: an unbiased estimate
        of ``M'`` at a fraction of the cost for wide outputs or many
        positions.  Where the section's route takes rows per sample
        (autograd's, a traced closed form's, a final linear map's), each
        sample draws its own signs, so its error shrinks like
        ``1 / sqrt(S * n_samples)``; elsewhere the samples of a batch share
        them (``1 / sqrt(S * n_batches)``).  ``"auto"`` draws sources in
        rounds (one pass of 16 per batch each) until the top-5 features stop
        moving: twice the estimated error of their Lambda (its standard
        error) within 1% of the largest and the estimated cosine of their
        subspace with the exact one at least 0.99 (at most 64 rounds, and
        never more sources than the exact ``M'`` has rows: it is computed
        instead); see ``n_stochastic_sources_`` and ``stochastic_rounds_``.
    jacobian : {"auto", "autograd"}, default="auto"
        How Jacobian products are computed, for ``M'`` and for the edges.
        ``"auto"`` uses a closed form where one applies (the Linear ->
        elementwise formula for such sections of an ``nn.Sequential``, the
        rows of a final linear map's input for a section to the output that
        ends in one, or the model's own ``lib_section_vjp`` /
        ``lib_section_gram``), each checked against autograd once per
        section and used only if it agrees;
        ``"autograd"`` always uses autograd (the reference, slower).
    compute_graph : bool, default=False
        Also compute the interaction graph of the fitting data during
        ``fit``, as ``interaction_graph_`` (like ``interaction_graph(X)``
        with its defaults).  Faster than the two calls: a section whose
        ``M'`` takes Jacobian rows by autograd gives its edges from the same
        rows, kept for the length of its pass (up to 1 GiB per section;
        beyond it, or where points differ, the section's edges take a pass
        of their own).  The rows serve only the plain gradient
        (``integration="gradient"``), exact ``M'`` and a truncation that
        drops no variance of the activations.
    random_state : int, RandomState instance or None, default=None
        Seeds the permutation of the cut check and the stochastic sources.
    verbose : bool, default=False
        Print the fit's plan (passes, Jacobian rows per batch, an estimate
        of the time) and the progress of each pass to stderr.  Without it, a
        fit estimated to take more than 10 s still says its plan once,
        through the ``"sklearn_lib"`` logger at level WARNING.

    Attributes
    ----------
    components_ : ndarray of shape ``(n_components_, n_features)``
        Rows are the kept columns of ``C``:
        ``transform_activations(A) == (A - mean_) @ components_.T``.
    inverse_components_ : ndarray of shape ``(n_components_, n_features)``
        The first ``n_components_`` rows of the *full* pseudo-inverse ``C+``;
        ``inverse_transform(Z) == Z @ inverse_components_ + mean_``.
    mean_ : ndarray of shape (n_features,)
        Per-feature mean of the activations (zeros if ``center=False``).
    lambdas_ : ndarray of shape ``(n_components_,)``
        ``Lambda`` of the kept features, descending (variances for PCA).
    n_components_ : int
        Number of kept features.
    activation_shape_ : tuple
        Per-sample shape ``(*positions, n_features)`` of ``layer``'s
        activations on the fit's first batch (sequences of other lengths
        are accepted everywhere, see Notes).
    n_positions_ : int
        Number of positions of ``activation_shape_`` (1 for a plain ``(n, d)`` layer).
    bases_ : dict of str to NodeBasis
        Every fitted basis in forward order: ``layer``, each downstream layer,
        and ``"output"``.  Each holds the full matrix, pseudo-inverse, mean,
        ``Lambda`` and the kept count, so interaction graphs need no refit.
    output_shape_ : tuple
        Per-sample shape of the model output.
    n_stochastic_sources_ : dict of str to int or None
        Random sources per batch behind each section's ``M'``, by its
        source node layer (None: exact).
    stochastic_rounds_ : dict of str to SourceRounds
        With ``n_stochastic_sources="auto"``: per section, the rounds run,
        the sources in all, the estimated Lambda error (the error to expect,
        one standard error) and subspace cosine (counting what the node
        inherits from later nodes' rounds), whether
        it converged, and whether it ended in the exact ``M'``.
    batch_size_ : int
        Samples per batch of array data in every pass (``batch_size``, or
        the one ``"auto"`` chose for the memory budget; fewer samples make
        one batch).
    interaction_graph_ : InteractionGraph
        With ``compute_graph=True``: the interaction graph of the fitting data.
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
    ``p * n_components_ + j`` is feature ``j`` at position ``p``, positions
    in row-major order (``p = h * W + w`` for a map with ``feature_axis``).

    Padding: when ``X`` holds dicts with an ``attention_mask`` (1 for real
    tokens, 0 for padding), a node layer whose positions are the mask's
    counts only real tokens, in every average (means, Grams, ``M'``, edges)
    and score, so a padded batch gives the basis of its unpadded sequences.
    ``transform`` returns NaN in the columns of padded positions.  Node
    layers of other shapes (a pooled ``(n, d)``) count every sample.

    Lengths: sequences of token ids (integer fields, their first axis after
    the batch axis) may differ in length between the batches of a stream
    (as ``DataCollatorWithPadding`` pads each batch to its own longest) and
    between ``fit`` and later calls.  Nothing fitted depends on a position
    or a length (one basis and one mean for every position), so a fit on
    dynamically padded batches equals the fit on the same sequences padded
    to one length.  ``transform`` of inputs of length ``T`` has ``T *
    n_components_`` columns (a stream of several lengths: those of its
    longest, NaN beyond each sequence); :meth:`transform_tokens` gives one
    row per real token instead.

    The constant (bias) direction of the paper is not a feature here: with
    centring, the non-constant features and their ``Lambda`` do not depend on
    it.

    Jacobians come from autograd, or from a closed form where one applies:
    Linear -> elementwise sections of an ``nn.Sequential``, residual MLP
    blocks and affine sections of your own modules, a section to the output
    that ends in a linear map of fewer inputs than outputs (its exact
    ``M'`` from one row per input of the map, not per output), the model's own
    ``lib_section_vjp`` / ``lib_section_gram`` (each checked against
    autograd once per section, on the first samples; see
    ``sklearn_lib/_routes/forms/`` and ``jacobian``).

    ``X`` may be an array-like of samples or a stream of batches (a
    ``DataLoader`` or any re-iterable), in every method that reads data.

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

    # StrictInterval: sklearn's Interval takes True and False as the ints 1 and 0.
    _parameter_constraints = {
        **_ModelLayerTransformer._parameter_constraints,
        "downstream_layers": [list, tuple],
        "basis": [StrOptions({"lib", "pca"})],
        "n_components": [
            StrictInterval(Integral, 1, None, closed="left"),
            Interval(RealNotInt, 0, 1, closed="neither"),
            None,
        ],
        "truncation_threshold": [StrictInterval(Real, 0, 1, closed="left")],
        "center": ["boolean"],
        "whiten": ["boolean"],
        "integration": [StrOptions(set(INTEGRATION_RULES))],
        "n_intervals": [StrictInterval(Integral, 0, MAX_INTERVALS, closed="both")],
        "output_basis": [StrOptions({"identity", "pca"})],
        "n_stochastic_sources": [
            StrictInterval(Integral, 1, None, closed="left"),
            StrOptions({"auto"}),
            None,
        ],
        "jacobian": [StrOptions(set(JACOBIAN_ROUTES))],
        "compute_graph": ["boolean"],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    _min_samples = 2

    def __init__(
        self,
        model,
        layer,
        *,
        downstream_layers=(),
        capture="input",
        output=None,
        forward_kwargs=None,
        feature_axis=None,
        basis="lib",
        n_components=None,
        truncation_threshold=1e-10,
        center=True,
        whiten=False,
        integration="gradient",
        n_intervals=0,
        output_basis="identity",
        batch_size="auto",
        device="auto",
        dtype="float64",
        n_stochastic_sources=None,
        jacobian="auto",
        compute_graph=False,
        random_state=None,
        verbose=False,
    ):
        self.model = model
        self.layer = layer
        self.downstream_layers = downstream_layers
        self.capture = capture
        self.output = output
        self.forward_kwargs = forward_kwargs
        self.feature_axis = feature_axis
        self.basis = basis
        self.n_components = n_components
        self.truncation_threshold = truncation_threshold
        self.center = center
        self.whiten = whiten
        self.integration = integration
        self.n_intervals = n_intervals
        self.output_basis = output_basis
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.n_stochastic_sources = n_stochastic_sources
        self.jacobian = jacobian
        self.compute_graph = compute_graph
        self.random_state = random_state
        self.verbose = verbose

    # -- fitting -----------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the bases of ``layer`` and every downstream layer.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), dict of them, DataLoader or iterable of batches
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
        with self._fitted_aside() as aside:
            aside._fit(X)
        return self

    def _fit(self, X):
        source, probe = self._source(X, reset=True)
        settings = self._settings()
        session = self._session(fitting=True)
        probe = session.inputs(probe)
        sections = inspect(session, probe, [self.layer, *self.downstream_layers], settings)
        # M' takes Grams or rows (LIB only); the edges, directional derivatives or rows.
        kinds = ("gram", "rows") if settings.basis == "lib" else ()
        kinds += ("tangents", "rows") if self.compute_graph else ()
        # Rows that are all random sources (no graph) gain nothing from a form built for
        # exact rows' structure: those forms are not tried.
        sampled = settings.n_stochastic_sources not in (None, "auto") and not self.compute_graph
        routes = (
            self._routes(session, probe, sections, set(kinds), sampled=sampled) if kinds else None
        )
        plan = plan_fit(
            session, source, probe, sections, routes, settings, compute_graph=self.compute_graph
        )
        note = self._choose_batch_size(
            source,
            session,
            lambda: bytes_per_sample(session, probe, sections, plan),
            within_cache=routes.batch_within_cache() if routes is not None else None,
            most=plan.most_batch_size,
        )
        # A stream brings its own batches: the plan names a size only for arrays.
        arrays = isinstance(source, ArraySource)
        plan = plan.with_batch_size(self.batch_size_ if arrays else None, note if arrays else "")
        announce(plan, session.progress, routes)
        result = fit_bases(session, source, sections, plan, routes, settings)
        if self.compute_graph:
            self.interaction_graph_ = interaction_graph(
                session,
                source,
                list(result.bases.values()),
                routes,
                integration=self.integration,
                n_intervals=self.n_intervals,
                known=result.edges,
            )

        self._set_bases(result.bases, sections[-1].dst_shape)
        # Of the copy the bases were fitted on: later calls warn if the model changed.
        self._model_fingerprint_ = session.fingerprint
        self._input_dtypes_ = input_dtypes(probe)
        self.stochastic_rounds_ = result.rounds
        self.n_stochastic_sources_ = {
            s.section.src: _sources_used(s, result.rounds.get(s.section.src)) for s in plan.sections
        } or {name: None for name in result.bases if name != OUTPUT_NODE}
        session.progress("done")

    def _settings(self):
        """The parameters that shape a fit, checked and resolved."""
        return FitSettings(
            basis=self.basis,
            n_components=self.n_components,
            truncation_threshold=self.truncation_threshold,
            center=self.center,
            rule=integration_rule(self.integration, self.n_intervals),
            output_basis=self.output_basis,
            n_stochastic_sources=self.n_stochastic_sources,
            jacobian=self.jacobian,
        )

    def _routes(
        self, session, probe, sections, kinds, *, integration=None, n_intervals=None, sampled=False
    ):
        """The route table of ``sections``, decided on ``probe`` for the estimator's rule
        (``sampled``: every row a random source, :func:`decide_routes`)."""
        rule = integration_rule(
            self.integration if integration is None else integration,
            self.n_intervals if n_intervals is None else n_intervals,
        )
        rule = rule_tensors(rule, session.device)
        return decide_routes(
            session, probe, sections, rule, kinds, jacobian=self.jacobian, sampled=sampled
        )

    def _set_bases(self, bases, output_shape):
        """The fitted attributes that follow from the bases (a fit's, or a saved file's)."""
        self.bases_ = bases
        main = bases[self.layer]
        self.activation_shape_ = main.shape
        self.n_positions_ = main.n_positions
        self.output_shape_ = tuple(output_shape)
        self.n_components_ = main.n_components
        self.components_ = main.kept_matrix.T.copy()
        self.inverse_components_ = main.kept_pinv.copy()
        self.mean_ = main.mean
        self.lambdas_ = main.lambdas[: main.n_components].copy()

    # -- saving -----------------------------------------------------------------------
    @reads_one_fit
    def save(self, path):
        """Write the fitted bases, attributes and parameters to ``path``, without the model.

        A compressed ``.npz`` of float arrays and one JSON string: the file is
        about the size of the bases (not of the model), and :meth:`load`
        never unpickles anything.  The write is atomic: a failure leaves a
        file already at ``path`` as it was.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write, exactly (no suffix is appended); :meth:`load`
            takes the same string.  ``.npz`` is the customary suffix.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the estimator is not fitted, or a parameter that its fitted state
            depends on changed since the fit (``set_params``).
        TypeError
            If a parameter would not load as it is (a callable ``output``, a
            tensor or array in ``forward_kwargs``, a ``RandomState`` instance):
            refused before anything is written.
        ValueError
            If the file would not load (the same checks as :meth:`load`, run
            first), for example a ``meta`` over the size limit.
        """
        check_is_fitted(self)
        fit_file.write(path, self._saved_fit(), type(self).__name__)

    @classmethod
    def load(cls, path, model, *, device=None):
        """A fitted estimator from a file of :meth:`save` and the model it describes.

        The file is checked for every invariant a fit leaves (Lambda finite,
        positive and descending, each pseudo-inverse inverting its matrix, the
        fitted counts agreeing with the arrays), reading no more than its
        legitimate contents.  The model is checked: it must have the saved node
        layers, in order, with the saved activation shapes, and the saved output
        shape (one forward pass on a probe of zeros of the saved input shape).  If its
        weights differ from those the bases were fitted on, later calls warn
        with :class:`~sklearn_lib.exceptions.StaleBasisWarning`, as after a
        fit.  The saved parameters are checked as ``fit`` checks them, and
        ``set_output`` survives the round trip.

        Parameters
        ----------
        path : str or os.PathLike
            The file, exactly as given to :meth:`save`.
        model : torch.nn.Module or skorch net
        device : str or torch.device, optional
            Where later passes run.  None keeps the saved ``device`` where
            this machine has it, and otherwise falls back to ``"auto"`` with
            a warning: a fit saved on a GPU machine loads on a laptop.

        Returns
        -------
        LIBTransformer

        Raises
        ------
        ValueError
            If the file is not a saved LIBTransformer (truncated, tampered
            with, another format: the message names the file and the
            problem), or the model does not fit its bases.
        """
        saved = fit_file.read(path, cls.__name__)
        try:
            estimator = cls(model, **saved.params)
            # The parameters as fit would check them: a tampered value is refused
            # here, not by the first transform.
            estimator._validate_params()
            layers = [estimator.layer, *estimator.downstream_layers, OUTPUT_NODE]
            if list(saved.bases) != layers:
                raise ValueError(
                    f"the bases are of {list(saved.bases)}, but the parameters name {layers}"
                )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{as_path(path)!r} is not a saved {cls.__name__}: {exc}") from exc
        estimator._restore_fit(saved)
        if saved.fingerprint is None:
            _warn_uncomparable(path)
        estimator._set_device(device, path)
        # The weights may differ from the saved fingerprint's: that only warns later.
        fit_file.check_model(estimator._session(fitting=True), saved, as_path(path))
        return estimator

    def _saved_fit(self):
        """This fit as a file holds it (:class:`~sklearn_lib._files.fit_file.SavedFit`)."""
        params = self.get_params(deep=False)
        params.pop("model")
        graph = getattr(self, "interaction_graph_", None)
        output_config = getattr(self, "_sklearn_output_config", {}).get("transform")
        return fit_file.SavedFit(
            params=params,
            bases=self.bases_,
            output_shape=self.output_shape_,
            input_shape=self.input_shape_,
            input_dtypes=self._input_dtypes_,
            batch_size=self.batch_size_,
            n_stochastic_sources=self.n_stochastic_sources_,
            rounds=self.stochastic_rounds_,
            fingerprint=self._model_fingerprint_,
            inputs={n: getattr(self, n) for n in fit_file.INPUT_ATTRIBUTES if hasattr(self, n)},
            graph=None if graph is None else (graph.nodes, graph.lambdas, graph.edges, graph.info),
            output_config=None if output_config is None else {"transform": output_config},
        )

    def _restore_fit(self, saved):
        """The fitted attributes of a :class:`~sklearn_lib._files.fit_file.SavedFit`."""
        self._set_bases(saved.bases, saved.output_shape)
        self.input_shape_ = saved.input_shape
        self._input_dtypes_ = saved.input_dtypes
        self.batch_size_ = saved.batch_size
        self.n_stochastic_sources_ = saved.n_stochastic_sources
        self.stochastic_rounds_ = saved.rounds
        self._model_fingerprint_ = saved.fingerprint
        self._fit_defining_ = self._fit_defining_digests()  # the saved parameters'
        for name, value in saved.inputs.items():
            names = name == "feature_names_in_"
            setattr(self, name, np.asarray(value, dtype=object) if names else value)
        if saved.graph is not None:
            self.interaction_graph_ = InteractionGraph(*saved.graph)
        if saved.output_config:  # set_output(transform="pandas") survives the round trip
            self.set_output(**saved.output_config)

    def _set_device(self, device, path):
        """``device`` if given; else the saved one where this machine has it, else "auto".

        A fit saved on a GPU machine (``device="cuda:3"``, say) loads on a laptop.
        """
        if device is not None:
            self.set_params(device=device)
            resolve_device(device)  # a device this machine lacks is refused now, by name
            return
        try:
            resolve_device(self.device)
        except ValueError as exc:
            warnings.warn(
                f"{as_path(path)!r} was saved with device={self.device!r}, which this machine "
                f"cannot use ({exc}); loaded with device='auto'. Pass load(..., device=...) "
                "to choose one.",
                UserWarning,
                stacklevel=3,
            )
            self.set_params(device="auto")

    # -- mapping -----------------------------------------------------------------------
    @property
    def _n_features_out(self):
        return self.n_positions_ * self.n_components_

    @reads_one_fit
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

    @reads_one_fit
    def transform(self, X):
        """LIB features of ``layer``'s activations on the model inputs ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), dict of them, DataLoader or iterable of batches
            Model inputs of the per-sample shape seen in ``fit``; sequences
            of token ids may have any length the model takes.

        Returns
        -------
        ndarray of shape ``(n_samples, T * n_components_)``
            Position-major columns (see Notes of the class), ``T`` the
            positions of ``X`` (``n_positions_`` at the fit's length; the
            longest batch's for a stream of several lengths, NaN beyond
            each sequence).
        """
        check_is_fitted(self)
        return self._map_layer(self._source(X), self._project)

    @reads_one_fit
    def transform_tokens(self, X):
        """LIB features of every real token of ``layer``: one row per token, not per sample.

        The natural table of a sequence (or of a feature map's locations):
        ``(n_tokens, n_components_)``, whatever the lengths of the sequences
        in ``X``, padded positions left out (an ``attention_mask`` marks
        them).  Its rows are what every average of the fit runs over, so each
        feature's variance over them is its ``Lambda`` on the fitting data.
        Streamed: memory holds the result, never a padded ``(n, T, k)`` table.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), dict of them, DataLoader or iterable of batches
            Model inputs; sequences of any length the model takes.

        Returns
        -------
        features : ndarray of shape ``(n_tokens, n_components_)``
            Sample-major, positions in order within a sample.
        index : ndarray of shape (n_tokens, 1 + n_position_axes), int64
            Row ``r``'s sample (its index in ``X``) and position: ``(sample, t)``
            for a sequence, ``(sample, h, w)`` for a feature map.

        See Also
        --------
        inverse_transform_tokens : Activations of each token from its features.
        """
        check_is_fitted(self)
        return self._map_tokens(self._source(X), lambda f: self._project(f[:, None]))

    @reads_one_fit
    def inverse_transform_tokens(self, Z):
        """Activations of tokens from their LIB features, ``(n_tokens, n_features)``.

        The inverse of :meth:`transform_tokens` on the kept features (the
        dropped ones mean-ablated), as :meth:`inverse_transform` is of
        :meth:`transform`.

        Parameters
        ----------
        Z : array-like of shape ``(n_tokens, n_components_)``
            Or a stream of such batches.

        Returns
        -------
        ndarray of shape (n_tokens, n_features)
        """
        check_is_fitted(self)

        def reconstruct(batch):
            Z = check_array(batch, dtype=np.float64, input_name="Z")
            if Z.shape[1] != self.n_components_:
                raise ValueError(
                    f"Z has {Z.shape[1]} columns, but inverse_transform_tokens expects "
                    f"{self.n_components_} (n_components_, one row per token)"
                )
            return self._reconstruct(Z)

        return map_arrays(Z, reconstruct)

    @reads_one_fit
    def transform_activations(self, A):
        """LIB features of raw activations: ``(A - mean_) @ components_.T``.

        Divided by ``sqrt(lambdas_)`` with ``whiten=True``.

        Parameters
        ----------
        A : array-like of shape ``(n_samples, *activation_shape_)`` or (n_samples, P * d)
            Or a stream of such batches; a sequence layer takes any length
            ``T``, ``(n_samples, T, d)`` or ``(n_samples, T * d)``.

        Returns
        -------
        ndarray of shape ``(n_samples, P * n_components_)``
        """
        check_is_fitted(self)

        def project(batch):
            batch = check_activations(batch, self.activation_shape_, type(self).__name__)
            return self._project(torch.from_numpy(batch)).numpy()

        return map_arrays(A, project, width=self.n_components_)

    def _project(self, f):
        """(n, P, d) float64 tensor -> (n, P * k) features."""
        mean, matrix, _ = self.bases_[self.layer].tensors(f.device)
        features = (f - mean) @ matrix
        if self.whiten:
            features = features / torch.from_numpy(np.sqrt(self.lambdas_)).to(features)
        return features.reshape(f.shape[0], -1)

    @reads_one_fit
    def inverse_transform(self, X):
        """Activations reconstructed from LIB features.

        Uses the first ``n_components_`` rows of the full pseudo-inverse, so
        dropped features are mean-ablated.

        Parameters
        ----------
        X : array-like of shape ``(n_samples, T * n_components_)``
            Or a stream of such batches; any ``T`` for a layer with one axis
            of positions (a sequence), ``n_positions_`` otherwise.  Positions
            whose columns are all NaN (padded ones, as ``transform`` returns
            them) stay NaN.

        Returns
        -------
        ndarray of shape ``(n_samples, T * n_features)``
            Activations flattened per sample, position-major (as
            :class:`ActivationTransformer` returns them).
        """
        check_is_fitted(self)

        def reconstruct(batch):
            Z = check_array(batch, dtype=np.float64, input_name="X", ensure_all_finite="allow-nan")
            Z = Z.reshape(Z.shape[0], self._positions_of(Z.shape[1]), self.n_components_)
            return self._reconstruct(check_padded_positions(Z, "X")).reshape(Z.shape[0], -1)

        return map_arrays(X, reconstruct, width=self.activation_shape_[-1])

    def _positions_of(self, width):
        """The positions of ``width`` feature columns: any length for a sequence layer."""
        k = self.n_components_
        if len(self.activation_shape_) == 2 and width % k == 0 and width:
            return width // k
        if width != self._n_features_out:
            expected = (
                f"a multiple of {k} (n_components_ per position)"
                if len(self.activation_shape_) == 2
                else f"{self._n_features_out} (n_positions_ * n_components_)"
            )
            raise ValueError(f"X has {width} features, but inverse_transform expects {expected}")
        return self.n_positions_

    def _reconstruct(self, Z):
        """Activations ``(..., d)`` of features ``(..., k)``; NaN rows stay NaN."""
        if self.whiten:
            Z = Z * np.sqrt(self.lambdas_)
        return Z @ self.inverse_components_ + self.mean_

    # -- interaction graph -------------------------------------------------------------
    @validate_params(
        {
            "integration": [StrOptions(set(INTEGRATION_RULES)), None],
            "n_intervals": [StrictInterval(Integral, 0, MAX_INTERVALS, closed="both"), None],
            "n_stochastic_sources": [StrictInterval(Integral, 1, None, closed="left"), None],
            "random_state": ["random_state"],
            "verbose": ["verbose", None],
        },
        prefer_skip_nested_validation=True,
    )
    @reads_one_fit
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
        X : array-like of shape (n_samples, ...), dict of them, DataLoader or iterable of batches
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
        check_is_fitted(self)
        source, probe = self._source(X, probe=True)
        session = self._session(verbose=verbose, random_state=random_state)
        bases = list(self.bases_.values())
        rule = {
            "integration": self.integration if integration is None else integration,
            "n_intervals": self.n_intervals if n_intervals is None else n_intervals,
        }
        names = [basis.name for basis in bases[:-1]]
        probe = session.inputs(probe)
        sections = sections_of(names, *node_shapes(session, probe, names))
        routes = self._routes(session, probe, sections, {"tangents", "rows"}, **rule)
        return interaction_graph(
            session, source, bases, routes, n_stochastic_sources=n_stochastic_sources, **rule
        )

    # -- faithfulness ------------------------------------------------------------------
    @reads_one_fit
    def score(self, X, y=None):
        """Faithfulness of the kept features: the model run on their reconstruction.

        ``layer``'s activations are replaced by ``inverse_transform(transform(.))``
        (the dropped features mean-ablated) and the rest of the model runs on
        them.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), dict of them, DataLoader or iterable of batches
            Model inputs.
        y : array-like of shape (n_samples,) or ``(n_samples, *output positions)``, default=None
            Class labels.  Given, the score is the accuracy of the argmax of
            the last output axis of the ablated model.  Without ``y`` it is
            the coefficient of determination ``1 - SSE / SST`` of the ablated
            outputs against the original outputs, with every output row (a
            sample, or each real token of a sequence) one observation and
            one mean per output feature (``r2_score(rows, ...,
            multioutput="variance_weighted")``), so padding, on either side
            and of any length, does not change it: 1 is perfect, higher is
            better.  R² needs at least 2 samples
            whose outputs vary; otherwise it is undefined and ``score``
            raises a ``ValueError`` (give ``y`` for accuracy instead).

        Returns
        -------
        score : float
        """
        check_is_fitted(self)
        basis = self.bases_[self.layer]
        scores = node_ablation_scores(
            self._session(), self._source(X), basis, [basis.n_components], y
        )
        return float(scores[0])


def _warn_uncomparable(path):
    """The warning of a file whose model fingerprint this version cannot compare."""
    warnings.warn(
        f"{as_path(path)!r} was saved by an earlier version of sklearn-lib, whose "
        "model checksums this version does not compare: later calls cannot warn "
        "if the model differs from the one the bases were fitted on (refit and "
        "save to record it)",
        UserWarning,
        stacklevel=3,
    )


def _sources_used(section_plan, rounds):
    """The sources per batch behind a section's ``M'``: the plan's, or what ``"auto"``'s
    rounds ran (None where they ended in the exact ``M'``)."""
    if rounds is None:
        return section_plan.sources
    return None if rounds.exact else rounds.n_sources
