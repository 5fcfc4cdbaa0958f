"""The batch size of ``batch_size="auto"``: as large as a memory budget allows.

Larger batches amortise the fixed cost of every operation (a kernel launch
on a GPU, the autograd engine and small-matrix overhead on a CPU): on the
paper's attention section a backward row costs 1.7x less per sample at 1024
samples than at 256 (float64, 2 CPU cores).  Memory, though, grows with the
batch: autograd keeps a section's intermediate tensors for its backward
passes.  So a fit measures, on its probe batch, the bytes that autograd
saves per sample in each section (:func:`saved_bytes_per_sample`) and takes
the largest batch whose working set, a few times that, fits the budget of
the device (:func:`auto_batch_size`).

Stochastic sources want small batches: their error shrinks with the number
of draws, sources times batches, so fewer larger batches would make the
same setting less accurate.  A fit with ``n_stochastic_sources`` takes at
most :data:`~sklearn_lib._fitting.stochastic.STOCHASTIC_BATCH_SIZE`, within
the budget like any other.
"""

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .inputs import n_rows

#: Bytes one batch's working set may take: on the CPU, and at most on a GPU
#: (where it is also at most a quarter of the free memory).
CPU_BUDGET_BYTES = 512 << 20
GPU_BUDGET_BYTES = 8 << 30

#: The working set of a backward pass, as a multiple of what autograd saves
#: in the forward pass: the gradients flowing back and their float64 copies.
WORKING_SET_FACTOR = 4

#: The range of automatic batch sizes: at least MIN_BATCH_SIZE where the budget allows
#: (each batch has its fixed costs), fewer (down to one) where samples are larger.
MIN_BATCH_SIZE, MAX_BATCH_SIZE = 64, 4096
#: The fewest samples per batch that a bound by the cache leaves (each batch has its
#: fixed costs: the section's forward, the products' setup).
MIN_CACHED_BATCH_SIZE = 16

#: The batch size of calls that read no data before it is chosen.
DEFAULT_BATCH_SIZE = 256


def saved_bytes_per_sample(x, run, fixed=()):
    """Bytes that autograd saves per sample of the batch ``x`` while ``run()`` builds its graph.

    Parameters
    ----------
    x : torch.Tensor or dict of torch.Tensor
        The batch ``run`` reads (its samples divide the total).
    run : callable
        Builds an autograd graph (called with gradients enabled).
    fixed : iterable of torch.Tensor, optional
        Tensors whose storage autograd may save but which do not grow with
        the batch: the model's parameters and buffers (a Linear layer saves
        its weight, which divided by a probe of 64 samples would count 2 MiB
        per sample at width 4096, and shrink the batch to its smallest).

    Returns
    -------
    float
    """
    total = 0
    skip = {_storage(t) for t in fixed} - {None}

    def pack(tensor):
        nonlocal total
        if _storage(tensor) not in skip:
            total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return total / max(n_rows(x), 1)


def _storage(tensor):
    """Where a dense tensor's data start; None for one without a storage (sparse, nested)."""
    if tensor.layout != torch.strided:
        return None
    try:
        return tensor.untyped_storage().data_ptr()
    except (NotImplementedError, RuntimeError):  # a wrapper subclass without one
        return None


def small_batch_note(size, per_sample_bytes, device):
    """Why ``batch_size="auto"`` chose ``size`` samples, where fewer than
    :data:`MIN_BATCH_SIZE` (its usual floor) fit the budget; else ``""``."""
    if size >= MIN_BATCH_SIZE:
        return ""
    working = WORKING_SET_FACTOR * per_sample_bytes / 2**20
    return (
        f'batch_size="auto": a sample\'s working set is about {working:,.1f} MiB, so '
        f"{size} fit the {budget_bytes(device) / 2**20:,.0f} MiB budget of one batch, "
        f"fewer than the usual {MIN_BATCH_SIZE}"
    )


def budget_bytes(device):
    """The working-set budget of one batch on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return min(GPU_BUDGET_BYTES, free // 4)
    return CPU_BUDGET_BYTES


def auto_batch_size(per_sample_bytes, device, within_cache=None, most=None):
    """The largest batch whose working set fits the device's budget, within the range.

    Parameters
    ----------
    per_sample_bytes : float
        What autograd saves per sample (:func:`saved_bytes_per_sample`).
    device : torch.device or str
    within_cache : int, optional
        The most samples whose rows a closed form makes in chunks that fit the
        cache (``ClosedForm.batch_within_cache``): the batch stays within it,
        down to :data:`MIN_CACHED_BATCH_SIZE`.
    most : int, optional
        A cap of the fit's own (a fit with stochastic sources: its error shrinks
        with the number of batches).

    Returns
    -------
    int
        A power of two up to :data:`MAX_BATCH_SIZE` (or ``most``), at least
        :data:`MIN_BATCH_SIZE` (or :data:`MIN_CACHED_BATCH_SIZE` within the
        cache) unless fewer samples fit the budget (a language model's
        sequences at real width), then as many as fit, at least one; not capped
        by any data's size, since the estimators keep it for every later pass
        (a smaller data set is one batch).
    """
    fits = budget_bytes(device) / max(WORKING_SET_FACTOR * per_sample_bytes, 1.0)
    largest = MAX_BATCH_SIZE if most is None else min(most, MAX_BATCH_SIZE)
    size = 1
    while size * 2 <= min(fits, largest):
        size *= 2
    floor = MIN_BATCH_SIZE if within_cache is None else max(within_cache, MIN_CACHED_BATCH_SIZE)
    while size > floor and within_cache is not None:
        size //= 2
    return size


class _PeakBytes(TorchDispatchMode):
    """The most bytes that tensors made while it is on hold at once.

    Each op's outputs are counted once per storage, from when they are made
    until their last reference goes (torch keeps a tensor's Python object
    alive as long as autograd or a view holds it, so the count follows the
    memory): what a pass's batch really takes, temporaries included, on any
    device, where :func:`saved_bytes_per_sample` counts only what autograd
    keeps for a backward pass.
    """

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._sizes = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in _tensors(out):
            key = _storage(tensor)
            if not key or key in self._sizes:
                continue  # a view, an in-place result or a tensor without storage
            self._sizes[key] = tensor.untyped_storage().nbytes()
            self.live += self._sizes[key]
            self.peak = max(self.peak, self.live)
            weakref.finalize(tensor, self._free, key)
        return out

    def _free(self, key):
        self.live -= self._sizes.pop(key, 0)


def _tensors(out):
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (tuple, list)):
        return tuple(t for t in out if isinstance(t, torch.Tensor))
    return ()


def peak_bytes_per_sample(x, run):
    """The most bytes per sample of the batch ``x`` that tensors made by ``run()`` hold
    at once (:class:`_PeakBytes`): the working set of a pass's batch."""
    with _PeakBytes() as meter:
        run()
    return meter.peak / max(n_rows(x), 1)
