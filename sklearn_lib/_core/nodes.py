"""Node layers and the sections between them: one encoding of the model output.

A *node layer* is a named module whose input (or output) LIB gives a basis;
the model output is the last node, named :data:`OUTPUT_NODE` everywhere (in
bases, graphs, plans and the model runner alike).  A *section* runs from one
node layer to the next (:class:`Section`); :func:`sections_of` is the one
place that pairs consecutive nodes.
"""

import math
from dataclasses import dataclass

#: The name of the model-output node.
OUTPUT_NODE = "output"


def n_positions(shape):
    """Positions sharing one basis in a per-sample activation shape ``(*positions, d)``."""
    return math.prod(shape[:-1])


@dataclass(frozen=True)
class Section:
    """The part of the model from one node layer to the next.

    Attributes
    ----------
    src : str
        The source node layer.
    dst : str
        The next node layer, or :data:`OUTPUT_NODE` for the model output.
    src_shape, dst_shape : tuple or None
        Per-sample activation shapes ``(*positions, d)`` of both ends, once
        known (None before the model has run on a probe).
    """

    src: str
    dst: str
    src_shape: tuple | None = None
    dst_shape: tuple | None = None

    @property
    def to_output(self):
        """Whether the section ends at the model output."""
        return self.dst == OUTPUT_NODE

    @property
    def dst_title(self):
        """How messages name the destination: ``"the model output"`` or ``'name'``."""
        return "the model output" if self.to_output else repr(self.dst)

    @property
    def exact_rows(self):
        """Rows of the exact ``M'``: output positions times the next node's full width."""
        return n_positions(self.dst_shape) * self.dst_shape[-1]

    def __str__(self):
        return f"{self.src!r} -> {self.dst!r}"


def sections_of(names, shapes=None, output_shape=None):
    """The sections between consecutive node layers ``names``, the last one to the output.

    Parameters
    ----------
    names : sequence of str
        Node layers in forward order.
    shapes : dict of str to tuple, optional
        Their per-sample activation shapes.
    output_shape : tuple, optional
        The model output's.

    Returns
    -------
    tuple of Section
    """
    names = list(names)
    shapes = shapes or {}
    shape_of = {**shapes, OUTPUT_NODE: output_shape}
    return tuple(
        Section(src, dst, shapes.get(src), shape_of.get(dst))
        for src, dst in zip(names, [*names[1:], OUTPUT_NODE])
    )
