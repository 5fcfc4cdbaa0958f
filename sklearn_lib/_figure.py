"""New matplotlib axes for the displays (matplotlib is imported only here, when drawing)."""


def axes_or_new(ax, figsize=(6, 4)):
    """``ax``, or the axes of a new figure (matplotlib is only needed from here on)."""
    if ax is not None:
        return ax
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Plotting needs matplotlib: pip install matplotlib (or, in a checkout of "
            'sklearn-lib, pip install -e ".[plot]")'
        ) from exc
    return plt.subplots(figsize=figsize)[1]
