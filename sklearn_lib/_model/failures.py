"""How failures met while running the user's model are reported.

Two kinds, kept apart on purpose:

- **out of memory** (``torch.OutOfMemoryError``, or a ``RuntimeError`` /
  ``MemoryError`` whose message says the allocator ran out) keeps its type
  and message, gains a note naming the batch and the hint to lower
  ``batch_size``, and is re-raised: never retried, never swallowed.  Other
  errors met while computing on a batch (a backward pass without a
  derivative) keep their type too, with a note naming the batch;
- **the model failed on its inputs** (a raw ``IndexError`` from an
  embedding given an out-of-range token id, a dtype mismatch, a shape
  error deep in torch): a ``ValueError`` that names the batch and what it
  held, chained to the original error.  The probe and every later batch
  give the same message.
"""

import contextlib

import torch

from .inputs import describe

# Messages of allocators that ran out: CUDA's and the CPU allocator's.
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "not enough memory")


def is_out_of_memory(exc):
    """True for an exception that reports an exhausted allocator."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc).lower() for s in _OUT_OF_MEMORY)


def describe_batch(x, where):
    """Words for a batch of model inputs, as error messages name it."""
    return f"{where} ({describe(x)})"


def batch_range(start, n):
    """``where`` for the batch of samples ``start`` to ``start + n - 1``."""
    return f"the batch of samples {start} to {start + n - 1}"


def _noted(exc):
    return any(note.startswith("sklearn-lib") for note in getattr(exc, "__notes__", ()))


@contextlib.contextmanager
def batch_notes(x, where, what=None):
    """Name the batch in a note on an error raised within, keeping its type and message.

    An out-of-memory error's note adds the hint to lower ``batch_size``.
    The errors of :func:`model_failure` name the batch already.  Notes need
    Python >= 3.11; one note per error.
    """
    try:
        yield
    except Exception as exc:
        if getattr(exc, "names_batch", False) or _noted(exc) or not hasattr(exc, "add_note"):
            raise
        if is_out_of_memory(exc):
            exc.add_note(
                f"sklearn-lib ran out of memory on {describe_batch(x, where)}; lower "
                "batch_size (or the DataLoader's batch size) to need less memory per pass"
            )
        else:
            during = f" while computing {what}" if what else ""
            exc.add_note(f"sklearn-lib: raised{during} on {describe_batch(x, where)}")
        raise


def lookup_hint(model, x):
    """What the model's embedding tables say of token ids ``x`` that failed a lookup, or "".

    Token ids index a vocabulary table, and positions a table of positions:
    ids within the largest table but a sequence longer than a smaller one
    point at the model's maximum length; ids beyond every table, at the
    vocabulary.
    """
    ids = x.get("input_ids") if isinstance(x, dict) else x
    if model is None or not torch.is_tensor(ids) or ids.is_floating_point() or ids.ndim < 2:
        return ""
    tables = [
        (name, m.num_embeddings)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Embedding)
    ]
    if not tables or not ids.numel():
        return ""
    length, largest = ids.shape[-1], int(ids.max())
    if largest >= max(rows for _, rows in tables):
        name, rows = max(tables, key=lambda table: table[1])
        return (
            f" The largest token id is {largest}, but the model's largest embedding "
            f"{name!r} has {rows} rows (ids 0 to {rows - 1})."
        )
    shorter = [table for table in tables if table[1] < length]
    # The table of positions, where its name says so (GPT-2's "wpe", BERT's
    # "position_embeddings"); else any but a table of token types or segments,
    # which is short but read with ids 0 and 1 whatever the length.
    named = [table for table in shorter if _names(table[0], ("pos", "wpe"))]
    shorter = named or [t for t in shorter if not _names(t[0], ("type", "segment"))]
    if shorter:
        name, rows = max(shorter, key=lambda table: table[1])
        return (
            f" The inputs have {length} positions, more than the {rows} rows of the model's "
            f"embedding {name!r}: the model takes sequences of at most {rows} positions."
        )
    return ""


def _names(name, words):
    """Whether the last part of a module's name holds one of ``words``."""
    last = name.rsplit(".", 1)[-1].lower()
    return any(word in last for word in words)


@contextlib.contextmanager
def model_failure(x, where, model=None):
    """Turn a failure of the model's forward pass on ``x`` into a ``ValueError`` naming the batch.

    Out-of-memory errors pass through unchanged (see :func:`batch_notes`);
    so do ``ValueError``\\ s, which name their problem (the package's own
    checks raise them from inside the forward pass); :func:`batch_notes`
    adds the batch to them.
    """
    try:
        yield
    except (RuntimeError, IndexError, TypeError, NotImplementedError) as exc:
        if is_out_of_memory(exc):
            raise
        keywords = (
            " A dict batch is passed as keyword arguments, model(**batch): its keys must be "
            "the names of the model's forward arguments."
            if isinstance(x, dict)
            else ""
        )
        error = ValueError(
            f"The model failed on {describe_batch(x, where)}: {type(exc).__name__}: {exc}. "
            "Check these inputs: token ids within the vocabulary, the dtype the model "
            f"expects, the per-sample shape.{keywords}{lookup_hint(model, x)}"
        )
        error.names_batch = True
        raise error from exc
