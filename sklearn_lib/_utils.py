"""Small torch helpers shared by the estimators: device, dtype, batches, progress."""

import sys
import time

import numpy as np
import torch

_DTYPES = {"float64": torch.float64, "float32": torch.float32}

# Relative tolerances for the numerical null space of the Gram matrix and of
# the rotated Jacobian Gram.  They are numerical only (never the user's
# truncation): float64 eigenvalue noise sits near 1e-16 of the largest
# eigenvalue, float32 activations carry rounding noise near 1e-13..1e-11, so
# each cut leaves three orders of magnitude of margin.
_NULL_RTOL = {torch.float64: 1e-12, torch.float32: 1e-9}


def resolve_device(device):
    """Turn the ``device`` parameter into a ``torch.device``.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device
        ``"auto"`` picks CUDA when available, the CPU otherwise.

    Returns
    -------
    torch.device
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was requested but CUDA is not available")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} does not exist; {torch.cuda.device_count()} CUDA "
                "device(s) are available"
            )
    elif resolved.type != "cpu":
        raise ValueError(f"device={device!r} is not supported; use 'cpu' or 'cuda'")
    return resolved


def resolve_dtype(dtype):
    """Turn the ``dtype`` parameter into a floating ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype={dtype} is not supported; use float64 or float32")
        return dtype
    return _DTYPES[dtype]


def null_space_rtol(dtype):
    """Relative eigenvalue tolerance that separates numerical zeros from signal."""
    return _NULL_RTOL[dtype]


def batch_slices(n_samples, batch_size):
    """Yield slices that cover ``range(n_samples)`` in batches."""
    for start in range(0, n_samples, batch_size):
        yield slice(start, min(start + batch_size, n_samples))


def to_tensor(X, device, dtype):
    """Copy a numpy batch of model inputs to ``device``.

    Floating inputs take the fit's ``dtype``; integer inputs (token ids) and
    booleans keep their own dtype, because casting ids to float breaks
    embeddings silently.
    """
    if torch.is_tensor(X):
        tensor = X.detach()
    else:
        # torch.tensor copies, so read-only and non-contiguous arrays are fine.
        tensor = torch.tensor(np.asarray(X))
    if tensor.is_floating_point():
        return tensor.to(device=device, dtype=dtype)
    return tensor.to(device=device)


class Progress:
    """Minimal progress lines on stderr, shown only when ``enabled``.

    Kept dependency-free on purpose: long fits print one line per pass step,
    which works in terminals, notebooks and CI logs alike.
    """

    def __init__(self, owner, enabled):
        self.owner = owner
        self.enabled = bool(enabled)
        self._start = time.perf_counter()

    def __call__(self, message):
        if self.enabled:
            elapsed = time.perf_counter() - self._start
            print(f"[{self.owner}] {elapsed:7.1f}s {message}", file=sys.stderr, flush=True)

    def batches(self, slices, n_samples, what):
        """Wrap an iterable of batch slices, reporting every ~10% of the samples."""
        return self.samples(slices, n_samples, what, size=lambda sl: sl.stop - sl.start)

    def samples(self, batches, n_samples, what, size=len):
        """Wrap an iterable of batches; ``n_samples`` may be None (not known yet)."""
        done = 0
        step = max((n_samples or 0) // 10, 1)
        next_report = step
        for i, batch in enumerate(batches):
            yield batch
            done += size(batch)
            if n_samples is None:
                if (i + 1) % 10 == 0:
                    self(f"{what}: {done} samples")
            elif done >= next_report or done == n_samples:
                self(f"{what}: {done}/{n_samples} samples")
                next_report = done + step


def max_relative_error(got, expected):
    """``max |got - expected| / max |expected|`` as a float (0 where both vanish)."""
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    return float((got - expected).abs().max() / scale)
