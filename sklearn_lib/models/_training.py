"""Trainers for the paper's models (full batch, as in the paper)."""

import sys
import time

import numpy as np
import torch
from torch import nn

#: The paper's settings for the modular-addition transformer.
PAPER_MODADD = dict(epochs=60_000, lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))
#: A fast configuration that still learns the task on a laptop CPU in under a
#: minute: a half-width model (d_model 64) and a 10x learning rate generalise
#: after a few hundred full-batch epochs (measured: test accuracy 1.0 after
#: 500 epochs on the paper's split; the tests check a floor).
FAST_MODADD = dict(epochs=600, lr=1e-2, weight_decay=1.0, betas=(0.9, 0.98))
FAST_MODADD_SIZES = dict(d_model=64, n_heads=4, d_head=16, d_mlp=256)


def train_full_batch(
    model,
    X,
    y,
    *,
    epochs,
    lr,
    weight_decay,
    betas=(0.9, 0.999),
    seed=0,
    verbose=False,
    eval_data=None,
    log_every=1000,
):
    """Train ``model`` in place with full-batch AdamW and cross-entropy.

    Parameters
    ----------
    model : torch.nn.Module
    X, y : array-like
        Inputs (token ids stay integers; floats become float32) and labels.
    epochs, lr, weight_decay, betas : training settings
    seed : int
        Seeds torch before training (the data order is fixed: full batch).
    verbose : bool
        Print loss and accuracies every ``log_every`` epochs to stderr.
    eval_data : (X, y), optional
        Held-out data whose accuracy is reported.

    Returns
    -------
    history : dict of lists
        ``epoch``, ``loss``, ``train_accuracy`` and ``eval_accuracy`` at each log.
    """
    torch.manual_seed(seed)
    X, y = _tensor(X), torch.as_tensor(np.asarray(y))
    evaluation = None if eval_data is None else (_tensor(eval_data[0]), eval_data[1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=betas)
    history = {"epoch": [], "loss": [], "train_accuracy": [], "eval_accuracy": []}
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        optimizer.zero_grad()
        logits = model(X)
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        if (epoch + 1) % log_every == 0 or epoch + 1 == epochs:
            train_acc = float((logits.argmax(-1) == y).float().mean())
            eval_acc = accuracy(model, *evaluation) if evaluation else float("nan")
            model.train()
            for key, value in zip(history, (epoch + 1, float(loss.detach()), train_acc, eval_acc)):
                history[key].append(value)
            if verbose:
                _log(epoch + 1, epochs, time.perf_counter() - start, history)
    return history


def _log(epoch, epochs, seconds, history):
    """One progress line on stderr: the last logged loss and accuracies."""
    loss, train, held_out = (history[k][-1] for k in ("loss", "train_accuracy", "eval_accuracy"))
    print(
        f"[train] epoch {epoch}/{epochs} {seconds:.0f}s "
        f"loss {loss:.4g} train {train:.4f} eval {held_out:.4f}",
        file=sys.stderr,
        flush=True,
    )


def accuracy(model, X, y):
    """Accuracy of ``model`` (in eval mode) on ``X``; restores the mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            pred = model(_tensor(X)).argmax(-1).numpy()
    finally:
        model.train(was_training)
    return float(np.mean(pred == np.asarray(y)))


def _tensor(X):
    X = torch.as_tensor(np.asarray(X))
    return X.float() if X.is_floating_point() else X


def train_modular_addition(
    X_train,
    y_train,
    *,
    p=113,
    fast=False,
    seed=0,
    verbose=False,
    eval_data=None,
    model=None,
    **overrides,
):
    """Train the paper's transformer on modular addition.

    Parameters
    ----------
    X_train, y_train : array-like
        The task's training split (from
        :func:`~sklearn_lib.datasets.make_modular_addition`).
    p : int, default=113
    fast : bool, default=False
        ``False``: the paper's model and settings (AdamW lr 1e-3, weight
        decay 1, betas (0.9, 0.98), 60,000 full-batch epochs: hours on a
        CPU).  ``True``: ``FAST_MODADD`` on a half-width model
        (``FAST_MODADD_SIZES``), under a minute.
    seed : int
        Seeds the initialisation and training.
    model : ModularAdditionTransformer, optional
        Trained in place; a new one of the paper's size by default.
    **overrides
        Any of ``epochs``, ``lr``, ``weight_decay``, ``betas``.

    Returns
    -------
    model : ModularAdditionTransformer, in eval mode
    history : dict
    """
    from ._modular_addition import ModularAdditionTransformer

    torch.manual_seed(seed)
    if model is None:
        model = ModularAdditionTransformer(p, **(FAST_MODADD_SIZES if fast else {}))
    settings = {**(FAST_MODADD if fast else PAPER_MODADD), **overrides}
    history = train_full_batch(
        model, X_train, y_train, seed=seed, verbose=verbose, eval_data=eval_data, **settings
    )
    return model.eval(), history


def train_image_mlp(
    X_train,
    y_train,
    *,
    hidden=(64, 64),
    epochs=500,
    lr=3e-3,
    weight_decay=1e-4,
    seed=0,
    verbose=False,
    eval_data=None,
):
    """Train an :class:`ImageMLP` full batch with AdamW.

    Returns
    -------
    model : ImageMLP, in eval mode
    history : dict
    """
    from ._image_mlp import ImageMLP

    torch.manual_seed(seed)
    model = ImageMLP(tuple(np.asarray(X_train).shape[1:]), hidden, int(np.max(y_train)) + 1)
    history = train_full_batch(
        model,
        X_train,
        y_train,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        verbose=verbose,
        eval_data=eval_data,
        log_every=max(epochs // 10, 1),
    )
    return model.eval(), history
