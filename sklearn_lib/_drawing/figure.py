"""matplotlib for the displays, imported only when something is drawn."""


def pyplot():
    """``matplotlib.pyplot``, or an ImportError that says how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Plotting needs matplotlib: pip install matplotlib (or, in a checkout of "
            'sklearn-lib, pip install -e ".[plot]")'
        ) from exc
    return plt


def axes_or_new(ax, figsize=(6, 4)):
    """``ax``, or the axes of a new figure; TypeError if ``ax`` is neither None nor Axes."""
    if ax is None:
        return pyplot().subplots(figsize=figsize)[1]
    from matplotlib.axes import Axes

    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None; got {type(ax).__name__}")
    return ax
