"""Argument checks shared by the estimators and the public analysis functions.

scikit-learn's ``Interval(Integral, ...)`` and ``Interval(Real, ...)`` accept
``True`` and ``False`` (``bool`` is a subclass of ``int``), so
``n_stochastic_sources=True`` would pass as 1 and ``tolerance=False`` as 0.
:class:`StrictInterval` refuses them; NaN already fails every interval.
"""

from numbers import Integral

import numpy as np
import torch
from sklearn.utils._param_validation import HasMethods, Interval


class StrictInterval(Interval):
    """An :class:`~sklearn.utils._param_validation.Interval` that refuses bools.

    Usable wherever scikit-learn takes a constraint (``_parameter_constraints``
    and ``validate_params``), with the same arguments as ``Interval``.
    """

    def is_satisfied_by(self, val):
        if isinstance(val, (bool, np.bool_)):
            return False
        return super().is_satisfied_by(val)

    def __str__(self):
        return f"{super().__str__()} (not a bool)"


class TorchModel(HasMethods):
    """The ``model`` parameter: a ``torch.nn.Module``, or a skorch net wrapping one.

    A skorch ``NeuralNet`` (``NeuralNetClassifier``, ...) is read through its
    ``module_``, the module it trained; see :func:`resolve_model`.  (A
    ``HasMethods`` because scikit-learn takes only its own constraint types.)
    """

    def __init__(self):
        super().__init__(["__call__"])

    def is_satisfied_by(self, val):
        return isinstance(val, torch.nn.Module) or _is_skorch_net(val)

    def __str__(self):
        return "a torch.nn.Module (or a skorch net, whose module_ is used)"


def _is_skorch_net(value):
    # Duck-typed: skorch is optional, and its nets are sklearn estimators
    # holding the module class (module) and, once initialised, the module (module_).
    return all(hasattr(value, name) for name in ("initialize", "module", "get_params"))


def resolve_model(model):
    """The ``torch.nn.Module`` to analyse: ``model``, or a skorch net's ``module_``.

    Raises
    ------
    TypeError
        For a TorchScript module, which takes no hooks.
    ValueError
        For a skorch net that is not initialised yet (it has no module).
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            f"model is a TorchScript module ({type(model).__name__}, from torch.jit.script "
            "or torch.jit.trace), which takes no forward hooks, and LIB reads a layer's "
            "activations through them: pass the torch.nn.Module it was made from"
        )
    if isinstance(model, torch.nn.Module):
        return model
    module = getattr(model, "module_", None)
    if isinstance(module, torch.nn.Module):
        return module
    raise ValueError(
        f"model is a skorch {type(model).__name__} that is not initialised, so it holds no "
        "module yet: fit it (or call net.initialize()) first, or pass net.module_"
    )


def check_count(value, name):
    """``value`` as an int >= 1, or a ValueError/TypeError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name}={value} must be at least 1")
    return int(value)


def check_counts(value, name):
    """Counts given as one int or a 1-D array-like of ints, as a 1-D int64 array.

    The scalar case is left to ``validate_params`` (a
    :class:`StrictInterval`); this checks the array-like case, which
    ``np.asarray(value, dtype=int)`` would otherwise accept silently:
    floats truncated (``[2.5]`` to 2), bools (``[True]`` to 1), strings
    (``["3"]`` to 3), nested lists and an empty list (a pass over the data
    that scores nothing).

    Parameters
    ----------
    value : int or array-like of int
    name : str
        The argument's name, for the messages.

    Returns
    -------
    ndarray of shape (n_points,), int64
    """
    if isinstance(value, Integral) and not isinstance(value, (bool, np.bool_)):
        return np.array([value], dtype=np.int64)
    array = np.asarray(value)
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be an int or a 1-D array-like of ints, got an array of shape "
            f"{array.shape}"
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty; give at least one count")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"{name} must hold integers, got {array.dtype} values {array.tolist()[:8]}; "
            "convert whole numbers with .astype(int)"
        )
    return array.astype(np.int64)


def check_section(section, name="section"):
    """A section of an interaction graph, ``(src, dst)``, as a tuple of two str.

    Parameters
    ----------
    section : tuple or list of two str
    name : str
        The argument's name, for the messages.

    Returns
    -------
    tuple of (str, str)
    """
    if (
        isinstance(section, (str, bytes))
        or not isinstance(section, (tuple, list))
        or len(section) != 2
        or not all(isinstance(node, str) for node in section)
    ):
        raise ValueError(
            f"{name} must be a pair (src, dst) of node names, e.g. ('fc2', 'fc3'), got {section!r}"
        )
    return tuple(section)


def check_sections(sections):
    """``sections`` of :func:`~sklearn_lib.edges_needed`: a non-empty list of pairs."""
    if len(sections) == 2 and all(isinstance(node, str) for node in sections):
        # One bare pair would otherwise be read as two sections, each string
        # split into its characters.
        raise ValueError(
            f"sections takes a list of (src, dst) pairs, got the single pair {sections!r}; "
            f"for one section pass [{tuple(sections)!r}]"
        )
    if len(sections) == 0:
        # An empty list is not "every section" (that is None), and scoring
        # no section is never what a caller means.
        raise ValueError("sections is empty; pass None for every section of the graph")
    return [check_section(section, "each of sections") for section in sections]
