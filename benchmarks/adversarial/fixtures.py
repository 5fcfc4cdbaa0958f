"""Fitted estimators shared by cases: fitted once, handed out as deep copies."""

import copy
import functools
import warnings

import numpy as np

from sklearn_lib import LIBTransformer

from . import models as M


@functools.cache
def _mlp_fit(params):
    model = M.tanh_mlp()
    X = M.mlp_data()
    lib = LIBTransformer(model, "fc2", downstream_layers=["fc3"], **dict(params)).fit(X)
    return lib, X


def mlp_fit(**params):
    """``(lib, X)``: a tanh MLP fitted at ``fc2`` (downstream ``fc3``), a fresh deep copy."""
    lib, X = _mlp_fit(tuple(sorted(params.items())))
    return copy.deepcopy(lib), X.copy()


@functools.cache
def _mlp3_fit():
    X = M.mlp_data()
    lib = LIBTransformer(M.tanh_mlp(), "fc1", downstream_layers=["fc2", "fc3"]).fit(X)
    return lib, X, lib.interaction_graph(X)


def mlp3_fit():
    """``(lib, X, graph)``: the tanh MLP at ``fc1`` with ``fc2``, ``fc3`` downstream."""
    lib, X, graph = _mlp3_fit()
    return copy.deepcopy(lib), X.copy(), copy.deepcopy(graph)


@functools.cache
def _positions_fit():
    X = M.positions_data()
    lib = LIBTransformer(M.PositionMixer().double(), "mix", downstream_layers=["head"]).fit(X)
    return lib, X


def positions_fit():
    lib, X = _positions_fit()
    return copy.deepcopy(lib), X.copy()


def _fitted_gpt2(data, jacobian="auto"):
    """The tiny GPT-2 at its second block and ``ln_f``, fitted on ``data``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LIBTransformer(
            M.gpt2_eval(),
            "transformer.h.1",
            downstream_layers=["transformer.ln_f"],
            output="logits",
            forward_kwargs=dict(M.KW),
            jacobian=jacobian,
        ).fit(data)


@functools.cache
def _gpt2_fit(jacobian="auto"):
    ids = M.token_ids(16, 8)
    return _fitted_gpt2(ids, jacobian), ids


def gpt2_fit(jacobian="auto"):
    """``(lib, ids)``: a tiny GPT-2 at its second block, fitted on 16 sequences of 8."""
    lib, ids = _gpt2_fit(jacobian)
    return copy.deepcopy(lib), ids.copy()


@functools.cache
def _gpt2_padded_fit():
    ids = M.token_ids(16, 8, seed=3)
    data = padded(ids, [8, 5, 3, 8, 7, 2, 6, 8] * 2)
    return _fitted_gpt2(data), data


def gpt2_padded_fit():
    """``(lib, data)``: the tiny GPT-2 fitted on a right-padded dict of 16 sequences."""
    lib, data = _gpt2_padded_fit()
    return copy.deepcopy(lib), {k: v.copy() for k, v in data.items()}


def labels_of(lib, X):
    """Class labels the model mostly gets right: its own argmax, a few flipped."""
    import torch

    with torch.no_grad():
        out = lib.model(torch.as_tensor(X))
    y = out.argmax(-1).numpy()
    y[::7] = (y[::7] + 1) % out.shape[-1]
    return y


def padded(ids, lengths, pad=0, side="right"):
    """A dict of ``input_ids`` and ``attention_mask`` with each row cut to its length."""
    n, T = ids.shape
    mask = np.zeros((n, T), dtype=np.int64)
    out = np.full((n, T), pad, dtype=np.int64)
    for i, length in enumerate(lengths):
        if side == "right":
            mask[i, :length], out[i, :length] = 1, ids[i, :length]
        else:
            mask[i, T - length :], out[i, T - length :] = 1, ids[i, :length]
    return {"input_ids": out, "attention_mask": mask}
