"""The one table of elementwise activations the closed forms know.

Each entry names an activation ``phi`` as a module type (exact type: a
subclass may compute something else), as torch functions and tensor methods
(how a traced forward calls it), its function, and, where it has one, its
slope as a function of its own output (``relu' = 1[h > 0]``,
``tanh' = 1 - h^2``, ``sigmoid' = h (1 - h)``), which lets a statistics
pass read slopes from the next node layer without running the Linear
layer again.
"""

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Activation:
    """One elementwise activation (see the module docstring)."""

    name: str
    module: type
    functions: tuple
    method: str | None
    phi: object
    slope_of_output: object = None

    def function(self, approximate="none"):
        """``phi`` itself; GELU's ``approximate`` flag is the one parameter an entry takes."""
        return partial(F.gelu, approximate=approximate) if self.name == "gelu" else self.phi


ACTIVATIONS = (
    Activation("relu", nn.ReLU, (torch.relu, F.relu), "relu", torch.relu, lambda h: h > 0),
    Activation("tanh", nn.Tanh, (torch.tanh,), "tanh", torch.tanh, lambda h: 1 - h * h),
    Activation(
        "sigmoid", nn.Sigmoid, (torch.sigmoid,), "sigmoid", torch.sigmoid, lambda h: h * (1 - h)
    ),
    Activation("silu", nn.SiLU, (F.silu,), None, F.silu),
    Activation("gelu", nn.GELU, (F.gelu,), None, F.gelu),
)
BY_NAME = {a.name: a for a in ACTIVATIONS}
BY_MODULE = {a.module: a for a in ACTIVATIONS}
BY_FUNCTION = {f: a for a in ACTIVATIONS for f in a.functions}
BY_METHOD = {a.method: a for a in ACTIVATIONS if a.method}

#: Modules that are the identity in eval mode.
IDENTITIES = (nn.Identity, nn.Dropout)
#: Every module a Linear -> elementwise section may hold after its Linear layer:
#: the table's, more elementwise ones whose slope autograd gives, and identities.
ELEMENTWISE_MODULES = (
    *BY_MODULE,
    nn.LeakyReLU,
    nn.ELU,
    nn.Softplus,
    nn.Mish,
    nn.Hardtanh,
    nn.ReLU6,
    *IDENTITIES,
)
