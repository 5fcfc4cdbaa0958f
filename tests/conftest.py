import numpy as np
import pytest
import torch


@pytest.fixture
def rng():
    """A fixed-seed generator, so every test is reproducible."""
    torch.manual_seed(0)
    return np.random.default_rng(0)
