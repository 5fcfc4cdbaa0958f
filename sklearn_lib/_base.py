"""Plumbing shared by the estimators that wrap a torch model and a layer."""

import contextlib
import copy
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, clone
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, validate_data

from ._capture import ModelRunner, eval_mode, resolve_module
from ._utils import batch_slices, resolve_device, resolve_dtype, to_tensor

#: Name of the model-output node in ``bases_`` and in interaction graphs.
OUTPUT_NODE = "output"


class _ModelLayerTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Base for transformers that read one node layer of a torch model.

    Subclasses hold ``model``, ``layer``, ``capture``, ``batch_size``,
    ``device`` and ``dtype`` parameters.
    """

    _parameter_constraints = {
        "model": [torch.nn.Module],
        "layer": [str],
        "capture": [StrOptions({"input", "output"})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
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

    # -- input handling ------------------------------------------------------------
    def _validate_input(self, X, reset):
        """Validate model inputs: numeric, finite, any per-sample shape.

        Integer inputs (token ids) keep their dtype.
        """
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

    @contextlib.contextmanager
    def _model_session(self):
        """A runner for the model in eval mode; every flag is restored on exit."""
        runner = ModelRunner(
            self.model, resolve_device(self.device), resolve_dtype(self.dtype), self.capture
        )
        with eval_mode(self.model):
            yield runner

    def _to_tensor(self, runner, X_batch):
        return to_tensor(X_batch, runner.device, runner.dtype)

    def _map_layer(self, X, layer, fn, n_out, progress=None):
        """Apply ``fn`` to the activations of ``layer`` for every batch of ``X``.

        Parameters
        ----------
        fn : callable
            Maps a float64 tensor of shape (n, P, d) to one of shape (n, n_out).

        Returns
        -------
        ndarray of shape (n_samples, n_out), float64
        """
        result = np.empty((X.shape[0], n_out), dtype=np.float64)
        slices = batch_slices(X.shape[0], self.batch_size)
        if progress is not None:
            slices = progress.batches(slices, X.shape[0], f"transform {layer!r}")
        with self._model_session() as runner, torch.no_grad():
            module = resolve_module(self.model, layer)
            for sl in slices:
                (f,) = runner.read(self._to_tensor(runner, X[sl]), [module])
                check_finite(f, layer)
                f = f.reshape(f.shape[0], -1, f.shape[-1]).to(torch.float64)
                result[sl] = fn(f).cpu().numpy()
        return result


def check_finite(f, layer):
    """Raise if activations hold NaN or inf."""
    if not torch.isfinite(f).all():
        raise ValueError(
            f"The activations of layer {layer!r} contain NaN or inf; check the model "
            "and its inputs (inputs themselves were finite)"
        )


def check_activations(A, shape, owner):
    """Validate user-given activations against the fitted per-sample ``shape``.

    Accepts ``(n, *shape)`` or flattened ``(n, prod(shape))``; returns a
    float64 array of shape ``(n, P, d)``.
    """
    A = check_array(A, allow_nd=True, dtype=np.float64, input_name="A")
    flat = int(np.prod(shape))
    if tuple(A.shape[1:]) != tuple(shape) and not (A.ndim == 2 and A.shape[1] == flat):
        raise ValueError(
            f"Activations of per-sample shape {tuple(A.shape[1:])} do not match the "
            f"layer {owner} was fitted on: {tuple(shape)} (or {flat} flattened)"
        )
    return A.reshape(A.shape[0], -1, shape[-1])
