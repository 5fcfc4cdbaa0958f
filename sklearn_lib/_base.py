"""Plumbing shared by the estimators that wrap a torch model and a layer.

An estimator turns its parameters into the objects the analyses take: a
source of batches for each input (:meth:`_ModelLayerTransformer._source`)
and a :class:`~sklearn_lib._model.session.ModelSession` for each call
(:meth:`_ModelLayerTransformer._session`).  Nothing below the estimators
sees an estimator.
"""

import contextlib
import copy
import functools
import math
import warnings
from collections.abc import Mapping
from numbers import Integral

import numpy as np
import scipy.sparse
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import StrOptions
from sklearn.utils._set_output import _get_output_config
from sklearn.utils.validation import _check_feature_names, check_array, validate_data

from ._core.validation import StrictInterval, TorchModel, resolve_model
from ._model.batching import DEFAULT_BATCH_SIZE, auto_batch_size, small_batch_note
from ._model.fingerprint import changed_parts, value_digest
from ._model.inputs import has_length, lengths_of, n_rows, same_but_lengths, take_rows
from ._model.session import ModelSession, outside_inference_mode, resolve_device, resolve_dtype
from ._model.sources import (
    ArraySource,
    StreamSource,
    check_fields,
    check_has_values,
    concatenate_padded,
    is_stream,
    stack_records,
    to_numpy,
)
from .exceptions import StaleBasisWarning, user_stacklevel

# Samples read from a stream to check call order, shapes and cuts before the real passes.
PROBE_SIZE = 64

#: The parameters that change what a fitted state means: after ``set_params`` of one
#: of them to another value, calls that read fitted state refuse with
#: ``NotFittedError`` until a refit (scikit-learn's own estimators would silently use
#: the old state; here it would project other activations with the old basis).
#: ``model`` is not among them: its changes, by ``set_params`` or in place, are found
#: by the model's fingerprint, and warn (:class:`~sklearn_lib.StaleBasisWarning`).
FIT_DEFINING = (
    "layer",
    "downstream_layers",
    "capture",
    "output",
    "forward_kwargs",
    "feature_axis",
    "dtype",
)


def reads_one_fit(method):
    """Run ``method`` on a :meth:`~_ModelLayerTransformer._snapshot` of the estimator,
    so that every read of fitted state in one call sees one fit."""

    @functools.wraps(method)
    def on_snapshot(self, *args, **kwargs):
        return method(self._snapshot(), *args, **kwargs)

    return on_snapshot


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
            first = source.probe(PROBE_SIZE)
            if reset:
                first = source.check_probe(first, self._min_samples)
            return source, self._validate_input(first, reset=reset)
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

    def _choose_batch_size(self, source, session, per_sample, within_cache=None, most=None):
        """Set ``batch_size_`` (and the batches of an array ``source``) at the fit.

        ``"auto"``: the largest batch whose working set fits the device's
        memory budget (:func:`~sklearn_lib._model.batching.auto_batch_size`), for
        ``per_sample()`` bytes that autograd saves per sample, or the int it
        returns where the fit needs that size; within ``within_cache`` samples
        where the closed forms' rows stay in the cache at that size, and at most
        ``most`` (the plan's cap).

        Returns
        -------
        str
            Why the batch is small, where ``"auto"`` chose fewer samples than its
            usual floor for the budget (:func:`small_batch_note`), else ``""``.
        """
        note = ""
        if self.batch_size != "auto":
            self.batch_size_ = self.batch_size
            return note
        size = per_sample()
        if isinstance(size, float):
            # Not capped by this fit's number of samples: later passes (transform,
            # the ablations) may read far more data, e.g. after a fit on a few samples.
            per_sample_bytes, size = size, auto_batch_size(size, session.device, within_cache, most)
            note = small_batch_note(size, per_sample_bytes, session.device)
        self.batch_size_ = size
        if isinstance(source, ArraySource):
            source.batch_size = size
        return note

    def _validate_input(self, X, reset):
        if isinstance(X, (list, tuple)) and X and all(isinstance(x, Mapping) for x in X):
            X = stack_records(X)  # per-sample dicts, as the rows of a data set
        if isinstance(X, Mapping) and not scipy.sparse.issparse(X):  # a DOK matrix is a dict
            return self._validate_fields(X, reset)
        # A fit starts from no fitted attribute (:meth:`_fitted_aside`): only later calls
        # compare with the fit's fields.
        if not reset and getattr(self, "input_fields_", None) is not None:
            raise ValueError(
                f"X is a {type(X).__name__}, but {type(self).__name__} was fitted on a dict "
                f"of keyword inputs {list(self.input_fields_)}; pass the same fields"
            )
        if isinstance(X, (list, tuple)):
            X = _stacked_samples(X)
        if torch.is_tensor(X):
            X = to_numpy(X)
        _check_numeric_columns(X)
        checks = dict(dtype="numeric", allow_nd=True)
        if reset or not _token_ids(X, getattr(self, "_input_dtypes_", None)):
            X = validate_data(
                self, X, reset=reset, ensure_min_samples=self._min_samples if reset else 1, **checks
            )
        else:
            # Token ids of any length: n_features_in_ is the fit's length, not a rule.
            _check_feature_names(self, X, reset=False)
            X = check_array(X, **checks)
        shape = tuple(X.shape[1:])
        if reset:
            self.input_shape_ = shape
        elif not same_but_lengths(shape, self.input_shape_, has_length(X)):
            raise ValueError(
                f"X has per-sample shape {shape}, but {type(self).__name__} "
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
            # No n_features_in_ for a dict (scikit-learn's is one array's width): a fit
            # starts from none (:meth:`_fitted_aside`).
            self.input_fields_ = list(fields)
            self.input_shape_ = shapes
        elif not same_but_lengths(shapes, self.input_shape_, lengths_of(fields)):
            raise ValueError(
                f"X has fields of per-sample shapes {shapes}, but {type(self).__name__} was "
                f"fitted on {self.input_shape_} (only the lengths of integer fields, such as "
                "token ids and an attention_mask, may differ)"
            )
        return fields

    def _session(self, *, verbose=None, random_state=None, fitting=False):
        """A :class:`ModelSession` for one call: a private copy of the model, and the settings.

        Outside ``fit`` (``fitting=False``), warns with :class:`StaleBasisWarning`
        when the model's tensors, module classes or plain attributes changed
        since the fit recorded their fingerprint (exact digests, see
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
            changed = changed_parts(recorded, session.fingerprint)
            if changed:
                warnings.warn(
                    f"The model changed since {type(self).__name__} was fitted ({len(changed)} "
                    f"tensor(s) or module(s), e.g. {changed[0]!r}): the fitted bases describe "
                    "the model as it was, not as it is now; refit to analyse the current model",
                    StaleBasisWarning,
                    stacklevel=user_stacklevel(),
                )
        return session

    # -- one fit's state at a time ---------------------------------------------------
    def _snapshot(self):
        """This estimator as it is now: a shallow copy from one read of its attributes.

        A fit swaps its whole state in with one assignment (:meth:`_fitted_aside`),
        so a snapshot holds one fit's state, never parts of two: every public
        method that reads fitted state runs on one (:func:`reads_one_fit`), and
        threads may share an estimator while another refits it.  Cheap: the
        attributes are shared, not copied.
        """
        snapshot = object.__new__(type(self))
        snapshot.__dict__ = self.__dict__.copy()  # one C-level copy: no thread runs within it
        return snapshot

    @contextlib.contextmanager
    def _fitted_aside(self):
        """A fit built aside and swapped in with one assignment.

        Yields an unfitted shallow copy of the estimator for the fit to set its
        attributes on; when the fit returns, its fitted attributes (and the
        digests of the parameters they depend on, :data:`FIT_DEFINING`) replace
        this estimator's in one assignment of its ``__dict__``.  A fit that
        fails leaves the estimator as it was, and calls running meanwhile read
        the old state throughout.
        """
        aside = self._snapshot()
        for name in [k for k in vars(aside) if _is_fitted_attribute(k)]:
            delattr(aside, name)
        yield aside
        aside._fit_defining_ = aside._fit_defining_digests()
        state = {k: v for k, v in vars(self).items() if not _is_fitted_attribute(k)}
        state.update((k, v) for k, v in vars(aside).items() if _is_fitted_attribute(k))
        self.__dict__ = state

    def _fit_defining_digests(self):
        """Digests of the parameters the fitted state depends on (:data:`FIT_DEFINING`),
        each in one form for its equal values (``"float64"`` and ``torch.float64``, a
        list and a tuple of layers, no ``forward_kwargs`` and an empty dict)."""
        params = self.get_params(deep=False)
        return {
            name: value_digest(_canonical(name, params[name]))
            for name in FIT_DEFINING
            if name in params
        }

    def __sklearn_is_fitted__(self):
        """Fitted, and none of :data:`FIT_DEFINING` set to another value since.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Naming the parameters that changed, where some did: the fitted
            state describes the old ones (``check_is_fitted`` raises it for
            every call that reads fitted state).
        """
        if not any(_is_fitted_attribute(k) for k in vars(self)):
            return False
        recorded = getattr(self, "_fit_defining_", None)
        if recorded is None:  # pickled before the digests were recorded
            return True
        now = self._fit_defining_digests()
        changed = [name for name in recorded if now.get(name) != recorded[name]]
        if changed:
            raise NotFittedError(
                f"This {type(self).__name__} was fitted with other values of {changed} than "
                "it has now (set_params after fit): its fitted state describes those. Call "
                "fit again, or set the parameters back."
            )
        return True

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
        Z = self._run_map(source, _LayerMap(self.layer, fn))
        if (
            Z.shape[1] != self._n_features_out
            and _get_output_config("transform", self)["dense"] != "default"
        ):
            fitted = math.prod(self.activation_shape_[:-1])
            raise ValueError(
                f"X has sequences of {Z.shape[1] * fitted // self._n_features_out} positions, "
                f"but the columns that set_output names are those of the fit's {fitted}: a "
                "data frame needs one width. Pad X to the fit's length, or use "
                "transform_tokens for one row per token"
            )
        return Z

    @outside_inference_mode
    def _map_tokens(self, source, fn):
        """``fn`` applied to the activations of every real token of ``layer``, row by row.

        Parameters
        ----------
        fn : callable
            Maps a float64 tensor of shape (m, d) to one of shape (m, width).

        Returns
        -------
        values : ndarray of shape (n_tokens, width), float64
            One row per real token (every position of every sample without
            an ``attention_mask``), sample-major, positions in order.
        index : ndarray of shape (n_tokens, 1 + n_position_axes), int64
            The sample (its index in ``X``) and the position of each row.
        """
        return self._run_map(source, _TokenMap(self.layer, fn))

    def _run_map(self, source, accumulator):
        if not source.ordered:
            warnings.warn(
                "X is a DataLoader that shuffles its samples: the rows come back in this "
                "pass's random order; use shuffle=False to keep them in data order",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        session = self._session()
        (result,) = session.run_pass(source, [accumulator], f"transform {self.layer!r}")
        return result


def _token_ids(X, fitted):
    """Whether array-like ``X`` holds sequences whose length may differ from the fit's.

    Token ids, as the fit's inputs were (``fitted``: the estimator's
    ``_input_dtypes_``, ``"float"`` for float inputs).
    """
    if fitted == "float":
        return False
    try:
        return has_length(np.asarray(X))
    except (TypeError, ValueError):  # ragged or odd: validation names the problem
        return False


def _stacked_samples(X):
    """A list (or tuple) of samples: tensors stacked into one; refused where their
    shapes differ (numpy's own error speaks of an inhomogeneous shape, deep in the
    validation)."""
    _check_not_ragged(X)
    if X and all(torch.is_tensor(x) for x in X):
        return torch.stack([x.detach() for x in X])
    return X


def _check_numeric_columns(X):
    """Refuse a data frame with columns that are not numbers, naming them (pandas' own
    error, deep in the conversion, names only a value)."""
    columns, dtypes = getattr(X, "columns", None), getattr(X, "dtypes", None)
    if columns is None or dtypes is None or not hasattr(dtypes, "__iter__"):
        return
    bad = [f"{c!r} ({t})" for c, t in zip(columns, dtypes) if getattr(t, "kind", "O") not in "biuf"]
    if bad:
        raise ValueError(
            f"X has columns that are not numbers: {', '.join(bad[:5])}; the model's inputs "
            "must be numeric (encode them first)"
        )


def _check_not_ragged(X):
    shapes = {tuple(np.shape(x)) for x in X}
    if len(shapes) > 1:
        raise ValueError(
            f"X is a ragged {type(X).__name__}: its samples have shapes {sorted(shapes)[:4]}; "
            "every sample needs one shape (pad sequences and pass an attention_mask, or "
            "stream batches of one length each)"
        )


def _canonical(name, value):
    """One form of a parameter's equal values, for :meth:`_fit_defining_digests`."""
    if name == "dtype":
        return resolve_dtype(value)
    if name == "downstream_layers":
        return list(value)
    if name == "forward_kwargs":
        return dict(value or {})
    if isinstance(value, Integral) and not isinstance(value, bool):
        return int(value)  # numpy integers as ints
    return value


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
        out = self.fn(f).reshape(f.shape[0], f.shape[1], -1)  # (n, P, per position)
        if valid is not None:
            out = out.masked_fill(~valid.reshape(f.shape[0], -1, 1), float("nan"))
        self.parts.append(out.cpu().numpy())

    def result(self):
        return join_positions(self.parts)


class _TokenMap:
    """Accumulator that maps the activations of each real token and keeps them with their index."""

    def __init__(self, layer, fn):
        self.reads = (layer,)
        self.fn = fn
        self.values, self.index = [], []

    def update(self, batch, acts):
        f = acts[self.reads[0]]
        valid = batch.valid(f.shape[1:])
        if valid is None:
            valid = torch.ones(f.shape[:-1], dtype=torch.bool, device=f.device)
        index = valid.nonzero()  # (m, 1 + position axes), row-major: sample, then positions
        self.values.append(self.fn(f[valid].to(torch.float64)).cpu().numpy())
        index[:, 0] += batch.start
        self.index.append(index.cpu().numpy())

    def result(self):
        return np.concatenate(self.values), np.concatenate(self.index)


def join_positions(parts):
    """Batches ``(n_i, P_i, w)`` as rows ``(sum n_i, P * w)``, ``P`` the most positions.

    Sequences of a stream may differ in length from batch to batch: a
    shorter batch's missing positions are NaN, as padded positions are.
    """
    joined = concatenate_padded(parts, fill=np.nan)
    return joined.reshape(joined.shape[0], -1)


def map_arrays(A, fn, width=None):
    """``fn(A)`` for an array-like, or ``fn`` of each batch of a stream, concatenated.

    For methods that take activations or features rather than model inputs
    (no model runs).  ``width`` (the columns of one position in ``fn``'s
    result) joins batches of different lengths, NaN-padded
    (:func:`join_positions`).
    """
    if not is_stream(A):
        check_has_values(A)
        return fn(A)
    parts = [fn(batch) for _, batch in StreamSource(A, values=width is not None).batches()]
    if width is None:
        return np.concatenate(parts)
    return join_positions([part.reshape(part.shape[0], -1, width) for part in parts])


def check_activations(A, shape, owner):
    """Validate user-given activations against the fitted per-sample ``shape``.

    Accepts ``(n, *shape)`` or flattened ``(n, prod(shape))``; returns a
    float64 array of shape ``(n, P, d)``.  NaN may fill whole positions
    (padded ones, as :class:`ActivationTransformer` returns them).  A layer
    with one axis of positions (a sequence) takes any length ``T``:
    ``(n, T, d)`` or ``(n, T * d)``.
    """
    A = check_array(
        A, allow_nd=True, dtype=np.float64, input_name="A", ensure_all_finite="allow-nan"
    )
    shape, d = tuple(shape), shape[-1]
    flat = int(np.prod(shape))
    if len(shape) == 2:  # a sequence: any length
        fits = A.shape[2:] == (d,) if A.ndim == 3 else A.ndim == 2 and A.shape[1] % d == 0
    else:
        fits = tuple(A.shape[1:]) == shape or (A.ndim == 2 and A.shape[1] == flat)
    if not fits:
        also = f" or (T, {d}) of any length T" if len(shape) == 2 else ""
        raise ValueError(
            f"Activations of per-sample shape {tuple(A.shape[1:])} do not match the "
            f"layer {owner} was fitted on: {shape}{also} (or flattened)"
        )
    return check_padded_positions(A.reshape(A.shape[0], -1, d), "A")


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
