"""Scores of a model's outputs after an ablation, accumulated batch by batch.

A scorer compares the ablated model outputs with a reference: the class
labels ``y`` when given, otherwise the unablated outputs.  Built-in scores
stream (memory does not grow with the data); a callable gets every output at
the end, like a scikit-learn metric: ``scoring(y_true, outputs)``.
"""

import numpy as np
import torch

SCORINGS = ("accuracy", "r2")

# SST below this fraction of the outputs' sum of squares means constant outputs:
# equal float64 outputs leave an SST of about 1e-32 of it (the rounding of the
# running means), while outputs that vary even in their 7th digit give 1e-14.
_CONSTANT_RTOL = 1e-20


class _Accuracy:
    """Accuracy of the argmax of the last output axis against class labels."""

    needs_original = False

    def __init__(self):
        self.correct = 0
        self.count = 0

    def update(self, ablated, original, y):
        target = torch.as_tensor(y, device=ablated.device)
        self.correct += int((ablated.argmax(-1) == target).sum())
        self.count += target.numel()

    def result(self):
        return self.correct / self.count


class _R2:
    """Pooled coefficient of determination of ablated vs. original outputs.

    ``1 - SSE / SST`` over all output entries (``r2_score`` with
    ``multioutput="variance_weighted"``); SST from running sums around the
    first batch's mean, so no output is kept in memory.

    R² is undefined when SST is zero, and :meth:`result` refuses it with a
    ``ValueError`` rather than return a number that looks like a score: on
    fewer than 2 samples (where ``r2_score`` returns NaN with a warning) and
    on original outputs that do not vary over the samples.  ``r2_score``'s
    ``force_finite`` convention (1.0 for a perfect fit, else 0.0) would
    turn rounding error into a verdict: keeping every feature reproduces
    the outputs only up to rounding, so it would score 0.0.
    """

    needs_original = True

    def __init__(self):
        self.sse = 0.0
        self.shift = None
        self.sums = 0.0
        self.sq_sums = 0.0
        self.count = 0

    def update(self, ablated, original, y):
        ablated = ablated.to(torch.float64).reshape(ablated.shape[0], -1)
        original = original.to(torch.float64).reshape(original.shape[0], -1)
        self.sse += float(((ablated - original) ** 2).sum())
        if self.shift is None:
            self.shift = original.mean(0)
        centred = original - self.shift
        self.sums = self.sums + centred.sum(0)
        self.sq_sums = self.sq_sums + (centred**2).sum(0)
        self.count += original.shape[0]

    def result(self):
        # Called after the pass, when the count is final (a stream learns it
        # only at the end).
        if self.count < 2:
            raise ValueError(
                "R² of the outputs (the score without y, or scoring='r2') needs at least 2 "
                f"samples, got {self.count}; pass class labels y for accuracy, or a scoring "
                "callable"
            )
        sst = float((self.sq_sums - self.sums**2 / self.count).sum())
        # Sum of squares of the outputs themselves, from the same running sums:
        # an SST at rounding level of it means constant outputs.
        raw = float((self.sq_sums + 2 * self.shift * self.sums + self.count * self.shift**2).sum())
        if sst <= _CONSTANT_RTOL * raw:
            raise ValueError(
                "R² of the outputs (the score without y, or scoring='r2') is undefined: the "
                f"model's outputs do not vary over the {self.count} samples of X (zero total "
                "variance); pass class labels y for accuracy, or a scoring callable"
            )
        return 1.0 - self.sse / sst


class _Callable:
    """Collects outputs and calls ``scoring(y_true, outputs)`` at the end."""

    def __init__(self, fn, has_y):
        self.fn = fn
        self.needs_original = not has_y
        self.outputs = []
        self.references = []

    def update(self, ablated, original, y):
        self.outputs.append(ablated.to(torch.float64).cpu().numpy())
        self.references.append(np.asarray(y) if original is None else original.cpu().numpy())

    def result(self):
        return float(self.fn(np.concatenate(self.references), np.concatenate(self.outputs)))


def make_scorer(scoring, has_y):
    """A factory of fresh scorers for ``scoring``.

    Parameters
    ----------
    scoring : None, "accuracy", "r2" or callable
        None: accuracy when labels are given, R² of the outputs otherwise.
    has_y : bool
    """
    if scoring is None:
        scoring = "accuracy" if has_y else "r2"
    if callable(scoring):
        return lambda: _Callable(scoring, has_y)
    if scoring == "accuracy":
        if not has_y:
            raise ValueError("scoring='accuracy' needs class labels y")
        return _Accuracy
    if scoring == "r2":
        return _R2
    raise ValueError(f"scoring={scoring!r} must be None, a callable or one of {SCORINGS}")


def check_labels(y, n_samples, output_shape):
    """Class labels for the argmax of the last output axis, as int64.

    ``n_samples`` None (a stream not read yet) checks the per-sample shape
    only; the count is checked after the pass.
    """
    y = np.asarray(y)
    expected = (len(y) if n_samples is None and y.ndim else n_samples, *output_shape[:-1])
    if y.shape != expected:
        raise ValueError(
            f"y has shape {y.shape}, but the model's outputs of per-sample shape "
            f"{tuple(output_shape)} need class labels of shape {expected}"
        )
    is_integral = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and np.array_equal(y, np.round(y))
    )
    if not is_integral or y.min() < 0 or y.max() >= output_shape[-1]:
        raise ValueError(
            f"y must hold integer class labels in [0, {output_shape[-1]}) "
            "(the argmax of the model's last output axis)"
        )
    return y.astype(np.int64)
