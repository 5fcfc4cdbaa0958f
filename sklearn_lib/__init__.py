"""sklearn-lib: the Local Interaction Basis (LIB) as scikit-learn transformers.

LIB (Bushnaq et al., 2024, arXiv:2405.10928) finds the computationally
relevant features of a layer of a neural network: PCA of its activations,
rotated onto the directions that matter to the next layer.
"""

from ._activation import ActivationTransformer
from ._basis import NodeBasis
from ._integration import integration_rule
from ._lib import LIBTransformer

__all__ = ["ActivationTransformer", "LIBTransformer", "NodeBasis", "integration_rule"]
__version__ = "0.1.0"
