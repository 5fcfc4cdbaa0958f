"""Closed forms of sections' Jacobian products, behind one contract (:mod:`.base`).

The registry holds them most specific first: the model's own methods, then
the forms read from its code.  Adding one is a new file here and one line
below (or :func:`~sklearn_lib._routes.forms.base.register` from anywhere).
"""

from .affine import Affine
from .base import REGISTRY, ClosedForm, register
from .final_linear import FinalLinear
from .linear_elementwise import LinearElementwise
from .model_protocol import ModelProtocol
from .residual_mlp import ResidualMLP
from .traced_section import TracedSection

for _form in (ModelProtocol, LinearElementwise, ResidualMLP, Affine, FinalLinear, TracedSection):
    register(_form)

__all__ = [
    "REGISTRY",
    "Affine",
    "ClosedForm",
    "FinalLinear",
    "LinearElementwise",
    "ModelProtocol",
    "ResidualMLP",
    "TracedSection",
    "register",
]
