"""A small image MLP with named layers, for the paper's image-MLP experiment."""

from collections import OrderedDict

from torch import nn


class ImageMLP(nn.Sequential):
    """A ReLU MLP on images, its Linear layers named ``fc1``, ``fc2`` up to ``out``.

    The layers are ``flatten -> fc1 -> act1 -> fc2 -> act2 -> ... -> out``.
    Node layers are the inputs of the Linear layers: ``"fc1"`` (the flattened
    image), ``"fc2"``, ..., and ``"out"``; each is a cut.

    Parameters
    ----------
    input_shape : tuple, default=(1, 8, 8)
        Per-sample image shape.
    hidden : sequence of int, default=(64, 64)
    n_classes : int, default=10
    """

    def __init__(self, input_shape=(1, 8, 8), hidden=(64, 64), n_classes=10):
        n_in = 1
        for size in input_shape:
            n_in *= size
        layers = [("flatten", nn.Flatten())]
        for i, width in enumerate(hidden, start=1):
            layers += [(f"fc{i}", nn.Linear(n_in, width)), (f"act{i}", nn.ReLU())]
            n_in = width
        layers.append(("out", nn.Linear(n_in, n_classes)))
        super().__init__(OrderedDict(layers))

    @property
    def node_layers(self):
        """Names of the Linear layers, in forward order."""
        return [name for name, module in self.named_children() if isinstance(module, nn.Linear)]
