"""The paper's models, their trainers and checkpoint loading."""

import os
from pathlib import Path

import torch

from ._image_mlp import ImageMLP
from ._modular_addition import ModularAdditionTransformer
from ._training import (
    FAST_MODADD,
    FAST_MODADD_SIZES,
    PAPER_MODADD,
    accuracy,
    train_full_batch,
    train_image_mlp,
    train_modular_addition,
)

__all__ = [
    "FAST_MODADD",
    "FAST_MODADD_SIZES",
    "PAPER_MODADD",
    "ImageMLP",
    "ModularAdditionTransformer",
    "accuracy",
    "find_checkpoint",
    "load_modular_addition",
    "train_full_batch",
    "train_image_mlp",
    "train_modular_addition",
]

#: Environment variable naming a folder with ``modadd_seed{0..4}.pt``.
CHECKPOINTS_ENV = "SKLEARN_LIB_CHECKPOINTS"


def find_checkpoint(seed=0, checkpoints=None):
    """Path of the paper's checkpoint for ``seed``, or None if there is none.

    Parameters
    ----------
    seed : int, default=0
        Training seed, 0 to 4.
    checkpoints : str or Path, optional
        Folder holding ``modadd_seed{seed}.pt``; defaults to the environment
        variable ``SKLEARN_LIB_CHECKPOINTS``.
    """
    folder = checkpoints if checkpoints is not None else os.environ.get(CHECKPOINTS_ENV)
    if not folder:
        return None
    path = Path(folder) / f"modadd_seed{seed}.pt"
    return path if path.is_file() else None


def load_modular_addition(seed=0, checkpoints=None):
    """The paper's published modular-addition model for ``seed`` (eval mode).

    The checkpoint is a plain ``state_dict`` loaded with ``weights_only=True``
    and ``strict=True``.

    Raises
    ------
    FileNotFoundError
        When no checkpoint is found, naming where it looked.
    """
    path = find_checkpoint(seed, checkpoints)
    if path is None:
        where = checkpoints or os.environ.get(CHECKPOINTS_ENV) or f"${CHECKPOINTS_ENV} (unset)"
        raise FileNotFoundError(
            f"No modadd_seed{seed}.pt in {where}; pass checkpoints= or set {CHECKPOINTS_ENV} "
            "to the folder of the paper's checkpoints"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    p = state["embed.W_E"].shape[0] - 1
    model = ModularAdditionTransformer(p)
    model.load_state_dict(state, strict=True)
    return model.eval()
