"""Dump every figure sklearn-lib computes on a fixed set of cases, to check a refactor.

The script fits :class:`~sklearn_lib.LIBTransformer` on small seeded models
(toy MLPs, models with positions, a user's own transformer, a residual conv
net, the modular-addition transformer, the paper's seed-0 checkpoint when it
is available, a tiny GPT-2 and BERT) under many settings, and stores every
number the package computes from them in one ``.npz``: each fitted basis
(``lambdas``, ``matrix``, ``pinv``, ``mean``, ``n_components``, ...), the
fitted attributes, ``transform``, ``inverse_transform``, ``score`` (R² and
accuracy), interaction graphs (edges, Lambda, info, modules), ablation and
edge-ablation curves, ``edges_needed``, ``features_needed``, the sources of
stochastic fits and the graphs of ``compute_graph=True`` fits.

It uses only the public API (``sklearn_lib``, ``sklearn_lib.models``,
``sklearn_lib.datasets``, ``sklearn_lib.fourier``) and the test suite's toy
models, imported from this repository's ``tests/toy_models.py`` (which needs
``sklearn_lib.models._modular_addition``), so that it runs unchanged against
the package before and after a refactor of its other private modules.
Everything is seeded; nothing is caught (a failure is a failure).

Keys are ``case/what`` (e.g. ``mlp_default/fit/bases/fc2/lambdas``); every
value is an array (float64 for figures, int64 / bool / str otherwise).  Each case
stores ``case/dtype``, the precision of its passes, which
``compare_figures.py`` uses to pick its tolerance.

Usage
-----
From the repository root, with a snapshot of the code before the refactor::

    git worktree add /tmp/before HEAD
    PYTHONPATH=/tmp/before python benchmarks/dump_figures.py --out before.npz
    # ... refactor ...
    python benchmarks/dump_figures.py --out after.npz
    python benchmarks/compare_figures.py before.npz after.npz

The first line printed names the ``sklearn_lib`` that was imported: check
that it is the snapshot's.  (``PYTHONPATH`` comes before the editable
install of the working tree, so the command above imports the snapshot.)
Set ``SKLEARN_LIB_CHECKPOINTS`` to the folder of the paper's checkpoints
(``modadd_seed0.pt``) to include the paper's model; it is skipped otherwise.
Run both dumps on the same machine with the same packages and ``--threads``
(``meta/*`` keys record them).

The script runs itself again with ``PYTHONHASHSEED=0`` when that is not set,
so that two runs are bit-identical: the modularity of graph modules
otherwise varies in its last bits with the hash seed.  The tiny GPT-2 with
``n_stochastic_sources="auto"`` stops at the cap of rounds and warns that it
did not converge; that is expected.

The full run takes about a minute on 2 CPU cores (most of it the paper's
model on its whole training split), ``--quick`` (fewer samples everywhere)
about 20 s.  ``--cases`` picks cases by name.

Parameters
----------
--out : path
    The ``.npz`` to write.
--quick : flag
    Fewer samples per case.
--cases : names, optional
    Only these cases (default: all).
--threads : int, default=1
    Torch threads.  One thread makes the dump independent of the machine's
    cores and keeps it fast on a busy machine (two threads on two cores
    shared with a test suite ran 10 times slower); give both dumps the same.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from torch.utils.data import DataLoader

import sklearn_lib
from sklearn_lib import (
    ActivationTransformer,
    LIBTransformer,
    ablation_curve,
    edge_ablation_curve,
    edges_needed,
    faithfulness_scorer,
    features_needed,
    n_features_scorer,
)
from sklearn_lib.datasets import make_modular_addition
from sklearn_lib.fourier import dominant_frequencies
from sklearn_lib.models import find_checkpoint, load_modular_addition

# The test suite's toy models, from this repository's tests/ (whichever sklearn_lib is imported).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
import toy_models  # noqa: E402
from toy_models import (  # noqa: E402
    BERT_VOCAB,
    GPT2_VOCAB,
    PositionMixer,
    ResidualMLP,
    TokenMixer,
    WideMixer,
    linear_chain,
    small_modadd,
    small_resnet,
    tanh_mlp,
    tiny_bert,
    tiny_gpt2,
    user_transformer,
)

QUICK = False


def size(full, quick):
    """The number of samples of a case: ``full``, or ``quick`` with ``--quick``."""
    return quick if QUICK else full


# -- toy models: the test suite's (tests/toy_models.py), with the dump's own data makers -------


def modadd_tokens(n=40, p=7, seed=0):
    """Random ``(x, y, =)`` token rows (numpy) and their labels ``(x + y) mod p``."""
    X = toy_models.modadd_tokens(n, p, seed).numpy()
    return X, (X[:, 0] + X[:, 1]) % p


def bert_inputs(n, T, seed=0):
    """Right-padded token ids (pad id 0) of random lengths and their attention mask."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, T + 1, size=n)
    lengths[0] = T
    ids = np.zeros((n, T), dtype=np.int64)
    mask = np.zeros((n, T), dtype=np.int64)
    for i, length in enumerate(lengths):
        ids[i, :length] = rng.integers(1, BERT_VOCAB, size=length)
        mask[i, :length] = 1
    return {"input_ids": ids, "attention_mask": mask}


# -- recording -------------------------------------------------------------------------------


def as_array(value):
    """A value as an array an ``.npz`` stores without pickling."""
    if value is None:
        return np.array("None")
    if isinstance(value, str):
        return np.array(value)
    if isinstance(value, (bool, np.bool_)):
        return np.array(bool(value))
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype.kind == "f":
        return array.astype(np.float64)
    if array.dtype.kind in "iu":
        return array.astype(np.int64)
    if array.dtype.kind in "bU":
        return array
    raise TypeError(f"cannot store {type(value).__name__} of dtype {array.dtype}")


class Recorder:
    """Collects the arrays of one case under ``case/``."""

    def __init__(self, store, case):
        self.store, self.case = store, case

    def __setitem__(self, key, value):
        full = f"{self.case}/{key}"
        if full in self.store:
            raise KeyError(f"{full} recorded twice")
        self.store[full] = as_array(value)


def section_name(section):
    return "->".join(section)


def record_bases(rec, lib, prefix="fit"):
    """Every fitted basis and every fitted attribute of ``lib``."""
    rec[f"{prefix}/nodes"] = np.array(list(lib.bases_))
    for name, basis in lib.bases_.items():
        key = f"{prefix}/bases/{name}"
        for attr in ("lambdas", "matrix", "pinv", "mean", "gram_eigenvalues"):
            rec[f"{key}/{attr}"] = getattr(basis, attr)
        rec[f"{key}/n_components"] = basis.n_components
        rec[f"{key}/shape"] = np.array(basis.shape, dtype=np.int64)
        rec[f"{key}/kind"] = basis.kind
    for attr in ("components_", "inverse_components_", "mean_", "lambdas_"):
        rec[f"{prefix}/{attr}"] = getattr(lib, attr)
    for attr in ("n_components_", "n_positions_", "batch_size_"):
        rec[f"{prefix}/{attr}"] = getattr(lib, attr)
    if hasattr(lib, "n_features_in_"):  # not for dict inputs
        rec[f"{prefix}/n_features_in_"] = lib.n_features_in_
    for attr in ("activation_shape_", "output_shape_"):
        rec[f"{prefix}/{attr}"] = np.array(getattr(lib, attr), dtype=np.int64)
    shapes = lib.input_shape_  # a dict of shapes for dict inputs
    for key, shape in shapes.items() if isinstance(shapes, dict) else [("", shapes)]:
        rec[f"{prefix}/input_shape_{key and '/' + key}"] = np.array(shape, dtype=np.int64)
    for name, n in lib.n_stochastic_sources_.items():
        rec[f"{prefix}/n_stochastic_sources_/{name}"] = n
    for name, rounds in lib.stochastic_rounds_.items():
        for attr in ("n_sources", "rounds", "lambda_error", "cosine", "converged"):
            rec[f"{prefix}/stochastic_rounds_/{name}/{attr}"] = getattr(rounds, attr)
    if hasattr(lib, "interaction_graph_"):
        record_graph(rec, f"{prefix}/interaction_graph_", lib.interaction_graph_)


def record_graph(rec, prefix, graph, modules=False):
    """Nodes, Lambda, edges and info of an interaction graph (and its modules)."""
    rec[f"{prefix}/nodes"] = np.array(graph.nodes)
    for node, lam in graph.lambdas.items():
        rec[f"{prefix}/lambdas/{node}"] = lam
    for section, edges in graph.edges.items():
        rec[f"{prefix}/edges/{section_name(section)}"] = edges
    rec[f"{prefix}/info"] = json.dumps(graph.info, sort_keys=True, default=str)
    if modules:
        found = graph.modules(resolution=1.0, random_state=0)
        for node, labels in found.labels.items():
            rec[f"{prefix}/modules/labels/{node}"] = labels
        rec[f"{prefix}/modules/modularity"] = found.modularity
        rec[f"{prefix}/modules/method"] = found.method


def record_sparsity(rec, key, sparsity):
    for attr in ("n_needed", "n_total", "score", "baseline"):
        rec[f"{key}/{attr}"] = getattr(sparsity, attr)


def counts(total, n_points=12):
    """Up to ``n_points`` counts from 0 to ``total``, both included."""
    return np.unique(np.round(np.linspace(0, total, min(total + 1, n_points))).astype(np.int64))


def record_analyses(
    rec,
    lib,
    X,
    y=None,
    *,
    X_eval=None,
    y_eval=None,
    graph=True,
    modules=False,
    ablate=True,
    needed=True,
    needed_X=None,
    needed_y=None,
    edges_X=None,
    edges_y=None,
):
    """Everything computed from a fitted ``lib``.

    ``X`` is the fitting data (transform, graph); ``X_eval``/``y_eval``
    (default: ``X``, ``y``) score and ablate; ``needed_X``/``needed_y``
    (default: the eval data) feed ``edges_needed`` and ``features_needed``,
    ``edges_X``/``edges_y`` (default: the eval data) ``edge_ablation_curve``.
    """
    X_eval = X if X_eval is None else X_eval
    y_eval = y if X_eval is X and y_eval is None else y_eval
    needed_X = X_eval if needed_X is None else needed_X
    needed_y = y_eval if needed_X is X_eval and needed_y is None else needed_y
    edges_X = X_eval if edges_X is None else edges_X
    edges_y = y_eval if edges_X is X_eval and edges_y is None else edges_y

    Z = lib.transform(X)
    rec["transform"] = Z
    rec["inverse_transform"] = lib.inverse_transform(Z)
    rec["transform_eval"] = lib.transform(X_eval)
    rec["score_r2"] = lib.score(X_eval)
    if y_eval is not None:
        rec["score_accuracy"] = lib.score(X_eval, y_eval)
    rec["faithfulness_scorer"] = faithfulness_scorer(lib, X_eval, y_eval)
    rec["n_features_scorer"] = n_features_scorer(lib)

    layers = [name for name in lib.bases_ if name != "output"]
    if ablate:
        for layer in layers:
            total = lib.bases_[layer].matrix.shape[1]
            k, scores = ablation_curve(lib, X_eval, y_eval, n_features=counts(total), layer=layer)
            rec[f"ablation_curve/{layer}/n_features"] = k
            rec[f"ablation_curve/{layer}/scores"] = scores
            if y_eval is not None:
                _, r2 = ablation_curve(
                    lib, X_eval, y_eval, n_features=counts(total), layer=layer, scoring="r2"
                )
                rec[f"ablation_curve/{layer}/scores_r2"] = r2
    if needed:
        for layer in layers:
            sparsity = features_needed(lib, needed_X, needed_y, layer=layer)
            record_sparsity(rec, f"features_needed/{layer}", sparsity)
    if not graph:
        return
    g = lib.interaction_graph(X)
    record_graph(rec, "interaction_graph", g, modules=modules)
    if ablate:
        for section in g.sections:
            total = g.edges[section].size
            m, scores = edge_ablation_curve(
                lib, g, edges_X, edges_y, section=section, n_edges=counts(total, 8)
            )
            rec[f"edge_ablation_curve/{section_name(section)}/n_edges"] = m
            rec[f"edge_ablation_curve/{section_name(section)}/scores"] = scores
    if needed:
        for section, sparsity in edges_needed(lib, g, needed_X, needed_y).items():
            record_sparsity(rec, f"edges_needed/{section_name(section)}", sparsity)


def fit(rec, model, layer, downstream, X, **params):
    """Fit a ``LIBTransformer`` with ``random_state=0`` unless given, and record its bases."""
    params.setdefault("random_state", 0)
    lib = LIBTransformer(model, layer, downstream_layers=list(downstream), **params).fit(X)
    rec["dtype"] = params.get("dtype", "float64")
    record_bases(rec, lib)
    return lib


def mlp_data(n, seed=0):
    """Inputs of :func:`tanh_mlp` and 3-class labels that depend on them."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5)
    return X, y


MLP = ("fc1", ("fc2", "fc3"))


# -- cases -----------------------------------------------------------------------------------


def case_mlp_default(rec):
    X, y = mlp_data(size(1000, 120))
    X_test, y_test = mlp_data(size(500, 80), seed=1)
    model = tanh_mlp()
    lib = fit(rec, model, *MLP, X)
    record_analyses(rec, lib, X, y, X_eval=X_test, y_eval=y_test, modules=True)
    # Graphs with other settings than the fit's.
    trapezoidal = lib.interaction_graph(X, integration="trapezoidal", n_intervals=3)
    record_graph(rec, "graph_trapezoidal3", trapezoidal)
    record_graph(
        rec, "graph_stochastic2", lib.interaction_graph(X, n_stochastic_sources=2, random_state=0)
    )
    # Edge ablation curves and edges_needed scored as R² (no labels).
    g = lib.interaction_graph(X)
    for section in g.sections:
        _, scores = edge_ablation_curve(
            lib, g, X_test, section=section, n_edges=counts(g.edges[section].size, 8)
        )
        rec[f"edge_ablation_curve_r2/{section_name(section)}/scores"] = scores
    for section, sparsity in edges_needed(lib, g, X_test, tolerance=1e-2).items():
        record_sparsity(rec, f"edges_needed_r2/{section_name(section)}", sparsity)
    record_sparsity(rec, "features_needed_r2", features_needed(lib, X_test, tolerance=1e-2))
    # The other public routes: transform_activations, save / load, a PCA pipeline.
    acts = ActivationTransformer(model, "fc1").fit(X)
    A = acts.transform(X_test)
    rec["activations"] = A
    rec["transform_activations"] = lib.transform_activations(A)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "lib.npz")
        lib.save(path)
        loaded = LIBTransformer.load(path, tanh_mlp())
    rec["loaded/transform"] = loaded.transform(X_test)
    rec["loaded/score_accuracy"] = loaded.score(X_test, y_test)
    pipe = Pipeline(
        [("acts", ActivationTransformer(model, "fc2")), ("pca", PCA(svd_solver="full"))]
    ).fit(X)
    k, scores = ablation_curve(pipe, X_test, y_test, n_features=[0, 1, 2, 4, 8])
    rec["pca_pipeline/ablation_curve/n_features"] = k
    rec["pca_pipeline/ablation_curve/scores"] = scores
    rec["pca_pipeline/faithfulness_scorer"] = faithfulness_scorer(pipe, X_test)


def case_mlp_autograd(rec):
    X, y = mlp_data(size(1000, 120))
    lib = fit(rec, tanh_mlp(), *MLP, X, jacobian="autograd", batch_size=64)
    record_analyses(rec, lib, X, y)


def case_mlp_trapezoidal(rec):
    X, y = mlp_data(size(1000, 120))
    lib = fit(rec, tanh_mlp(), *MLP, X, integration="trapezoidal", n_intervals=2)
    record_analyses(rec, lib, X, y)


def case_mlp_gauss_legendre(rec):
    X, y = mlp_data(size(200, 80))
    lib = fit(rec, tanh_mlp(), *MLP, X, integration="gauss-legendre", n_intervals=2)
    record_analyses(rec, lib, X, y, needed=False)


def case_mlp_output_pca(rec):
    X, y = mlp_data(size(1000, 120))
    lib = fit(rec, tanh_mlp(), *MLP, X, output_basis="pca")
    record_analyses(rec, lib, X, y)


def case_mlp_basis_pca(rec):
    X, y = mlp_data(size(1000, 120))
    lib = fit(rec, tanh_mlp(), *MLP, X, basis="pca")
    record_analyses(rec, lib, X, y)


def case_mlp_float32(rec):
    X, y = mlp_data(size(1000, 120))
    lib = fit(rec, tanh_mlp(), *MLP, X, dtype="float32")
    record_analyses(rec, lib, X, y)


def case_mlp_compute_graph(rec):
    X, y = mlp_data(size(1000, 120))
    lib = fit(rec, tanh_mlp(), *MLP, X, compute_graph=True)
    record_analyses(rec, lib, X, y, needed=False)


def case_mlp_truncated(rec):
    X, y = mlp_data(size(1000, 120))
    lib = fit(rec, tanh_mlp(), *MLP, X, n_components=3, truncation_threshold=1e-2)
    record_analyses(rec, lib, X, y)


def case_mlp_whiten_uncentred(rec):
    X, y = mlp_data(size(200, 80))
    lib = fit(rec, tanh_mlp(), *MLP, X, whiten=True, center=False, n_components=0.9)
    record_analyses(rec, lib, X, y, needed=False)


def case_mlp_stream(rec):
    """Fitted and read from a DataLoader, in batches of 64."""
    X, y = mlp_data(size(1000, 120))
    stream = DataLoader(torch.as_tensor(X), batch_size=64)
    lib = fit(rec, tanh_mlp(), *MLP, stream)
    rec["transform_stream"] = lib.transform(stream)
    rec["score_stream"] = lib.score(stream)
    record_graph(rec, "interaction_graph_stream", lib.interaction_graph(stream))


def case_linear_chain(rec):
    X = np.random.default_rng(0).normal(size=(size(200, 80), 5))
    lib = fit(rec, linear_chain(), "fc1", ("fc2", "fc3"), X, batch_size=64)
    record_analyses(rec, lib, X, needed=False)


def case_positions_exact(rec):
    X = np.random.default_rng(0).normal(size=(size(600, 100), 4, 3))
    lib = fit(rec, PositionMixer(), "mix", ("head",), X, batch_size=50)
    record_analyses(rec, lib, X, modules=True)
    record_graph(
        rec, "graph_stochastic3", lib.interaction_graph(X, n_stochastic_sources=3, random_state=0)
    )


def case_positions_stochastic4(rec):
    X = np.random.default_rng(0).normal(size=(size(600, 100), 4, 3))
    lib = fit(rec, PositionMixer(), "mix", ("head",), X, n_stochastic_sources=4, batch_size=50)
    record_analyses(rec, lib, X, needed=False)


def case_positions_stochastic_auto(rec):
    X = np.random.default_rng(0).normal(size=(size(600, 300), 4, 3))
    lib = fit(rec, PositionMixer(), "mix", ("head",), X, n_stochastic_sources="auto")
    record_analyses(rec, lib, X, needed=False)


def case_wide_stochastic_auto(rec):
    """As tests/integration/test_stochastic_auto.py fits it: converging rounds."""
    X = np.random.default_rng(0).normal(size=(size(160, 96), 12, 10))
    model = WideMixer().double()
    lib = fit(rec, model, "mix", ("head",), X, n_stochastic_sources="auto", batch_size=16)
    record_analyses(rec, lib, X, needed=False)


def case_tokens(rec):
    X = np.random.default_rng(0).integers(0, 7, size=(size(200, 80), 3))
    lib = fit(rec, TokenMixer().double(), "mix", ("head",), X)
    record_analyses(rec, lib, X, needed=False)


def case_residual(rec):
    X, y = mlp_data(size(1000, 120))
    lib = fit(rec, ResidualMLP().double(), "block", ("out",), X)
    record_analyses(rec, lib, X, y)


def case_residual_autograd_truncated(rec):
    X, y = mlp_data(size(200, 80))
    model = ResidualMLP().double()
    lib = fit(rec, model, "block", ("out",), X, jacobian="autograd", n_components=0.95)
    record_analyses(rec, lib, X, y, needed=False)


USER_LAYERS = ("blocks.0.attn", ("blocks.0.mlp", "unembed"))


def case_user_transformer(rec):
    """As tests/integration/test_saved_fits.py fits it, and scored on labels."""
    X, y = modadd_tokens(size(120, 60))
    lib = fit(
        rec, user_transformer(), *USER_LAYERS, X, compute_graph=True, n_components=5, random_state=3
    )
    record_analyses(rec, lib, X, y, modules=True)


def case_user_transformer_autograd(rec):
    X, y = modadd_tokens(size(120, 60))
    lib = fit(rec, user_transformer(), *USER_LAYERS, X, jacobian="autograd")
    record_analyses(rec, lib, X, y, needed=False)


def case_user_transformer_stochastic(rec):
    X, y = modadd_tokens(size(200, 80))
    lib = fit(rec, user_transformer(), *USER_LAYERS, X, n_stochastic_sources=4)
    record_analyses(rec, lib, X, y, needed=False)


def case_resnet(rec):
    """``feature_axis=1``: stage2 (n, 8, 8, 8) -> pool (n, 16, 4, 4) -> fc (n, 16)."""
    rng = np.random.default_rng(0)
    n = size(32, 16)
    X = rng.normal(size=(n, 3, 8, 8))
    y = rng.integers(0, 5, size=n)
    model = small_resnet()
    lib = fit(rec, model, "stage2", ("pool", "fc"), X, feature_axis=1)
    record_analyses(rec, lib, X, y, needed=False)
    pool = fit(Recorder(rec.store, f"{rec.case}_pool"), model, "pool", ("fc",), X, feature_axis=1)
    rec["pool/transform"] = pool.transform(X)
    rec["pool/score"] = pool.score(X)


MODADD_LAYERS = ("blocks.0.attn", ("blocks.0.mlp", "unembed"))


def modadd_p23():
    return small_modadd(p=23)


def _fourier(rec, lib, p, layer="unembed"):
    """Dominant frequencies of ``x + y`` of ``layer``'s LIB features on the full grid."""
    X_train, X_test, _, _ = make_modular_addition(p=p, frac_train=0.5)
    grid = np.concatenate([X_train, X_test])
    z = (grid[:, 0] + grid[:, 1]) % p
    basis = lib.bases_[layer]
    acts = ActivationTransformer(lib.model, layer).fit(grid).transform(grid)
    features = (acts - basis.mean) @ basis.matrix[:, : basis.n_components]
    report = dominant_frequencies(features, z, p)
    rec[f"fourier/{layer}/frequency"] = report.frequency
    rec[f"fourier/{layer}/share"] = report.share
    rec[f"fourier/{layer}/sum_share"] = report.sum_share


def case_modadd_p7(rec):
    """``small_modadd`` of the tests (p = 7) on the task's split."""
    X_train, X_test, y_train, y_test = make_modular_addition(p=7, frac_train=0.5)
    lib = fit(rec, small_modadd(), *MODADD_LAYERS, X_train)
    record_analyses(rec, lib, X_train, y_train, X_eval=X_test, y_eval=y_test, modules=True)


def case_modadd_p7_trapezoidal_compute_graph(rec):
    """The graph of a fit whose rule the Jacobian rows cannot serve: a pass of its own."""
    X_train, _, y_train, _ = make_modular_addition(p=7, frac_train=0.5)
    lib = fit(
        rec,
        small_modadd(),
        *MODADD_LAYERS,
        X_train,
        integration="trapezoidal",
        n_intervals=2,
        compute_graph=True,
    )
    record_analyses(rec, lib, X_train, y_train, ablate=False, needed=False)


def case_modadd_p23(rec):
    X_train, X_test, y_train, y_test = make_modular_addition(p=23, frac_train=0.5)
    lib = fit(rec, modadd_p23(), *MODADD_LAYERS, X_train)
    record_analyses(rec, lib, X_train, y_train, X_eval=X_test, y_eval=y_test)
    _fourier(rec, lib, 23)


def case_modadd_p23_autograd(rec):
    X_train, X_test, y_train, y_test = make_modular_addition(p=23, frac_train=0.5)
    lib = fit(rec, modadd_p23(), *MODADD_LAYERS, X_train, jacobian="autograd")
    record_analyses(rec, lib, X_train, y_train, X_eval=X_test, y_eval=y_test, needed=False)


def case_modadd_p23_pca(rec):
    X_train, X_test, y_train, y_test = make_modular_addition(p=23, frac_train=0.5)
    lib = fit(rec, modadd_p23(), *MODADD_LAYERS, X_train, basis="pca")
    record_analyses(rec, lib, X_train, y_train, X_eval=X_test, y_eval=y_test, needed=False)


def case_modadd_p23_compute_graph(rec):
    X_train, _, y_train, _ = make_modular_addition(p=23, frac_train=0.5)
    lib = fit(rec, modadd_p23(), *MODADD_LAYERS, X_train, compute_graph=True, dtype="float32")
    record_analyses(rec, lib, X_train, y_train, ablate=False, needed=False)


def case_paper_seed0(rec):
    """The paper's seed-0 checkpoint (p = 113) on its train/test split.

    Fitted on the whole train split (with ``compute_graph=True``), scored and
    node-ablated on 3000 test samples, edge-ablated on 600, ``edges_needed`` /
    ``features_needed`` on 300; the Fourier report of ``unembed`` on the full
    grid; a PCA fit's ablation curves.
    """
    X_train, X_test, y_train, y_test = make_modular_addition()
    X_train = X_train[: size(len(X_train), 600)]
    y_train = y_train[: len(X_train)]
    X_test, y_test = X_test[: size(3000, 500)], y_test[: size(3000, 500)]
    few, many = size(300, 100), size(600, 200)
    model = load_modular_addition(0)
    lib = fit(rec, model, *MODADD_LAYERS, X_train, compute_graph=True)
    record_analyses(
        rec,
        lib,
        X_train,
        y_train,
        X_eval=X_test,
        y_eval=y_test,
        needed_X=X_test[:few],
        needed_y=y_test[:few],
        edges_X=X_test[:many],
        edges_y=y_test[:many],
    )
    _fourier(rec, lib, 113)
    pca_rec = Recorder(rec.store, f"{rec.case}_pca")
    pca = fit(pca_rec, model, *MODADD_LAYERS, X_train, basis="pca", batch_size=1000)
    for layer in ("blocks.0.attn", "blocks.0.mlp", "unembed"):
        k, scores = ablation_curve(
            pca, X_test, y_test, n_features=counts(pca.bases_[layer].matrix.shape[1]), layer=layer
        )
        rec[f"pca/ablation_curve/{layer}/n_features"] = k
        rec[f"pca/ablation_curve/{layer}/scores"] = scores


GPT2 = {
    "layer": "transformer.h.1",
    "downstream": ("transformer.ln_f",),
    "output": "logits",
    "forward_kwargs": {"use_cache": False},
}


def gpt2_data(n):
    ids = np.random.default_rng(0).integers(0, GPT2_VOCAB, size=(n, 5))
    return ids, np.roll(ids, -1, axis=1)  # the next token at every position


def _fit_gpt2(rec, X, **params):
    spec = dict(GPT2)
    return fit(rec, tiny_gpt2(), spec.pop("layer"), spec.pop("downstream"), X, **spec, **params)


def case_gpt2(rec):
    """As test_gpt2_lambdas_match_brute_force_jacobians fits it (float64 passes)."""
    X, y = gpt2_data(size(24, 16))
    lib = _fit_gpt2(rec, X)
    record_analyses(rec, lib, X, y)
    record_graph(
        rec, "graph_stochastic3", lib.interaction_graph(X, n_stochastic_sources=3, random_state=0)
    )


def case_gpt2_stochastic4(rec):
    X, y = gpt2_data(size(48, 24))
    lib = _fit_gpt2(rec, X, n_stochastic_sources=4)
    record_analyses(rec, lib, X, y, needed=False)


def case_gpt2_stochastic_auto(rec):
    """Rounds of sources that stop at the cap (64) unconverged, with a warning."""
    X, _ = gpt2_data(size(32, 16))
    lib = _fit_gpt2(rec, X, n_stochastic_sources="auto")
    record_analyses(rec, lib, X, graph=False, ablate=False, needed=False)


def case_gpt2_compute_graph(rec):
    X, y = gpt2_data(size(24, 16))
    lib = _fit_gpt2(rec, X, compute_graph=True)
    record_analyses(rec, lib, X, y, ablate=False, needed=False)


def case_gpt2_float32(rec):
    X, y = gpt2_data(size(24, 16))
    lib = _fit_gpt2(rec, X, dtype="float32")
    record_analyses(rec, lib, X, y, ablate=False, needed=False)


def case_bert_padded(rec):
    """Right-padded dict inputs with an attention mask: NaN at padded positions."""
    X = bert_inputs(size(12, 8), 6)
    lib = fit(rec, tiny_bert(), "encoder.layer.1", (), X, output="last_hidden_state")
    record_analyses(rec, lib, X, graph=False, needed=False)


CASES = {
    name[len("case_") :]: function
    for name, function in globals().items()
    if name.startswith("case_") and callable(function)
}


def main(argv=None):
    global QUICK
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="the .npz to write")
    parser.add_argument("--quick", action="store_true", help="fewer samples per case")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), help="only these cases")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1; see the docstring)"
    )
    args = parser.parse_args(argv)
    QUICK = args.quick
    torch.set_num_threads(args.threads)
    if argv is None and os.environ.get("PYTHONHASHSEED") != "0":
        # Graph modules sum over sets of nodes, whose order follows the hash seed: their
        # modularity differs in the last bits from one process to the next without it.
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])

    print(f"sklearn_lib {sklearn_lib.__version__} from {sklearn_lib.__file__}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, quick={QUICK}")
    store = {}
    meta = Recorder(store, "meta")
    meta["dtype"] = "float64"
    meta["quick"] = QUICK
    # Run both dumps in the same conditions: these differ otherwise.
    meta["torch_version"] = torch.__version__
    meta["numpy_version"] = np.__version__
    meta["torch_threads"] = torch.get_num_threads()
    names = args.cases or list(CASES)
    done = []
    start = time.perf_counter()
    for name in names:
        if name.startswith("paper") and find_checkpoint(0) is None:
            print(f"{name:36s} skipped: no modadd_seed0.pt ($SKLEARN_LIB_CHECKPOINTS unset)")
            continue
        torch.manual_seed(0)
        np.random.seed(0)  # noqa: NPY002 (any code that draws from the global RNG)
        before = len(store)
        t0 = time.perf_counter()
        CASES[name](Recorder(store, name))
        done.append(name)
        elapsed = time.perf_counter() - t0
        lam = store[f"{name}/fit/lambdas_"]
        print(
            f"{name:36s} {elapsed:6.2f}s  {len(store) - before:4d} keys  "
            f"dtype={store[f'{name}/dtype']}  n_components_={lam.shape[0]}  "
            f"Lambda[0]={lam[0]:.6g}",
            flush=True,
        )
    meta["cases"] = np.array(done)
    np.savez_compressed(args.out, **store)
    total = time.perf_counter() - start
    print(f"{len(store)} keys written to {args.out} in {total:.1f}s")


if __name__ == "__main__":
    sys.exit(main())
