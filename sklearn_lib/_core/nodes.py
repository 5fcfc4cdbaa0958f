"""Node layers and the sections between them: one encoding of the model output.

A *node layer* is a named module whose input (or output) LIB gives a basis;
the model output is the last node, named :data:`OUTPUT_NODE` everywhere (in
bases, graphs, plans and the model runner alike).  A *section* runs from one
node layer to the next (:class:`Section`); :func:`sections_of` is the one
place that pairs consecutive nodes.
"""

import math

#: The name of the model-output node.
OUTPUT_NODE = "output"


def n_positions(shape):
    """Positions sharing one basis in a per-sample activation shape ``(*positions, d)``."""
    return math.prod(shape[:-1])
