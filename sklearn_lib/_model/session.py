"""A model session: what one call needs to run the user's model, and the one loop over the data.

The estimators build one :class:`ModelSession` per call (``fit``,
``transform``, ``score``, ``interaction_graph``, an ablation).  It owns

- a **private copy** of the user's model, with its own parameters, buffers
  and other tensors in the compute dtype on the compute device, in eval mode
  and without gradients.  The user's module object is only read, once, to make
  the copy: no hook is ever registered on it, no tensor swapped, no buffer
  updated, so several threads can use one model (and one fitted estimator)
  at once;
- the capture convention, the device and dtype, progress reporting and the
  random generator of the call;
- the one loop over the data, :meth:`ModelSession.run_pass`: a *pass* feeds
  every batch of a source to a list of *accumulators*.

An accumulator is any object with

``reads``
    The node layers whose activations it needs (:data:`OUTPUT_NODE` for the
    model output).  The pass reads all of them in one forward pass per batch,
    checks them for NaN and inf, and hands them over by name.
``update(batch, acts)``
    Add one :class:`Batch`; ``acts`` maps each read node layer to its
    activations on ``batch.x``.
``result()``
    The statistic after the pass (all-reduced over ranks where it is a sum).

Merging two passes is putting their accumulators in one list.
"""

import copy
import itertools
from dataclasses import dataclass

import torch
from sklearn.utils import check_random_state

from .._core.nodes import OUTPUT_NODE, n_positions
from .._core.numerics import all_finite, tolerances
from .capture import ModelRunner
from .failures import batch_notes, batch_range, is_fatal
from .fingerprint import fingerprint
from .inputs import check_mask, n_rows, valid_positions
from .progress import Progress
from .sources import to_tensor

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def outside_inference_mode(fn):
    """Decorate a function that builds tensors for a pass, or runs one, to work in any grad mode.

    Under the caller's ``torch.inference_mode()`` every new tensor would be
    an inference tensor, which autograd refuses and in-place sums cannot
    update outside that mode; under ``torch.no_grad()`` nothing changes (an
    accumulator enables gradients where it differentiates).  So everything
    that makes tensors for a pass runs with inference mode off.
    """
    return torch.inference_mode(False)(fn)


def resolve_device(device):
    """Turn the ``device`` parameter into a ``torch.device``.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device
        ``"auto"`` picks CUDA when available, the CPU otherwise.

    Returns
    -------
    torch.device
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was requested but CUDA is not available")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} does not exist; {torch.cuda.device_count()} CUDA "
                "device(s) are available"
            )
    elif resolved.type != "cpu":
        raise ValueError(f"device={device!r} is not supported; use 'cpu' or 'cuda'")
    return resolved


def resolve_dtype(dtype):
    """Turn the ``dtype`` parameter into a floating ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype={dtype} is not supported; use float64 or float32")
        return dtype
    return _DTYPES[dtype]


def model_tensors(model):
    """Every tensor of ``model``: parameters, buffers, and tensors kept as attributes."""
    attributes = (
        value
        for module in model.modules()
        for value in vars(module).values()
        if isinstance(value, torch.Tensor)
    )
    return itertools.chain(model.parameters(), model.buffers(), attributes)


@outside_inference_mode
def private_copy(model, device, dtype):
    """A copy of ``model`` that one call owns.

    Parameters, buffers and other tensors a module holds (such as the weight
    that ``torch.nn.utils.weight_norm`` recomputes) are new tensors, floating
    ones in ``dtype``, all on ``device``, made directly in place of the
    originals while the module structure is deep-copied, so no tensor is
    copied twice.  Parameters do not require gradients (LIB differentiates
    with respect to activations only).  The copy is in eval mode: dropout and
    batch statistics would couple samples and make the Jacobians random.

    Raises
    ------
    TypeError
        When the model cannot be deep-copied.
    ValueError
        When the model's tensors are on the ``meta`` device (no data).
    """
    named = itertools.chain(model.named_parameters(), model.named_buffers())
    meta = [name for name, t in named if t.is_meta]
    if meta:
        raise ValueError(
            f"The model's tensors are on the 'meta' device, which holds shapes but no "
            f"values ({meta[:3]}{' ...' if len(meta) > 3 else ''}); materialise the model "
            "first, e.g. model.to_empty(device='cpu') and then load_state_dict(...)"
        )
    memo = {}
    for tensor in model_tensors(model):
        if id(tensor) in memo:
            continue  # tied weights stay tied
        target = dtype if tensor.is_floating_point() else tensor.dtype
        data = tensor.detach().to(device=device, dtype=target, copy=True)
        if isinstance(tensor, torch.nn.Parameter):
            data = torch.nn.Parameter(data, requires_grad=False)
        memo[id(tensor)] = data
    try:
        private = copy.deepcopy(model, memo)
    except Exception as exc:  # any failure of a user's __deepcopy__ / __reduce__
        if is_fatal(exc):  # out of memory while copying: not a model that cannot be copied
            raise
        raise TypeError(
            f"sklearn-lib runs a private copy of the model so that the model itself is "
            f"never touched, but copy.deepcopy failed on {type(model).__name__}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return private.eval()


@dataclass(frozen=True)
class Batch:
    """One batch of a pass.

    Attributes
    ----------
    x : torch.Tensor or dict of torch.Tensor
        Model inputs on the session's device (floating ones in its dtype):
        one tensor, or keyword inputs (see :mod:`~sklearn_lib._model.inputs`).
    start : int
        Index of the batch's first sample in the data, e.g. to slice labels.
    """

    x: object
    start: int

    @property
    def n(self):
        return n_rows(self.x)

    def valid(self, shape):
        """Which rows of activations of per-sample ``shape`` count: bool ``(n, *positions)``.

        None when every row counts (no ``attention_mask``, or activations
        whose positions are not the mask's); see
        :func:`~sklearn_lib._model.inputs.valid_positions`.
        """
        return valid_positions(self.x, shape)

    def n_rows(self, shape):
        """The rows of activations of per-sample ``shape`` that count in averages."""
        valid = self.valid(shape)
        return self.n * n_positions(shape) if valid is None else int(valid.sum())

    @property
    def stop(self):
        return self.start + self.n


def check_finite(f, layer):
    """Raise if activations hold NaN or inf."""
    if not all_finite(f):
        raise ValueError(
            f"The activations of layer {layer!r} contain NaN or inf; check the model "
            "and its inputs (inputs themselves were finite)"
        )


class ModelSession(ModelRunner):
    """Everything one call needs to run the user's model (see the module docstring).

    Parameters
    ----------
    model : torch.nn.Module
        The user's model; only read, to make the private copy.
    capture : {"input", "output"}, default="input"
    output : None, str, int or callable, default=None
        The output node among what the model returns (see
        :func:`~sklearn_lib._model.capture.select_output`).
    forward_kwargs : dict or None, default=None
        Keyword arguments of every call of the model.
    feature_axis : int or None, default=None
        The axis of activations that holds the features (see
        :class:`~sklearn_lib._model.capture.ModelRunner`).
    device : torch.device or str, default="cpu"
    dtype : torch.dtype, default=torch.float64
    owner : str, default="sklearn_lib"
        Who reports progress.
    verbose : bool, default=False
    random_state : int, RandomState instance or None
        Seeds the cut check's permutations and, through :attr:`generator`,
        random draws in passes.

    Attributes
    ----------
    params : dict of str to torch.Tensor
        The private copy's parameters and buffers by ``state_dict`` name
        (tied ones under every name), as the closed-form protocol receives
        them.
    fingerprint : dict
        :func:`fingerprint` of the user's model, taken as the copy was made.
    tolerances : Tolerances
        Of the compute dtype.
    progress : Progress
    rng : numpy.random.RandomState
    """

    def __init__(
        self,
        model,
        *,
        capture="input",
        output=None,
        forward_kwargs=None,
        feature_axis=None,
        device="cpu",
        dtype=torch.float64,
        owner="sklearn_lib",
        verbose=False,
        random_state=None,
    ):
        device = torch.device(device)
        # Of the user's model, read (never run) before it is copied: its tensors in
        # their own dtype, whatever the call computes in.
        user_fingerprint = fingerprint(model)
        super().__init__(
            private_copy(model, device, dtype), capture, output, forward_kwargs, feature_axis
        )
        self.device = device
        self.dtype = dtype
        self.params = {
            **dict(self.model.named_parameters(remove_duplicate=False)),
            **dict(self.model.named_buffers(remove_duplicate=False)),
        }
        self.fingerprint = user_fingerprint
        self.tolerances = tolerances(dtype)
        self.progress = Progress(owner, verbose)
        self.rng = check_random_state(random_state)
        self._generator = None

    @property
    def weights(self):
        """The private model's tensors, which do not grow with a batch (:func:`model_tensors`)."""
        return tuple(model_tensors(self.model))

    @property
    def generator(self):
        """A torch generator on the CPU, seeded from :attr:`rng` at first use.

        Random draws happen on the CPU, so results are reproducible on any
        device.
        """
        if self._generator is None:
            seed = int(self.rng.randint(2**31 - 1))
            self._generator = torch.Generator().manual_seed(seed)
        return self._generator

    @outside_inference_mode
    def inputs(self, X, start=0):
        """Model inputs as a tensor on the device, their padding mask checked.

        See :func:`~sklearn_lib._model.sources.to_tensor` and
        :func:`~sklearn_lib._model.inputs.check_mask` (``start``: the index
        of the first sample, for its messages).
        """
        return check_mask(to_tensor(X, self.device, self.dtype), start)

    # -- the one loop over the data ------------------------------------------------------
    def batches(self, source, what):
        """Every batch of ``source`` as a :class:`Batch` on the device, reporting progress."""
        items = self.progress.samples(
            source.batches(), source.n_samples, what, size=lambda item: n_rows(item[1])
        )
        for start, raw in items:
            yield Batch(self.inputs(raw, start), start)

    @outside_inference_mode
    def run_pass(self, source, accumulators, what):
        """Feed every batch of ``source`` to ``accumulators``; return their results.

        Parameters
        ----------
        source : ArraySource or StreamSource
        accumulators : list
            See the module docstring.
        what : str
            Names the pass in progress lines.

        Returns
        -------
        list
            ``accumulator.result()`` of each, in order.
        """
        reads = list(dict.fromkeys(name for acc in accumulators for name in acc.reads))
        need_output = OUTPUT_NODE in reads
        if need_output:
            reads.remove(OUTPUT_NODE)
        try:
            for batch in self.batches(source, what):
                self.where = batch_range(batch.start, batch.n)
                # Inference mode off for each batch anew: a stream's generator
                # may enter it around its yields.  Accumulators that
                # differentiate enable gradients where they do.
                with (
                    torch.inference_mode(False),
                    batch_notes(batch.x, self.where, what),
                    torch.no_grad(),
                ):
                    values, output = self.run(batch.x, reads=reads, need_output=need_output)
                    acts = dict(zip(reads, values))
                    if need_output:
                        acts[OUTPUT_NODE] = output
                    for name, value in acts.items():
                        check_finite(value, "model output" if name == OUTPUT_NODE else name)
                    for acc in accumulators:
                        acc.update(batch, acts)
        finally:
            self.where = "the probe batch"
        return [acc.result() for acc in accumulators]
