"""Scores of a model's outputs after an ablation, accumulated batch by batch.

A scorer compares the ablated model outputs with a reference: the class
labels ``y`` when given, otherwise the unablated outputs.  Built-in scores
stream (memory does not grow with the data); a callable gets every output at
the end, like a scikit-learn metric: ``scoring(y_true, outputs)``.

Padding.  Every scorer's ``update(ablated, original, y, valid)`` takes the
batch's valid output positions (``valid``, bool ``(n, *positions)``, or None
when every one counts; see :mod:`~sklearn_lib._model.inputs`) and scores only
those.  A callable then receives the valid positions as rows: ``y_true`` of
shape ``(m,)`` (labels) or ``(m, d)`` (outputs) and ``outputs`` of shape
``(m, d)``, ``m`` the number of valid positions.
"""

import numpy as np
import torch

SCORINGS = ("accuracy", "r2")

#: Labels of this value are not scored (``torch.nn.CrossEntropyLoss``'s default ``ignore_index``).
IGNORE_INDEX = -100

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

    def update(self, ablated, original, y, valid=None):
        target = torch.as_tensor(y, device=ablated.device)
        predicted = ablated.argmax(-1)
        if valid is not None:
            target, predicted = target[valid], predicted[valid]
        # PyTorch's and Hugging Face's ignore_index: special tokens, continuation
        # sub-words and padding are labelled -100 and never scored.
        scored = target != IGNORE_INDEX
        target, predicted = target[scored], predicted[scored]
        n_classes = ablated.shape[-1]
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= n_classes):
            raise ValueError(
                f"y must hold integer class labels in [0, {n_classes}) (the argmax of the "
                "model's last output axis) at every scored position, or -100 where a position "
                "is not scored"
            )
        self.correct += int((predicted == target).sum())
        self.count += target.numel()

    def result(self):
        if self.count == 0:
            raise ValueError(
                f"Accuracy needs at least one scored label, but every label of y is "
                f"{IGNORE_INDEX} (Hugging Face's mark of a position that is not scored) or "
                "sits at a padded position; label the positions to score"
            )
        return self.correct / self.count


class _R2:
    """Pooled coefficient of determination of ablated vs. original outputs.

    ``1 - SSE / SST`` with every output row (a sample, or each real token of
    a sequence) one observation and every output feature one variable
    (``r2_score`` with ``multioutput="variance_weighted"`` on the rows):
    SST is taken around one mean per output feature, over all rows.  So the
    score does not depend on where a token sits in its padded batch: left or
    right padding, and any padded length, give the same R².  SST comes from
    running sums around the first batch's mean, so no output is kept in
    memory.

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
        self.rows = 0  # output rows that count: samples, or real tokens
        self.count = 0

    def update(self, ablated, original, y, valid=None):
        self.count += original.shape[0]
        width = original.shape[-1]
        ablated = ablated.to(torch.float64).reshape(-1, width)
        original = original.to(torch.float64).reshape(-1, width)
        if valid is not None:  # padded positions are no rows
            keep = valid.reshape(-1).to(original.device)
            ablated, original = ablated[keep], original[keep]
        self.sse += float(((ablated - original) ** 2).sum())
        if self.shift is None:
            self.shift = original.mean(0) if original.shape[0] else original.new_zeros(width)
        centred = original - self.shift
        self.sums = self.sums + centred.sum(0)
        self.sq_sums = self.sq_sums + (centred**2).sum(0)
        self.rows += original.shape[0]

    def result(self):
        # Called after the pass, when the count is final (a stream learns it
        # only at the end).
        if self.count < 2:
            raise ValueError(
                "R² of the outputs (the score without y, or scoring='r2') needs at least 2 "
                f"samples, got {self.count}; pass class labels y for accuracy, or a scoring "
                "callable"
            )
        # Two samples or more: every running sum is a tensor by now.
        sums, rows = self.sums, max(self.rows, 1)
        sst = float((self.sq_sums - sums**2 / rows).sum())
        # Sum of squares of the outputs themselves, from the same running sums:
        # an SST at rounding level of it means constant outputs.
        raw = float((self.sq_sums + 2 * self.shift * sums + rows * self.shift**2).sum())
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

    def update(self, ablated, original, y, valid=None):
        reference = torch.as_tensor(np.asarray(y)) if original is None else original
        ablated = ablated.to(torch.float64)
        if valid is not None:  # the valid positions as rows
            reference = reference[valid.to(reference.device)]
            ablated = ablated[valid]
        self.outputs.append(ablated.cpu().numpy())
        self.references.append(reference.cpu().numpy())

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
    if len(expected) == 2 and y.ndim == 2 and y.shape[1] > expected[1]:
        # Sequences of several lengths: labels padded to the longest (see ablate._trimmed).
        expected = (expected[0], y.shape[1])
    if y.shape != expected:
        raise ValueError(
            f"y has shape {y.shape}, but the model's outputs of per-sample shape "
            f"{tuple(output_shape)} need class labels of shape {expected}"
        )
    is_integral = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and np.array_equal(y, np.round(y))
    )
    # The range is checked where labels are scored: labels of padded
    # positions (as Hugging Face's -100) are never read.
    if not is_integral:
        raise ValueError(
            f"y must hold integer class labels in [0, {output_shape[-1]}) "
            "(the argmax of the model's last output axis)"
        )
    return y.astype(np.int64)
