"""Progress of passes (``_model.progress``): nothing unless enabled, then lines or a bar."""

import re

import pytest

from sklearn_lib._model import progress as progress_module
from sklearn_lib._model.progress import Progress


@pytest.fixture
def plain(monkeypatch):
    """Progress without tqdm: plain lines."""
    monkeypatch.setattr(progress_module, "_has_tqdm", lambda: False)


def _messages(err):
    return [re.sub(r"^\[\w+\] +\d+\.\ds ", "", line) for line in err.splitlines()]


def test_a_line_names_the_owner_and_the_time(capsys):
    Progress("LIBTransformer", enabled=1)("fitting")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.fullmatch(r"\[LIBTransformer\] +\d+\.\ds fitting\n", captured.err)


def test_disabled_progress_is_silent_and_yields_every_batch(capsys):
    progress = Progress("x", enabled=False)
    assert progress.enabled is False
    progress("hello")
    batches = [[1, 2], [3], [4, 5, 6]]
    assert list(progress.samples(iter(batches), 6, "pass")) == batches
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "sizes, n_samples, expected",
    [
        # A line every ~10%: step 10 of 100.
        ([30, 30, 30, 10], 100, [30, 60, 90, 100]),
        ([5] * 4, 20, [5, 10, 15, 20]),
        # Step 2 of 20: the next line when 2 more are done.
        ([7, 1, 1, 11], 20, [7, 9, 20]),
        # Fewer than 10 samples: step 1.
        ([1, 2, 3], 6, [1, 3, 6]),
    ],
)
def test_plain_lines_every_tenth_of_a_pass(plain, capsys, sizes, n_samples, expected):
    batches = [list(range(size)) for size in sizes]
    assert list(Progress("o", True).samples(batches, n_samples, "stats")) == batches
    assert _messages(capsys.readouterr().err) == [
        f"stats: {done}/{n_samples} samples" for done in expected
    ]


def test_plain_lines_every_ten_batches_without_a_total(plain, capsys):
    batches = [[0, 0, 0]] * 25
    assert len(list(Progress("o", True).samples(batches, None, "read"))) == 25
    assert _messages(capsys.readouterr().err) == ["read: 30 samples", "read: 60 samples"]


def test_sizes_come_from_the_size_function(plain, capsys):
    batches = [("a", 4), ("b", 6)]
    progress = Progress("o", True)
    assert list(progress.samples(batches, 10, "pass", size=lambda b: b[1])) == batches
    assert _messages(capsys.readouterr().err) == ["pass: 4/10 samples", "pass: 10/10 samples"]


class FakeBar:
    """Records what ``tqdm`` is given."""

    made = []

    def __init__(self, **kwargs):
        self.kwargs, self.updates, self.closed = kwargs, [], False
        FakeBar.made.append(self)

    def update(self, n):
        self.updates.append(n)

    def close(self):
        self.closed = True


@pytest.fixture
def fake_tqdm(monkeypatch):
    pytest.importorskip("tqdm")
    import tqdm.auto

    FakeBar.made = []
    monkeypatch.setattr(progress_module, "_has_tqdm", lambda: True)
    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)


def test_with_tqdm_a_bar_of_samples(fake_tqdm, capsys):
    batches = [[1, 2], [3], [4, 5, 6]]
    assert list(Progress("owner", True).samples(batches, 6, "Jacobians")) == batches
    (bar,) = FakeBar.made
    assert bar.kwargs["total"] == 6 and bar.kwargs["desc"] == "[owner] Jacobians"
    assert bar.updates == [2, 1, 3] and bar.closed
    assert capsys.readouterr().err == ""  # the bar, not lines


def test_a_bar_is_closed_when_the_pass_stops_early(fake_tqdm):
    passes = Progress("owner", True).samples(iter([[1], [2], [3]]), 3, "pass")
    assert next(passes) == [1]
    passes.close()
    assert FakeBar.made[0].closed


def test_disabled_progress_makes_no_bar(fake_tqdm):
    assert list(Progress("owner", False).samples([[1]], 1, "pass")) == [[1]]
    assert FakeBar.made == []


def test_a_real_tqdm_bar_on_stderr(capsys):
    pytest.importorskip("tqdm")
    batches = [[0] * 5] * 4
    assert list(Progress("owner", True).samples(batches, 20, "pass")) == batches
    err = capsys.readouterr().err
    assert "[owner] pass" in err and "100%" in err
