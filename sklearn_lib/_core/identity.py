"""The identity matrix of a wide node, never made whole: the model output's default basis.

A language model's output basis is the identity of its vocabulary: 50,257
columns for GPT-2, whose dense ``d x d`` matrix would take 20 GB in float64
(10 GB in float32) and carry nothing.  :class:`Identity` stands for it
wherever a basis matrix goes: it has the ``shape``, ``dtype``, ``T``,
products and slicing of the array (numpy, ``device`` None) or tensor (torch)
it stands for.  A product with it is its other operand, a slice of its
columns the one-hot columns asked for (a chunk of rows' worth), and only an
explicit conversion (``np.asarray``, :func:`dense`) makes the whole matrix.
"""

import numpy as np
import torch


class Identity:
    """The ``d x d`` identity as a numpy array (``device`` None) or a torch tensor.

    Parameters
    ----------
    d : int
    dtype : numpy or torch dtype, default=numpy.float64
    device : torch.device or str, optional
        None for the numpy flavour.
    """

    ndim = 2

    def __init__(self, d, dtype=np.float64, device=None):
        self.d = int(d)
        self.device = None if device is None else torch.device(device)
        self.dtype = dtype if device is not None else np.dtype(dtype)

    @property
    def shape(self):
        return (self.d, self.d) if self.device is None else torch.Size((self.d, self.d))

    @property
    def T(self):  # noqa: N802 (the array attribute's name)
        return self

    def __len__(self):
        return self.d

    def __repr__(self):
        where = "numpy" if self.device is None else str(self.device)
        return f"Identity({self.d}, {self.dtype}, {where})"

    # -- conversions -------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        return np.eye(self.d, dtype=self.dtype if dtype is None else dtype)

    def dense(self):
        """The whole matrix, in this flavour's dtype and device."""
        if self.device is None:
            return np.eye(self.d, dtype=self.dtype)
        return torch.eye(self.d, dtype=self.dtype, device=self.device)

    def to(self, *args, dtype=None, device=None):
        """This identity as a tensor of ``dtype`` on ``device`` (torch's ``to``; from the
        numpy flavour, a tensor on the CPU unless a device is given)."""
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            else:
                device = arg
        if dtype is None:
            dtype = self.dtype if self.device is not None else _torch_dtype(self.dtype)
        if device is None:
            device = self.device if self.device is not None else "cpu"
        return Identity(self.d, dtype, device)

    def astype(self, dtype, copy=True):
        """This identity as an array of ``dtype`` (numpy's ``astype``)."""
        return Identity(self.d, dtype)

    def copy(self):
        """Itself: an identity is never written to."""
        return self

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """numpy's functions: a product as :meth:`__matmul__`, any other on the whole matrix."""
        if ufunc is np.matmul and method == "__call__" and not kwargs and len(inputs) == 2:
            a, b = inputs
            return self.__matmul__(b) if a is self else self.__rmatmul__(a)
        inputs = [np.asarray(x) if isinstance(x, Identity) else x for x in inputs]
        return getattr(ufunc, method)(*inputs, **kwargs)

    # -- products and slices -----------------------------------------------------------
    def __matmul__(self, other):
        """``I @ other``: a copy of ``other`` (as a product would be)."""
        _check_inner(self.d, other.shape[-2] if len(other.shape) > 1 else other.shape[0])
        return _copy(other)

    def __rmatmul__(self, other):
        """``other @ I``: a copy of ``other``."""
        _check_inner(other.shape[-1], self.d)
        return _copy(other)

    def __getitem__(self, key):
        """Entries ``I[rows, columns]`` (ints, slices or index arrays, one per axis): the
        one-hot block asked for, made whole (a slice of all of it too: take the identity
        itself where that is meant)."""
        rows, columns = key if isinstance(key, tuple) else (key, slice(None))
        if not isinstance(rows, (int, slice)) and not isinstance(columns, (int, slice)):
            raise TypeError("an identity is indexed by at most one index array")
        i, j = self._indices(rows), self._indices(columns)
        if self.device is None:
            return np.equal.outer(i, j).astype(self.dtype)
        return (i.reshape(*i.shape, *(1,) * j.ndim) == j).to(self.dtype)

    def _indices(self, index):
        """Integer indices (numpy, or torch on the device) of one axis' ``index``."""
        if self.device is None:
            return np.arange(self.d)[index.numpy() if torch.is_tensor(index) else index]
        everything = torch.arange(self.d, device=self.device)
        return everything[index.to(self.device) if torch.is_tensor(index) else index]


def _copy(other):
    if isinstance(other, Identity):
        return other
    return other.clone() if torch.is_tensor(other) else np.array(other)


def _torch_dtype(dtype):
    """The torch dtype of a numpy one."""
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def _check_inner(left, right):
    if left != right:
        raise ValueError(f"matmul: inner dimensions differ ({left} and {right})")


def dense(matrix):
    """``matrix`` itself, or the whole identity an :class:`Identity` stands for."""
    return matrix.dense() if isinstance(matrix, Identity) else matrix


def as_tensor(matrix, device, dtype):
    """``torch.as_tensor(matrix, ...)``, keeping an :class:`Identity` implicit."""
    if isinstance(matrix, Identity):
        return matrix.to(dtype=dtype, device=device)
    return torch.as_tensor(matrix, device=device, dtype=dtype)
