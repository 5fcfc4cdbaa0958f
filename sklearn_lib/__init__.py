"""sklearn-lib: the Local Interaction Basis (LIB) as scikit-learn transformers.

LIB (Bushnaq et al., 2024, arXiv:2405.10928) finds the computationally
relevant features of a layer of a neural network: PCA of its activations,
rotated onto the directions that matter to the next layer.
"""

from ._activation import ActivationTransformer
from ._analysis.communities import GraphModules
from ._analysis.graph import InteractionGraph
from ._dashboard import FeatureDashboard
from ._display import AblationCurveDisplay, InteractionGraphDisplay, SpectrumDisplay
from ._fitting.basis import NodeBasis
from ._lib import LIBTransformer
from ._routes.integration import integration_rule
from .ablation import (
    Sparsity,
    ablation_curve,
    edge_ablation_curve,
    edges_needed,
    faithfulness_scorer,
    features_needed,
    n_features_scorer,
    sparsest_faithful,
)
from .exceptions import FallbackWarning, FlattenedPositionsWarning, StaleBasisWarning

__all__ = [
    "AblationCurveDisplay",
    "ActivationTransformer",
    "FallbackWarning",
    "FeatureDashboard",
    "FlattenedPositionsWarning",
    "InteractionGraphDisplay",
    "SpectrumDisplay",
    "GraphModules",
    "Sparsity",
    "StaleBasisWarning",
    "InteractionGraph",
    "LIBTransformer",
    "NodeBasis",
    "ablation_curve",
    "edge_ablation_curve",
    "edges_needed",
    "faithfulness_scorer",
    "features_needed",
    "integration_rule",
    "n_features_scorer",
    "sparsest_faithful",
]
__version__ = "0.1.0"
