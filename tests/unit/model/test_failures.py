"""How failures of the model are reported: types kept, batches named, memory hints."""

import sys
import warnings

import pytest
import torch

from sklearn_lib._model.failures import (
    Exploratory,
    batch_notes,
    is_fatal,
    is_out_of_memory,
    lookup_hint,
    model_failure,
    reason,
)

X = torch.zeros(5, 3, dtype=torch.int64)
WHERE = "the batch of samples 10 to 14"
NOTES = pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes: Python 3.11")


@pytest.mark.parametrize(
    "exc, expected",
    [
        (torch.OutOfMemoryError("CUDA out of memory"), True),
        (RuntimeError("CUDA out of memory. Tried to allocate"), True),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory"), True),
        (MemoryError(), True),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_out_of_memory_is_recognised(exc, expected):
    assert is_out_of_memory(exc) is expected


@NOTES
def test_out_of_memory_keeps_its_type_and_gains_one_note():
    error = torch.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(torch.OutOfMemoryError) as info:
        with batch_notes(X, WHERE), batch_notes(X, WHERE):  # nested: noted once
            raise error
    assert info.value is error and str(error) == "CUDA out of memory"
    assert len(error.__notes__) == 1
    assert "samples 10 to 14" in error.__notes__[0] and "lower batch_size" in error.__notes__[0]


@NOTES
def test_other_errors_keep_their_type_and_gain_a_note():
    with pytest.raises(NotImplementedError) as info:
        with batch_notes(X, WHERE, "Jacobians"):
            raise NotImplementedError("no derivative")
    assert info.value.__notes__ == [
        f"sklearn-lib: raised while computing Jacobians on {WHERE} "
        "(inputs of shape (5, 3), dtype torch.int64)"
    ]
    with pytest.raises(ValueError, match="a check of the package") as info:
        with batch_notes(X, WHERE):
            raise ValueError("a check of the package")
    assert WHERE in info.value.__notes__[0]
    with pytest.raises(ValueError, match=WHERE) as info:  # names its batch already
        with batch_notes(X, WHERE), model_failure(X, WHERE):
            raise IndexError("index out of range in self")
    assert not hasattr(info.value, "__notes__")


@pytest.mark.parametrize("error", [IndexError, RuntimeError, TypeError, NotImplementedError])
def test_a_failing_forward_becomes_a_value_error_naming_the_batch(error):
    with pytest.raises(ValueError, match=rf"failed on {WHERE} \(inputs of shape \(5, 3\)") as info:
        with model_failure(X, WHERE):
            raise error("index out of range in self")
    assert isinstance(info.value.__cause__, error)


def test_a_forward_out_of_memory_is_not_turned_into_a_value_error():
    with pytest.raises(RuntimeError, match="out of memory"):
        with model_failure(X, WHERE):
            raise RuntimeError("CUDA out of memory")


def test_an_error_raised_from_out_of_memory_is_not_turned_into_a_value_error():
    with pytest.raises(RuntimeError, match="a wrapper's") as info:
        with model_failure(X, WHERE):
            raise RuntimeError("a wrapper's") from MemoryError()
    assert isinstance(info.value.__cause__, MemoryError)


# -- exploratory work --------------------------------------------------------------------


def _raised_from(cause, suppress=False):
    """A RuntimeError raised while handling ``cause`` (``from cause`` where ``suppress``)."""
    try:
        try:
            raise cause
        except BaseException:
            if suppress:
                raise RuntimeError("wrapped") from None
            raise RuntimeError("raised while handling it")  # noqa: B904 - the context
    except RuntimeError as exc:
        return exc


@pytest.mark.parametrize(
    "exc, expected",
    [
        (torch.OutOfMemoryError("CUDA out of memory"), True),
        (RuntimeError("CUDA out of memory. Tried to allocate"), True),
        (MemoryError(), True),
        (KeyboardInterrupt(), True),
        (SystemExit(1), True),
        (GeneratorExit(), True),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
        (ValueError("a check of the package"), False),
        (_raised_from(MemoryError()), True),
        (_raised_from(KeyboardInterrupt()), True),
        (_raised_from(ValueError("other")), False),
        (_raised_from(MemoryError(), suppress=True), False),
    ],
    ids=[
        "OutOfMemoryError", "cuda-message", "MemoryError", "KeyboardInterrupt", "SystemExit",
        "GeneratorExit", "shape", "ValueError", "while-out-of-memory", "while-interrupted",
        "while-other", "from-None",
    ],
)  # fmt: skip
def test_fatal_errors_are_out_of_memory_and_stops(exc, expected):
    assert is_fatal(exc) is expected


def test_an_error_from_out_of_memory_is_fatal():
    error = ValueError("a wrapper's message")
    error.__cause__ = torch.OutOfMemoryError("CUDA out of memory")
    assert is_fatal(error)


def test_a_reason_is_the_type_and_first_line():
    assert reason(ValueError("first\nsecond")) == "ValueError: first"
    assert reason(KeyError("W_in")) == "KeyError: 'W_in'"
    assert reason(MemoryError()) == "MemoryError: no message"


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory"),
        RuntimeError("CUDA out of memory. Tried to allocate"),
        MemoryError(),
        KeyboardInterrupt(),
        SystemExit(1),
        GeneratorExit(),
        _raised_from(MemoryError()),
    ],
    ids=lambda e: type(e).__name__,
)
def test_exploratory_work_lets_fatal_errors_through(error):
    tried = Exploratory("timing the section 'a' -> 'b'", "no price")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and says nothing
        with pytest.raises(type(error)) as info:
            with tried:
                raise error
    assert info.value is error and tried.error is None and tried.why is None


def test_exploratory_work_falls_back_and_says_why():
    tried = Exploratory("Timing the section 'a' -> 'b'", "its pass has no price")
    with pytest.warns(RuntimeWarning) as caught:
        with tried:
            raise IndexError("index 3 is out of bounds\nmore detail")
    assert str(caught[0].message) == (
        "Timing the section 'a' -> 'b' failed (IndexError: index 3 is out of bounds); "
        "its pass has no price"
    )
    assert caught[0].filename == __file__  # the caller's line
    assert isinstance(tried.error, IndexError) and tried.error.__traceback__ is None
    assert tried.why == "IndexError: index 3 is out of bounds"


def test_exploratory_work_without_a_step_is_silent():
    """What does not apply (code fx cannot trace) is no fault: the caller says why."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Exploratory() as tried:
            raise TypeError("'Proxy' object does not support item assignment")
    assert tried.why == "TypeError: 'Proxy' object does not support item assignment"
    with Exploratory() as done:
        pass
    assert done.error is None and done.why is None


class Lookup(torch.nn.Module):
    """Token and position tables, as a language model has them (8 positions at most)."""

    def __init__(self):
        super().__init__()
        self.tokens, self.positions = torch.nn.Embedding(20, 4), torch.nn.Embedding(8, 4)

    def forward(self, ids):
        return self.tokens(ids) + self.positions(torch.arange(ids.shape[1]))


@pytest.mark.parametrize(
    "ids, said",
    [
        (
            torch.zeros(2, 10, dtype=torch.long),
            "10 positions, more than the 8 rows of .*'positions'",
        ),
        (torch.full((2, 5), 25), "largest token id is 25.*'tokens' has 20 rows"),
    ],
    ids=["too long", "beyond the vocabulary"],
)
def test_a_failed_lookup_names_lengths_or_ids(ids, said):
    model = Lookup()
    with pytest.raises(ValueError, match=said):
        with model_failure(ids, "batch 0:2", model):
            model(ids)


def test_the_lookup_hint_says_nothing_without_tables_or_token_ids():
    assert lookup_hint(None, torch.zeros(2, 3, dtype=torch.long)) == ""
    assert lookup_hint(Lookup(), torch.zeros(2, 3)) == ""  # floating inputs: no ids
    assert lookup_hint(torch.nn.Linear(2, 2), torch.zeros(2, 3, dtype=torch.long)) == ""
    assert lookup_hint(Lookup(), torch.zeros(2, 5, dtype=torch.long)) == ""  # nothing out of range


class EncoderLookup(torch.nn.Module):
    """BERT's three tables: words, 16 positions, and 2 token types read with ids 0."""

    def __init__(self):
        super().__init__()
        self.word_embeddings = torch.nn.Embedding(30, 4)
        self.position_embeddings = torch.nn.Embedding(16, 4)
        self.token_type_embeddings = torch.nn.Embedding(2, 4)

    def forward(self, ids):
        positions = torch.arange(ids.shape[1])
        types = torch.zeros_like(ids)
        return (
            self.word_embeddings(ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(types)
        )


def test_a_long_input_names_the_table_of_positions_not_of_token_types():
    """The shortest table (2 token types) is read with ids 0 whatever the length."""
    model = EncoderLookup()
    ids = torch.zeros(2, 20, dtype=torch.long)
    with pytest.raises(ValueError, match="20 positions, more than the 16 rows of .*'position_emb"):
        with model_failure(ids, "batch 0:2", model):
            model(ids)
