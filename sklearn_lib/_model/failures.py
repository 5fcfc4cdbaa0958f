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

Exploratory work, which only decides how a fit computes (reading the
probe to choose each section's route, detecting and checking closed forms,
timing the routes), runs within :class:`Exploratory`: any failure there
falls back (autograd, no price) and warns, naming the section and the
reason, except the *fatal* ones (:func:`is_fatal`: out of memory,
``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``), which no call of
the package swallows.  Code that ``torch.fx`` or ``torch.export`` cannot
trace is not a fault but a route that does not apply (they fail on much
real code, Hugging Face's GPT-2 and BERT among it): the same context,
silent; the route lines of ``verbose=True`` say which form serves each
section, and for a section left to autograd why each form did not apply.
"""

import contextlib
import warnings

import torch

from ..exceptions import FallbackWarning, user_stacklevel
from .inputs import describe

# Messages of allocators that ran out: CUDA's and the CPU allocator's.
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "not enough memory")


def is_out_of_memory(exc):
    """True for an exception that reports an exhausted allocator."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc).lower() for s in _OUT_OF_MEMORY)


#: Errors that stop the run rather than report a failure of it.
_STOPS = (KeyboardInterrupt, SystemExit, GeneratorExit)


def is_fatal(exc):
    """True for an error that no call of the package swallows: out of memory, or a stop
    of the run (``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``), also where
    another error was raised from it or while handling it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, _STOPS) or is_out_of_memory(exc):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return False


def reason(exc):
    """An error in words for a warning or the plan: its type and its message's first line."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else 'no message'}"


def warn_fallback(message):
    """Warn that work was given up for a slower or plainer way
    (:class:`~sklearn_lib.FallbackWarning`), at the user's line."""
    warnings.warn(message, FallbackWarning, stacklevel=user_stacklevel())


class Exploratory:
    """Run exploratory work: a failure is kept, and the caller falls back.

    Fatal errors (:func:`is_fatal`) propagate.  Any other exception raised
    within is kept in :attr:`error` and suppressed; with ``step``, a
    :class:`~sklearn_lib.FallbackWarning` says ``"{step} failed ({reason}); {instead}"``.
    Without ``step`` the failure is silent: the caller says why, where it
    reports (a route that does not apply, such as code ``torch.fx`` cannot
    trace, is no fault).  A class rather than a generator, so that the
    warning points at the user's line past the package's frames.

    Parameters
    ----------
    step : str, optional
        What was tried, naming the section (``"timing the section 'fc2' ->
        'fc3'"``).
    instead : str, optional
        What the fit does instead.

    Examples
    --------
    >>> with Exploratory() as tried:
    ...     raise ValueError("fx cannot trace this")
    >>> tried.why
    'ValueError: fx cannot trace this'
    """

    def __init__(self, step=None, instead=None):
        self.step, self.instead = step, instead
        self.error = None

    @property
    def why(self):
        """The kept error in words (:func:`reason`), or None."""
        return None if self.error is None else reason(self.error)

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, traceback):
        if exc is None or not isinstance(exc, Exception) or is_fatal(exc):
            return False
        # Its frames would keep the work's tensors alive while the fit goes on.
        self.error = exc.with_traceback(None)
        if self.step is not None:
            warn_fallback(f"{self.step} failed ({self.why}); {self.instead}")
        return True


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

    Out-of-memory errors pass through unchanged (see :func:`batch_notes`), also
    where another error was raised from one (:func:`is_fatal`);
    so do ``ValueError``\\ s, which name their problem (the package's own
    checks raise them from inside the forward pass); :func:`batch_notes`
    adds the batch to them.
    """
    try:
        yield
    except (RuntimeError, IndexError, TypeError, NotImplementedError) as exc:
        if is_fatal(exc):
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
