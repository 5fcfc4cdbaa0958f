"""How failures met while running the user's model are reported.

Two kinds, kept apart on purpose:

- **out of memory** (``torch.OutOfMemoryError``, or a ``RuntimeError`` /
  ``MemoryError`` whose message says the allocator ran out) keeps its type
  and message, gains a note naming the batch and the hint to lower
  ``batch_size``, and is re-raised: never retried, never swallowed;
- **the model failed on its inputs** (a raw ``IndexError`` from an
  embedding given an out-of-range token id, a dtype mismatch, a shape
  error deep in torch): a ``ValueError`` that names the batch and what it
  held, chained to the original error.  The probe and every later batch
  give the same message.
"""

import contextlib

import torch

# Messages of allocators that ran out: CUDA's and the CPU allocator's.
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "not enough memory")


def is_out_of_memory(exc):
    """True for an exception that reports an exhausted allocator."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc).lower() for s in _OUT_OF_MEMORY)


def describe_batch(x, where):
    """Words for a batch of model inputs, as error messages name it."""
    return f"{where} (inputs of shape {tuple(x.shape)}, dtype {x.dtype})"


def batch_range(start, n):
    """``where`` for the batch of samples ``start`` to ``start + n - 1``."""
    return f"the batch of samples {start} to {start + n - 1}"


@contextlib.contextmanager
def memory_hint(x, where):
    """Add the batch and a ``batch_size`` hint to an out-of-memory error, keeping it as it is."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if is_out_of_memory(exc) and hasattr(exc, "add_note"):  # notes: Python >= 3.11
            exc.add_note(
                f"sklearn-lib ran out of memory on {describe_batch(x, where)}; lower "
                "batch_size (or the DataLoader's batch size) to need less memory per pass"
            )
        raise


@contextlib.contextmanager
def model_failure(x, where):
    """Turn a failure of the model's forward pass on ``x`` into a ``ValueError`` naming the batch.

    Out-of-memory errors pass through unchanged (see :func:`memory_hint`);
    so do ``ValueError``\\ s, which already name their problem (the package's
    own checks raise them from inside the forward pass).
    """
    try:
        yield
    except (RuntimeError, IndexError, TypeError) as exc:
        if is_out_of_memory(exc):
            raise
        raise ValueError(
            f"The model failed on {describe_batch(x, where)}: {type(exc).__name__}: {exc}. "
            "Check these inputs: token ids within the vocabulary, the dtype the model "
            "expects, the per-sample shape."
        ) from exc
