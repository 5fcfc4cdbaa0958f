"""Plumbing shared by the estimators that wrap a torch model and a layer.

An estimator turns its parameters into the objects the analyses take: a
source of batches for each input (:meth:`_ModelLayerTransformer._source`)
and a :class:`~sklearn_lib._model.session.ModelSession` for each call
(:meth:`_ModelLayerTransformer._session`).  Nothing below the estimators
sees an estimator.
"""

import contextlib
import copy
import warnings
from collections.abc import Mapping
from numbers import Integral

import numpy as np
import scipy.sparse
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, clone
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_array, validate_data

from ._core.validation import StrictInterval, TorchModel, resolve_model
from ._model.batching import DEFAULT_BATCH_SIZE, auto_batch_size
from ._model.fingerprint import changed_tensors
from ._model.inputs import n_rows, take_rows
from ._model.session import ModelSession, outside_inference_mode, resolve_device, resolve_dtype
from ._model.sources import (
    ArraySource,
    StreamSource,
    check_fields,
    is_stream,
    stack_records,
    to_numpy,
)
from .exceptions import StaleBasisWarning, user_stacklevel

# Samples read from a stream to check call order, shapes and cuts before the real passes.
PROBE_SIZE = 64


class _ModelLayerTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Base for transformers that read one node layer of a torch model.

    Subclasses hold ``model``, ``layer``, ``capture``, ``output``,
    ``forward_kwargs``, ``feature_axis``, ``batch_size``, ``device`` and
    ``dtype`` parameters.
    """

    _parameter_constraints = {
        "model": [TorchModel()],
        "layer": [str],
        "capture": [StrOptions({"input", "output"})],
        "output": [None, str, StrictInterval(Integral, None, None, closed="neither"), callable],
        "forward_kwargs": [dict, None],
        "feature_axis": [StrictInterval(Integral, None, None, closed="neither"), dict, None],
        "batch_size": [StrictInterval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "device": [str, torch.device],
        "dtype": [StrOptions({"float64", "float32"}), torch.dtype],
    }

    #: The fewest samples ``fit`` accepts.
    _min_samples = 1

    # -- sklearn plumbing ----------------------------------------------------------
    def __sklearn_clone__(self):
        # sklearn's clone deep-copies every non-estimator parameter, which
        # would copy the whole network once per grid-search candidate.  The
        # model is only read, so the clone shares it; other parameters are
        # cloned as usual.
        params = self.get_params(deep=False)
        new = type(self)(
            **{k: v if k == "model" else clone(v, safe=False) for k, v in params.items()}
        )
        for attr in ("_metadata_request", "_sklearn_output_config"):
            if hasattr(self, attr):
                setattr(new, attr, copy.deepcopy(getattr(self, attr)))
        return new

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.requires_fit = True
        return tags

    # -- inputs and sessions -------------------------------------------------------
    def _source(self, X, *, reset=False, probe=False):
        """Batches of the model inputs ``X`` (an array-like or a stream), validated.

        ``reset=True`` (``fit``) records ``n_features_in_`` and ``input_shape_``;
        otherwise every batch must have the fitted per-sample shape.  With
        ``reset`` or ``probe``, returns ``(source, probe)``, the probe being
        up to :data:`PROBE_SIZE` first samples (never more than one batch),
        else the source alone.  Integer inputs (token ids) keep their dtype.
        """
        if is_stream(X):
            if reset:
                source = StreamSource(X)
            else:
                source = StreamSource(X, self.input_shape_, fitted_by=type(self).__name__)
            if not (reset or probe):
                return source
            return source, self._validate_input(source.probe(PROBE_SIZE), reset=reset)
        X = self._validate_input(X, reset=reset)
        source = ArraySource(X, self._batch_size(reset))
        # Never more than a batch (two samples at least, to compare them).
        first = take_rows(X, slice(0, max(2, min(PROBE_SIZE, source.batch_size))))
        return (source, first) if reset or probe else source

    def _batch_size(self, reset=False):
        """Samples per batch of array data: ``batch_size``, or for ``"auto"`` the fit's choice.

        Before a fit has chosen (``reset``), ``"auto"`` reads the probe in one
        batch; the fit then sets its source's batch size (:meth:`_choose_batch_size`).
        """
        if self.batch_size != "auto":
            return self.batch_size
        if reset or not hasattr(self, "batch_size_"):
            return max(PROBE_SIZE, DEFAULT_BATCH_SIZE)
        return self.batch_size_

    def _choose_batch_size(self, source, session, per_sample):
        """Set ``batch_size_`` (and the batches of an array ``source``) at the fit.

        ``"auto"``: the largest batch whose working set fits the device's
        memory budget (:func:`~sklearn_lib._model.batching.auto_batch_size`), for
        ``per_sample()`` bytes that autograd saves per sample, or the int it
        returns where the fit needs that size.
        """
        if self.batch_size != "auto":
            self.batch_size_ = self.batch_size
            return
        size = per_sample()
        if isinstance(size, float):
            # Not capped by this fit's number of samples: later passes (transform,
            # the ablations) may read far more data, e.g. after a fit on a few samples.
            size = auto_batch_size(size, session.device)
        self.batch_size_ = size
        if isinstance(source, ArraySource):
            source.batch_size = size

    def _validate_input(self, X, reset):
        if isinstance(X, (list, tuple)) and X and all(isinstance(x, Mapping) for x in X):
            X = stack_records(X)  # per-sample dicts, as the rows of a data set
        if isinstance(X, Mapping) and not scipy.sparse.issparse(X):  # a DOK matrix is a dict
            return self._validate_fields(X, reset)
        if reset:
            vars(self).pop("input_fields_", None)
        elif getattr(self, "input_fields_", None) is not None:
            raise ValueError(
                f"X is a {type(X).__name__}, but {type(self).__name__} was fitted on a dict "
                f"of keyword inputs {list(self.input_fields_)}; pass the same fields"
            )
        if isinstance(X, (list, tuple)) and X and all(torch.is_tensor(x) for x in X):
            X = torch.stack([x.detach() for x in X])  # a list of samples as tensors
        if torch.is_tensor(X):
            X = to_numpy(X)
        X = validate_data(
            self,
            X,
            reset=reset,
            dtype="numeric",
            allow_nd=True,
            ensure_min_samples=self._min_samples if reset else 1,
        )
        if reset:
            self.input_shape_ = tuple(X.shape[1:])
        elif tuple(X.shape[1:]) != self.input_shape_:
            raise ValueError(
                f"X has per-sample shape {tuple(X.shape[1:])}, but {type(self).__name__} "
                f"was fitted on inputs of per-sample shape {self.input_shape_}"
            )
        return X

    def _validate_fields(self, X, reset):
        """A dict of model inputs (keyword arguments), each field with one row per sample."""
        arrays = {key: to_numpy(v) if torch.is_tensor(v) else v for key, v in X.items()}
        fields = check_fields(arrays, "X")
        n = n_rows(fields)
        if reset and n < self._min_samples:
            raise ValueError(
                f"X has {n} sample(s), but {type(self).__name__} needs at least {self._min_samples}"
            )
        shapes = {key: tuple(value.shape[1:]) for key, value in fields.items()}
        if reset:
            # A dict has no n_features_in_ (scikit-learn's is one array's width).
            vars(self).pop("n_features_in_", None)
            self.input_fields_ = list(fields)
            self.input_shape_ = shapes
        elif shapes != self.input_shape_:
            raise ValueError(
                f"X has fields of per-sample shapes {shapes}, but {type(self).__name__} was "
                f"fitted on {self.input_shape_}"
            )
        return fields

    def _session(self, *, verbose=None, random_state=None, fitting=False):
        """A :class:`ModelSession` for one call: a private copy of the model, and the settings.

        Outside ``fit`` (``fitting=False``), warns with :class:`StaleBasisWarning`
        when the model's floating parameters and buffers changed since the fit
        recorded their fingerprint (checksums of the private copy, see
        :mod:`~sklearn_lib._model.fingerprint`).
        """
        if verbose is None:
            verbose = getattr(self, "verbose", False)
        if random_state is None:
            random_state = getattr(self, "random_state", None)
        session = ModelSession(
            resolve_model(self.model),
            capture=self.capture,
            output=self.output,
            forward_kwargs=self.forward_kwargs,
            feature_axis=self.feature_axis,
            device=resolve_device(self.device),
            dtype=resolve_dtype(self.dtype),
            owner=type(self).__name__,
            verbose=verbose,
            random_state=random_state,
        )
        recorded = getattr(self, "_model_fingerprint_", None)
        if not fitting and recorded is not None:
            dtype, checksums = recorded
            changed = changed_tensors(checksums, session.fingerprint, dtype == session.dtype)
            if changed:
                warnings.warn(
                    f"The model changed since {type(self).__name__} was fitted ({len(changed)} "
                    f"tensor(s), e.g. {changed[0]!r}): the fitted bases describe the model as "
                    "it was, not as it is now; refit to analyse the current model",
                    StaleBasisWarning,
                    stacklevel=user_stacklevel(),
                )
        return session

    @contextlib.contextmanager
    def _restored_on_failure(self):
        """Run a fit that, when it fails, leaves the estimator as it was before the call.

        A fit sets some fitted attributes early (``n_features_in_`` while
        validating the inputs); a failure later must not leave them next to
        the bases of an earlier fit.
        """
        before = {k: v for k, v in vars(self).items() if _is_fitted_attribute(k)}
        try:
            yield
        except BaseException:
            for name in [k for k in vars(self) if _is_fitted_attribute(k)]:
                delattr(self, name)
            vars(self).update(before)
            raise

    @outside_inference_mode
    def _map_layer(self, source, fn):
        """``fn`` applied to the activations of ``layer`` in every batch of ``source``.

        Parameters
        ----------
        fn : callable
            Maps a float64 tensor of shape (n, P, d) to one of shape (n, n_out),
            ``n_out`` a multiple of ``P`` (position-major columns).

        Returns
        -------
        ndarray of shape (n_samples, n_out), float64
            NaN in the columns of padded positions (an ``attention_mask`` among
            the inputs, see :mod:`~sklearn_lib._model.inputs`): they have no features.
        """
        if not source.ordered:
            warnings.warn(
                "X is a DataLoader that shuffles its samples: the rows come back in this "
                "pass's random order; use shuffle=False to keep them in data order",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        session = self._session()
        (result,) = session.run_pass(
            source, [_LayerMap(self.layer, fn)], f"transform {self.layer!r}"
        )
        return result


def _is_fitted_attribute(name):
    # scikit-learn's convention, as check_is_fitted reads it.
    return name.endswith("_") and not name.startswith("__")


class _LayerMap:
    """Accumulator that maps each batch of one layer's activations and keeps the results."""

    def __init__(self, layer, fn):
        self.reads = (layer,)
        self.fn = fn
        self.parts = []

    def update(self, batch, acts):
        f = acts[self.reads[0]]
        valid = batch.valid(f.shape[1:])
        f = f.reshape(f.shape[0], -1, f.shape[-1]).to(torch.float64)
        out = self.fn(f)
        if valid is not None:
            out = out.reshape(f.shape[0], f.shape[1], -1)  # (n, P, per position)
            out = out.masked_fill(~valid.reshape(f.shape[0], -1, 1), float("nan"))
            out = out.reshape(f.shape[0], -1)
        self.parts.append(out.cpu().numpy())

    def result(self):
        return np.concatenate(self.parts)


def map_arrays(A, fn):
    """``fn(A)`` for an array-like, or ``fn`` of each batch of a stream, concatenated.

    For methods that take activations or features rather than model inputs
    (no model runs).
    """
    if is_stream(A):
        return np.concatenate([fn(batch) for _, batch in StreamSource(A).batches()])
    return fn(A)


def check_activations(A, shape, owner):
    """Validate user-given activations against the fitted per-sample ``shape``.

    Accepts ``(n, *shape)`` or flattened ``(n, prod(shape))``; returns a
    float64 array of shape ``(n, P, d)``.  NaN may fill whole positions
    (padded ones, as :class:`ActivationTransformer` returns them).
    """
    A = check_array(
        A, allow_nd=True, dtype=np.float64, input_name="A", ensure_all_finite="allow-nan"
    )
    flat = int(np.prod(shape))
    if tuple(A.shape[1:]) != tuple(shape) and not (A.ndim == 2 and A.shape[1] == flat):
        raise ValueError(
            f"Activations of per-sample shape {tuple(A.shape[1:])} do not match the "
            f"layer {owner} was fitted on: {tuple(shape)} (or {flat} flattened)"
        )
    return check_padded_positions(A.reshape(A.shape[0], -1, shape[-1]), "A")


def check_padded_positions(values, name):
    """Refuse NaN except in whole positions of ``values`` ``(n, P, width)``: padding passes through.

    ``transform`` returns padded positions as NaN in all their columns; the
    methods that take such values back keep them NaN.  Any other NaN is a
    missing value, which LIB has no meaning for.
    """
    missing = np.isnan(values)
    if missing.any() and not np.array_equal(missing.any(-1), missing.all(-1)):
        raise ValueError(
            f"Input {name} contains NaN outside whole positions; NaN may only fill every "
            "column of a position (a padded position, as transform returns it)"
        )
    return values
