"""Raw activations of a layer as a scikit-learn transformer."""

import math

import torch
from sklearn.base import _fit_context
from sklearn.utils.validation import check_is_fitted

from ._base import _ModelLayerTransformer, reads_one_fit
from ._files.fit_file import input_dtypes
from ._model.batching import peak_bytes_per_sample
from ._model.capture import inspect_node_layers


class ActivationTransformer(_ModelLayerTransformer):
    """Map model inputs to one layer's activations, flattened per sample.

    The counterpart of :class:`LIBTransformer` for baselines: put
    :class:`~sklearn.decomposition.PCA` after it in a ``Pipeline`` to compare
    ordinary PCA with LIB on the same layer.  That is like for like on a
    layer of shape ``(n, d)`` only: on one with positions (a sequence, a conv
    map) the PCA fits ``P * d``-wide flattened vectors, whereas LIB's basis
    is ``d`` wide and shared over the positions.  There the fair baseline is
    ``LIBTransformer(model, layer, basis="pca")``, and the ablation functions,
    scorers and displays warn with
    :class:`~sklearn_lib.exceptions.FlattenedPositionsWarning`.

    Parameters
    ----------
    model : torch.nn.Module or skorch net
        A skorch net is read through its ``module_``.
        Called as ``model(batch)``; never touched: every call runs a private
        copy (see :class:`LIBTransformer`).
    layer : str
        Name from ``model.named_modules()``.
    capture : {"input", "output"}, default="input"
        The module's first positional input, or its output.
    output : None, str, int or callable, default=None
        What the model returns that is its output (see
        :class:`LIBTransformer`); only checked here.
    forward_kwargs : dict or None, default=None
        Keyword arguments of every call of the model.
    feature_axis : int, dict or None, default=None
        The axis of the activations that holds the features, for maps with
        more than one axis besides them (see :class:`LIBTransformer`).
    batch_size : int or "auto", default="auto"
        Samples per forward pass.  ``"auto"``: the largest that a memory
        budget allows (512 MiB on the CPU, see ``batch_size_``).
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device, default="auto"
    dtype : {"float64", "float32"}, default="float64"
        Precision of the forward pass; the result is float64 either way.

    Attributes
    ----------
    activation_shape_ : tuple
        Per-sample activation shape ``(*positions, d)``.
    batch_size_ : int
        Samples per batch of array data in every pass (``batch_size``, or
        the one ``"auto"`` chose for the memory budget; fewer samples make
        one batch).
    input_shape_ : tuple
        Per-sample shape of ``X``.
    n_features_in_ : int
        ``X.shape[1]``.

    See Also
    --------
    LIBTransformer : LIB features of the same activations.

    Examples
    --------
    >>> import torch
    >>> from sklearn_lib import ActivationTransformer
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> ActivationTransformer(model, "2").fit_transform(torch.randn(10, 4).numpy()).shape
    (10, 8)
    """

    def __init__(
        self,
        model,
        layer,
        *,
        capture="input",
        output=None,
        forward_kwargs=None,
        feature_axis=None,
        batch_size="auto",
        device="auto",
        dtype="float64",
    ):
        self.model = model
        self.layer = layer
        self.capture = capture
        self.output = output
        self.forward_kwargs = forward_kwargs
        self.feature_axis = feature_axis
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Check the layer on ``X`` and record the activation shape.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), dict of them, DataLoader or iterable of batches
            Model inputs.
        y : Ignored

        Returns
        -------
        self : ActivationTransformer
        """
        with self._fitted_aside() as aside:
            aside._fit(X)
        return self

    def _fit(self, X):
        """The fit, on the estimator set aside (:meth:`_fitted_aside`)."""
        source, probe = self._source(X, reset=True)
        session = self._session(fitting=True)
        probe = session.inputs(probe)
        shapes, _ = inspect_node_layers(session, probe, [self.layer])
        self.activation_shape_ = shapes[self.layer]
        self._input_dtypes_ = input_dtypes(probe)  # token ids may take other lengths
        self._choose_batch_size(source, session, lambda: self._bytes_per_sample(session, probe))

    def _bytes_per_sample(self, session, probe):
        """What a pass holds per sample, in the units of saved bytes (which
        :func:`~sklearn_lib._model.batching.auto_batch_size` multiplies by its working-set
        factor): the layer's activations as float64 rows, or the forward's own peak
        (temporaries included; autograd saves nothing to count there), whichever is
        more."""
        with torch.no_grad():
            forward = peak_bytes_per_sample(probe, lambda: session.read(probe, [self.layer]))
        return max(8.0 * math.prod(self.activation_shape_), forward)

    @property
    def _n_features_out(self):
        return math.prod(self.activation_shape_)

    @reads_one_fit
    def transform(self, X):
        """Activations of ``layer``, flattened per sample (position-major, features last).

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), dict of them, DataLoader or iterable of batches

        Returns
        -------
        ndarray of shape ``(n_samples, prod(activation_shape_))``, float64
            NaN at padded positions (an ``attention_mask`` among dict inputs).
        """
        check_is_fitted(self)
        return self._map_layer(self._source(X), lambda f: f.reshape(f.shape[0], -1))

    @reads_one_fit
    def transform_tokens(self, X):
        """Activations of every real token of ``layer``: one row per token, ``(n_tokens, d)``.

        Rows for a decomposition shared over positions: ``PCA`` fitted on
        them is the position-shared PCA, the fair baseline of LIB on a
        sequence layer (as ``LIBTransformer(basis="pca")``), while ``PCA``
        after :meth:`transform` flattens every position into one vector per
        sample.  Padded positions are left out; sequences may have any
        length the model takes.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), dict of them, DataLoader or iterable of batches

        Returns
        -------
        activations : ndarray of shape ``(n_tokens, activation_shape_[-1])``, float64
        index : ndarray of shape (n_tokens, 1 + n_position_axes), int64
            Each row's sample (its index in ``X``) and position.
        """
        check_is_fitted(self)
        return self._map_tokens(self._source(X), lambda f: f)
