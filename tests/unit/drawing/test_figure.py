"""matplotlib for the displays (``_drawing.figure``): imported when drawing, axes made on demand."""

import sys

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sklearn_lib._drawing.figure import axes_or_new, pyplot  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_pyplot_is_matplotlibs():
    assert pyplot() is plt


def test_given_axes_are_used_as_they_are():
    _, ax = plt.subplots()
    before = plt.get_fignums()
    assert axes_or_new(ax) is ax
    assert axes_or_new(ax, figsize=(1, 1)) is ax
    assert plt.get_fignums() == before  # no new figure


@pytest.mark.parametrize("figsize", [None, (3, 2), (8.5, 5)])
def test_no_axes_make_a_new_figure(figsize):
    before = set(plt.get_fignums())
    ax = axes_or_new(None) if figsize is None else axes_or_new(None, figsize=figsize)
    assert isinstance(ax, matplotlib.axes.Axes)
    assert len(set(plt.get_fignums()) - before) == 1
    assert tuple(ax.figure.get_size_inches()) == pytest.approx(figsize or (6, 4))
    assert ax.figure.axes == [ax]
    assert axes_or_new(None) is not ax  # a new one every time


def test_without_matplotlib_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # as if not importable
    message = r"Plotting needs matplotlib: pip install matplotlib"
    with pytest.raises(ImportError, match=message) as e:
        pyplot()
    assert isinstance(e.value.__cause__, ImportError)
    with pytest.raises(ImportError, match="Plotting needs matplotlib"):
        axes_or_new(None)
    # Given axes need no pyplot.
    ax = matplotlib.figure.Figure().add_subplot()
    assert axes_or_new(ax) is ax


@pytest.mark.parametrize("ax", ["ax", 1, [None]], ids=["str", "int", "list"])
def test_anything_but_axes_is_refused(ax):
    with pytest.raises(TypeError, match=r"ax must be a matplotlib Axes or None; got "):
        axes_or_new(ax)


def test_a_figure_is_not_axes():
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes or None; got Figure"):
        axes_or_new(plt.figure())
