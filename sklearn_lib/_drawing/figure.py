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
    """``ax``, or the axes of a new figure."""
    if ax is not None:
        return ax
    return pyplot().subplots(figsize=figsize)[1]
