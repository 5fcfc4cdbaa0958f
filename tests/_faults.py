"""Errors that no call of the package swallows, for the tests that inject them."""

import torch

#: Out of memory (three ways torch and Python say it) and a stop of the run: by name,
#: a callable that makes a fresh one.
FATAL = {
    "OutOfMemoryError": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"),
    "cuda-message": lambda: RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "MemoryError": MemoryError,
    "KeyboardInterrupt": KeyboardInterrupt,
}


class RaisesWhenCalled:
    """A mixin before a module class: its forward raises ``error()`` whenever it is
    called, traced, exported or run (``class Raises(RaisesWhenCalled, Net)``)."""

    def __init__(self, error):
        super().__init__()
        self.error = error

    def forward(self, x):  # one named input, as tracers want it
        raise self.error()
