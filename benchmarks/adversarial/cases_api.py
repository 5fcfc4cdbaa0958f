"""Every public entry point on valid input, its result checked independently.

Groups: mapping methods (transform and its inverses against the fitted
matrices and plain hooks), scores and ablations (against the model run with
the reconstruction put in by a hook), scikit-learn integration (clone,
pickle, pipelines, searches, parameters), ``InteractionGraph``, the displays
and the public functions.
"""

import copy
import os
import pickle

import networkx as nx
import numpy as np
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from sklearn_lib import (
    AblationCurveDisplay,
    ActivationTransformer,
    InteractionGraph,
    InteractionGraphDisplay,
    LIBTransformer,
    SpectrumDisplay,
    StaleBasisWarning,
    ablation_curve,
    edge_ablation_curve,
    edges_needed,
    faithfulness_scorer,
    features_needed,
    integration_rule,
    n_features_scorer,
    sparsest_faithful,
)

from . import fixtures as F
from . import models as M
from . import reference as R
from .harness import Raises, Trial, add, temp_dir

MAP = "api: transform and inverses"
SCORE = "api: scores and ablations"
SK = "api: scikit-learn integration"
GRAPH = "api: InteractionGraph"
DISPLAY = "api: displays"
FUNCS = "api: public functions"


def _acts(lib, X, layer=None):
    layer = layer or lib.layer
    acts, _ = R.activations(
        lib.model, X, [layer], capture=lib.capture, output=lib.output, kwargs=lib.forward_kwargs
    )
    a = acts[layer]
    return a.reshape(len(a), -1, a.shape[-1]).numpy()


def _mapping(name, make, action, expected, *, quick=False, rtol=1e-10):
    """``make() -> (lib, X)``; ``action(lib, X)`` against ``expected(lib, X)``."""

    def setup():
        lib, X = make()
        want = expected(lib, X)
        return Trial(
            lambda: action(lib, X),
            lambda got: R.close(
                got, want, rtol=rtol, atol=rtol * max(np.nanmax(np.abs(want)), 1), what=name
            ),
            watch={"model": lib.model, "X": X, "estimator": lib},
        )

    add(MAP, name, setup, quick=quick)


def _features(lib, X):
    a = _acts(lib, X)
    Z = (a - lib.mean_) @ lib.components_.T
    if lib.whiten:
        Z = Z / np.sqrt(lib.lambdas_)
    return Z.reshape(len(a), -1)


def register_mapping():
    mlp = F.mlp_fit
    _mapping(
        "transform = (A - mean_) @ components_.T",
        mlp,
        lambda l, X: l.transform(X),
        _features,
        quick=True,
    )
    _mapping(
        "transform of a float32 copy of X",
        mlp,
        lambda l, X: l.transform(X.astype(np.float32)),
        lambda l, X: _features(l, X.astype(np.float32).astype(np.float64)),
    )
    _mapping("transform of a list of lists", mlp, lambda l, X: l.transform(X.tolist()), _features)
    _mapping("transform of a tensor", mlp, lambda l, X: l.transform(torch.as_tensor(X)), _features)
    _mapping(
        "transform of a tensor that requires grad",
        mlp,
        lambda l, X: l.transform(torch.as_tensor(X).requires_grad_()),
        _features,
    )
    _mapping(
        "transform of a Fortran-ordered array",
        mlp,
        lambda l, X: l.transform(np.asfortranarray(X)),
        _features,
    )
    _mapping(
        "transform of a reversed view (negative strides)",
        mlp,
        lambda l, X: l.transform(X[::-1]),
        lambda l, X: _features(l, X[::-1].copy()),
    )
    _mapping(
        "transform of a read-only array", mlp, lambda l, X: l.transform(_readonly(X)), _features
    )
    _mapping(
        "transform of one sample",
        mlp,
        lambda l, X: l.transform(X[:1]),
        lambda l, X: _features(l, X[:1]),
    )
    _mapping("transform of a pandas DataFrame", mlp, lambda l, X: l.transform(_frame(X)), _features)
    _mapping(
        "transform of a DataLoader of (x, y)",
        mlp,
        lambda l, X: l.transform(_loader(X, labels=True)),
        _features,
    )
    _mapping(
        "transform of a generator function stream",
        mlp,
        lambda l, X: l.transform(_Regen(X)),
        _features,
    )
    _mapping(
        "transform with batch_size=1",
        lambda: F.mlp_fit(batch_size=1),
        lambda l, X: l.transform(X[:20]),
        lambda l, X: _features(l, X[:20]),
    )
    _mapping(
        "fit_transform = fit then transform", mlp, lambda l, X: clone(l).fit_transform(X), _features
    )
    _mapping(
        "whiten: transform / sqrt(Lambda)",
        lambda: F.mlp_fit(whiten=True),
        lambda l, X: l.transform(X),
        _features,
    )
    _mapping(
        "transform_activations = transform",
        mlp,
        lambda l, X: l.transform_activations(_acts(l, X)[:, 0]),
        _features,
    )
    _mapping(
        "transform_activations of a stream",
        mlp,
        lambda l, X: l.transform_activations(_Regen(_acts(l, X)[:, 0])),
        _features,
    )
    _mapping(
        "inverse_transform = Z @ inverse_components_ + mean_",
        mlp,
        lambda l, X: l.inverse_transform(l.transform(X)),
        lambda l, X: _features(l, X) @ l.inverse_components_ + l.mean_,
    )
    _mapping(
        "inverse_transform, whiten",
        lambda: F.mlp_fit(whiten=True),
        lambda l, X: l.inverse_transform(l.transform(X)),
        lambda l, X: (
            (_acts(l, X)[:, 0] - l.mean_) @ l.components_.T @ l.inverse_components_ + l.mean_
        ),
    )
    _mapping(
        "inverse_transform of a stream of Z",
        mlp,
        lambda l, X: l.inverse_transform(_Regen(l.transform(X))),
        lambda l, X: _features(l, X) @ l.inverse_components_ + l.mean_,
    )
    _mapping(
        "transform_tokens of an (n, d) layer", mlp, lambda l, X: l.transform_tokens(X)[0], _features
    )
    _mapping(
        "transform_tokens index of an (n, d) layer",
        mlp,
        lambda l, X: l.transform_tokens(X)[1][:, 0],
        lambda l, X: np.arange(len(X)),
    )
    _mapping(
        "inverse_transform_tokens",
        mlp,
        lambda l, X: l.inverse_transform_tokens(l.transform_tokens(X)[0]),
        lambda l, X: _features(l, X) @ l.inverse_components_ + l.mean_,
    )
    pos = F.positions_fit
    _mapping(
        "positions: transform position-major",
        pos,
        lambda l, X: l.transform(X),
        _features,
        quick=True,
    )
    _mapping(
        "positions: transform_tokens rows",
        pos,
        lambda l, X: l.transform_tokens(X)[0],
        lambda l, X: _features(l, X).reshape(-1, l.n_components_),
    )
    _mapping(
        "positions: transform_tokens index",
        pos,
        lambda l, X: l.transform_tokens(X)[1],
        lambda l, X: np.stack(
            np.meshgrid(np.arange(len(X)), np.arange(4), indexing="ij"), -1
        ).reshape(-1, 2),
    )
    _mapping(
        "positions: transform_activations (n, P, d)",
        pos,
        lambda l, X: l.transform_activations(_acts(l, X)),
        _features,
    )
    _mapping(
        "positions: transform_activations (n, P * d)",
        pos,
        lambda l, X: l.transform_activations(_acts(l, X).reshape(len(X), -1)),
        _features,
    )
    _mapping(
        "positions: inverse_transform",
        pos,
        lambda l, X: l.inverse_transform(l.transform(X)),
        lambda l, X: (
            _features(l, X).reshape(len(X), 4, -1) @ l.inverse_components_ + l.mean_
        ).reshape(len(X), -1),
    )
    _mapping(
        "positions: get_feature_names_out count",
        pos,
        lambda l, X: len(l.get_feature_names_out()),
        lambda l, X: l.transform(X).shape[1],
    )

    def conv():
        model, X = M.small_resnet(), M.images(8)
        return LIBTransformer(model, "pool", downstream_layers=["fc"], feature_axis=1).fit(X), X

    def conv_features(l, X):
        acts, _ = R.activations(l.model, X, ["pool"])
        a = torch.movedim(acts["pool"], 1, -1).numpy()  # (n, H, W, C)
        return ((a - l.mean_) @ l.components_.T).reshape(len(X), -1)

    _mapping(
        "conv map: transform (h * W + w) * k + j", conv, lambda l, X: l.transform(X), conv_features
    )
    _mapping(
        "conv map: transform_tokens index (sample, h, w)",
        conv,
        lambda l, X: l.transform_tokens(X)[1],
        lambda l, X: np.stack(
            np.meshgrid(np.arange(len(X)), np.arange(4), np.arange(4), indexing="ij"), -1
        ).reshape(-1, 3),
    )

    def gpt():
        lib, ids = F.gpt2_fit()
        return lib, ids[:, :5]

    def gpt_features(l, X):
        a = _acts(l, X)
        return ((a - l.mean_) @ l.components_.T).reshape(len(X), -1)

    _mapping(
        "GPT-2: transform of shorter sequences (5 of 8)",
        gpt,
        lambda l, X: l.transform(X),
        gpt_features,
        rtol=1e-9,
    )

    def set_output():
        lib, X = F.mlp_fit()
        lib.set_output(transform="pandas")
        return lib, X

    _mapping(
        "set_output(pandas) values", set_output, lambda l, X: l.transform(X).to_numpy(), _features
    )


def _readonly(X):
    X = X.copy()
    X.flags.writeable = False
    return X


def _frame(X):
    import pandas as pd

    return pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])


def _loader(X, labels=False, batch_size=16):
    from torch.utils.data import DataLoader, TensorDataset

    t = torch.as_tensor(X)
    if labels:
        return DataLoader(TensorDataset(t, torch.zeros(len(X))), batch_size=batch_size)
    return DataLoader(t, batch_size=batch_size)


class _Regen:
    """A stream whose ``__iter__`` is a generator function: a new pass every call."""

    def __init__(self, X, size=16):
        self.X, self.size = X, size

    def __iter__(self):
        for i in range(0, len(self.X), self.size):
            yield self.X[i : i + self.size]


# -- scores and ablations --------------------------------------------------------------------


def _ref_scores(lib, X, y, ks, layer=None, scoring=None):
    """Scores of the model with ``layer`` rebuilt from its top ``k`` features."""
    layer = layer or lib.layer
    b = lib.bases_[layer]
    out = R.outputs(lib.model, X, output=lib.output, kwargs=lib.forward_kwargs).numpy()
    scores = []
    for k in ks:
        abl = R.ablated_outputs(
            lib.model,
            X,
            layer,
            b.mean,
            np.asarray(b.matrix)[:, :k],
            np.asarray(b.pinv)[:k],
            capture=lib.capture,
            output=lib.output,
            kwargs=lib.forward_kwargs,
            feature_axis=lib.feature_axis,
        ).numpy()
        if scoring is not None:
            scores.append(scoring(y if y is not None else out, abl))
        elif y is None:
            scores.append(R.pooled_r2(out, abl))
        else:
            scores.append(R.accuracy(y, abl))
    return np.asarray(scores)


def _score_case(name, make, action, expected, *, quick=False, tol=1e-9):
    def setup():
        lib, X = make()
        want = expected(lib, X)
        return Trial(
            lambda: action(lib, X),
            lambda got: R.close(got, want, rtol=tol, atol=tol, what=name),
            watch={"model": lib.model, "X": X, "estimator": lib},
        )

    add(SCORE, name, setup, quick=quick)


def _K(lib):
    """The number of non-null features of ``lib``'s layer."""
    return lib.bases_[lib.layer].lambdas.size


def _mse_score(y_true, out):
    return -float(np.mean((np.asarray(y_true) - np.asarray(out)) ** 2))


def register_scores():
    mlp = F.mlp_fit
    y = F.labels_of
    _score_case(
        "score R2 (no y)",
        mlp,
        lambda l, X: l.score(X),
        lambda l, X: _ref_scores(l, X, None, [l.n_components_])[0],
        quick=True,
    )
    _score_case(
        "score accuracy",
        mlp,
        lambda l, X: l.score(X, y(l, X)),
        lambda l, X: _ref_scores(l, X, y(l, X), [l.n_components_])[0],
    )
    _score_case(
        "score accuracy, y as a list",
        mlp,
        lambda l, X: l.score(X, list(y(l, X))),
        lambda l, X: _ref_scores(l, X, y(l, X), [l.n_components_])[0],
    )
    _score_case(
        "score with n_components=2",
        lambda: F.mlp_fit(n_components=2),
        lambda l, X: l.score(X),
        lambda l, X: _ref_scores(l, X, None, [2])[0],
    )
    _score_case(
        "score with truncation 0.1",
        lambda: F.mlp_fit(truncation_threshold=0.1),
        lambda l, X: l.score(X),
        lambda l, X: _ref_scores(l, X, None, [l.n_components_])[0],
    )
    _score_case(
        "score of a stream",
        mlp,
        lambda l, X: l.score(_loader(X)),
        lambda l, X: _ref_scores(l, X, None, [l.n_components_])[0],
    )
    _score_case(
        "score accuracy of a DataLoader of (x, y) with y given",
        mlp,
        lambda l, X: l.score(_loader(X, labels=True), y(l, X)),
        lambda l, X: _ref_scores(l, X, y(l, X), [l.n_components_])[0],
    )
    ks = [0, 1, 2, 3, 5, 8]
    _score_case(
        "ablation_curve R2",
        mlp,
        lambda l, X: ablation_curve(l, X, n_features=ks)[1],
        lambda l, X: _ref_scores(l, X, None, ks),
        quick=True,
    )
    _score_case(
        "ablation_curve accuracy",
        mlp,
        lambda l, X: ablation_curve(l, X, y(l, X), n_features=ks)[1],
        lambda l, X: _ref_scores(l, X, y(l, X), ks),
    )
    _score_case(
        "ablation_curve scoring='r2' with y",
        mlp,
        lambda l, X: ablation_curve(l, X, None, n_features=ks, scoring="r2")[1],
        lambda l, X: _ref_scores(l, X, None, ks),
    )
    _score_case(
        "ablation_curve callable scoring",
        mlp,
        lambda l, X: ablation_curve(l, X, n_features=ks, scoring=_mse_score)[1],
        lambda l, X: _ref_scores(l, X, None, ks, scoring=_mse_score),
    )
    _score_case(
        "ablation_curve k beyond the kept features",
        lambda: F.mlp_fit(n_components=2),
        lambda l, X: ablation_curve(l, X, n_features=[2, 5])[1],
        lambda l, X: _ref_scores(l, X, None, [2, 5]),
    )
    _score_case(
        "ablation_curve of a downstream layer",
        mlp,
        lambda l, X: ablation_curve(l, X, n_features=[0, 1, 2], layer="fc3")[1],
        lambda l, X: _ref_scores(l, X, None, [0, 1, 2], layer="fc3"),
    )
    _score_case(
        "ablation_curve, basis=pca",
        lambda: F.mlp_fit(basis="pca"),
        lambda l, X: ablation_curve(l, X, n_features=ks)[1],
        lambda l, X: _ref_scores(l, X, None, ks),
    )
    _score_case(
        "ablation_curve of positions",
        F.positions_fit,
        lambda l, X: ablation_curve(l, X, n_features=[0, 1, 3])[1],
        lambda l, X: _ref_scores(l, X, None, [0, 1, 3]),
    )
    _score_case(
        "ablation_curve n_features as a numpy int",
        mlp,
        lambda l, X: ablation_curve(l, X, n_features=np.int64(3))[1],
        lambda l, X: _ref_scores(l, X, None, [3]),
    )
    _score_case(
        "ablation_curve n_features unsorted with repeats",
        mlp,
        lambda l, X: ablation_curve(l, X, n_features=[5, 1, 5, 0])[1],
        lambda l, X: _ref_scores(l, X, None, [5, 1, 5, 0]),
    )
    _score_case(
        "faithfulness_scorer = score",
        mlp,
        lambda l, X: faithfulness_scorer(l, X),
        lambda l, X: _ref_scores(l, X, None, [l.n_components_])[0],
    )
    _score_case(
        "n_features_scorer = -n_components_",
        lambda: F.mlp_fit(n_components=3),
        lambda l, X: n_features_scorer(l, X),
        lambda l, X: -3.0,
    )

    def conv():
        model, X = M.small_resnet(), M.images(8)
        return LIBTransformer(model, "pool", downstream_layers=["fc"], feature_axis=1).fit(X), X

    _score_case(
        "conv map: ablation_curve",
        conv,
        lambda l, X: ablation_curve(l, X, n_features=[0, 2, _K(l)])[1],
        lambda l, X: _ref_scores(l, X, None, [0, 2, _K(l)]),
        tol=1e-8,
    )

    def gpt():
        lib, ids = F.gpt2_fit()
        return lib, ids

    _score_case(
        "GPT-2: ablation_curve R2",
        gpt,
        lambda l, X: ablation_curve(l, X, n_features=[0, 4, _K(l)])[1],
        lambda l, X: _ref_scores(l, X, None, [0, 4, _K(l)]),
        tol=1e-8,
    )

    def beyond():
        lib, X = F.mlp_fit()
        K = _K(lib)
        want = _ref_scores(lib, X, None, [K + 1])
        return Trial(
            lambda: ablation_curve(lib, X, n_features=[K + 1])[1],
            lambda got: R.close(got, want, 1e-9, 1e-9),
            raises=Raises("n_features"),
            either=True,
        )

    add(SCORE, "ablation_curve k beyond the non-null features", beyond)
    _register_edge_ablation()
    _register_needed()


def _edge_ref(lib, graph, X, section, m, y=None):
    """Outputs with only the top ``m`` edges of ``section`` (an independent loop)."""
    src, dst = section
    bs, bd = lib.bases_[src], lib.bases_[dst]
    model = R.ref_model(lib.model)
    Xt = R._as_input(X)
    acts, out = R.activations(model, Xt, [src])
    f = acts[src]
    mu, C, Cp = (torch.as_tensor(np.asarray(a)) for a in (bs.mean, bs.kept_matrix, bs.kept_pinv))
    E = graph.edges[section]
    order = np.argsort(-E, axis=None, kind="stable")[:m]
    keep = np.zeros(E.size, bool)
    keep[order] = True
    keep = keep.reshape(E.shape)
    f_hat = (f - mu) @ C
    rows = []
    for i in range(E.shape[0]):
        z = f_hat * torch.as_tensor(keep[i], dtype=f_hat.dtype)
        with torch.no_grad():
            store = []
            with R.tap(model, src, replace=z @ Cp + mu):
                if dst == "output":
                    res = R.call(model, Xt)
                else:
                    with R.tap(model, dst, store=store):
                        res = R.call(model, Xt)
            nxt = res if dst == "output" else store[0]
        if dst == "output":
            rows.append(nxt[..., i])
        else:
            md, Cd = torch.as_tensor(bd.mean), torch.as_tensor(np.asarray(bd.kept_matrix))
            rows.append(((nxt - md) @ Cd)[..., i])
    feats = torch.stack(rows, -1)
    if dst == "output":
        final = feats
    else:
        md, Cpd = torch.as_tensor(bd.mean), torch.as_tensor(np.asarray(bd.kept_pinv))
        with torch.no_grad(), R.tap(model, dst, replace=feats @ Cpd + md):
            final = R.call(model, Xt)
    final = final.numpy()
    return R.accuracy(y, final) if y is not None else R.pooled_r2(out.numpy(), final)


def _register_edge_ablation():
    def make():
        lib, X, graph = F.mlp3_fit()
        return lib, X, graph

    for section in [("fc1", "fc2"), ("fc2", "fc3"), ("fc3", "output")]:
        for beyond in (False, True):

            def setup(section=section, beyond=beyond):
                lib, X, graph = make()
                total = graph.edges[section].size
                ms = [total + 1] if beyond else [0, 5, total]
                want = [_edge_ref(lib, graph, X, section, m) for m in ms]
                return Trial(
                    lambda: edge_ablation_curve(lib, graph, X, section=section, n_edges=ms)[1],
                    lambda got: R.close(got, want, rtol=1e-9, atol=1e-10, what="R2"),
                    watch={"model": lib.model, "X": X, "graph": graph, "estimator": lib},
                    raises=Raises("n_edges") if beyond else None,
                    either=beyond,
                )

            label = "one more than all edges" if beyond else "0, 5, all edges"
            add(
                SCORE,
                f"edge_ablation_curve {section}, {label}",
                setup,
                quick=section == ("fc2", "fc3") and not beyond,
            )

    def accuracy_setup():
        lib, X, graph = make()
        y = F.labels_of(lib, X)
        want = [_edge_ref(lib, graph, X, ("fc2", "fc3"), m, y) for m in (3, 20)]
        return Trial(
            lambda: edge_ablation_curve(lib, graph, X, y, section=["fc2", "fc3"], n_edges=[3, 20])[
                1
            ],
            lambda got: R.close(got, want, rtol=1e-12, atol=1e-12, what="accuracy"),
            watch={"graph": graph, "y": y},
        )

    add(SCORE, "edge_ablation_curve accuracy, section as a list", accuracy_setup)


def _register_needed():
    def edges_setup():
        lib, X, graph = F.mlp3_fit()
        tol = 1e-2

        def check(result):
            for section, sp in result.items():
                score = _edge_ref(lib, graph, X, section, sp.n_needed)
                base = _edge_ref(lib, graph, X, section, graph.edges[section].size)
                if abs(base - sp.baseline) > 1e-9 or abs(score - sp.score) > 1e-9:
                    return f"{section}: scores {sp.score}, {sp.baseline} vs {score}, {base}"
                if score < base - tol:
                    return f"{section}: {sp.n_needed} edges score {score} < {base} - {tol}"
                if sp.n_total != graph.edges[section].size:
                    return f"{section}: n_total {sp.n_total}"
                if sp.n_needed > 0:
                    below = _edge_ref(lib, graph, X, section, sp.n_needed - 1)
                    if below >= base - tol and _monotone(lib, graph, X, section):
                        return f"{section}: {sp.n_needed - 1} edges already within tolerance"
            return None

        return Trial(
            lambda: edges_needed(lib, graph, X, tolerance=tol),
            check,
            watch={"graph": graph, "estimator": lib},
        )

    add(SCORE, "edges_needed: within tolerance and minimal", edges_setup)

    def features_setup():
        lib, X = F.mlp_fit()
        tol = 1e-2

        def check(sp):
            K = lib.bases_[lib.layer].lambdas.size
            curve = _ref_scores(lib, X, None, range(K + 1))
            if sp.n_total != K:
                return f"n_total {sp.n_total}, expected {K}"
            if abs(sp.baseline - curve[K]) > 1e-9 or abs(sp.score - curve[sp.n_needed]) > 1e-9:
                return "scores differ from the reference curve"
            first = int(np.argmax(curve >= curve[K] - tol))
            if np.all(np.diff(curve) >= -1e-12) and sp.n_needed != first:
                return f"n_needed {sp.n_needed}, the monotone curve says {first}"
            return None

        return Trial(lambda: features_needed(lib, X, tolerance=tol), check)

    add(SCORE, "features_needed: the reference curve's first k", features_setup)

    def sparsest_setup():
        cv = {
            "mean_test_faithfulness": np.array([0.99, 0.97, 0.94, 0.999, np.nan]),
            "mean_test_n_features": np.array([-5.0, -3.0, -1.0, -8.0, -2.0]),
        }
        refit = sparsest_faithful(0.95)
        return Trial(
            lambda: refit(cv),
            lambda got: None if int(got) == 1 else f"chose {got}",
            watch={"cv_results": cv},
        )

    add(SCORE, "sparsest_faithful picks the fewest features above the floor", sparsest_setup)

    def sparsest_none():
        cv = {
            "mean_test_faithfulness": np.array([0.5, 0.6]),
            "mean_test_n_features": np.array([-1.0, -2.0]),
        }
        return Trial(
            lambda: sparsest_faithful(0.95)(cv),
            raises=Raises(r"0\.95|floor"),
            either=True,
            check=lambda got: None if int(got) == 1 else f"chose {got}",
        )

    add(SCORE, "sparsest_faithful with no candidate above the floor", sparsest_none)


def _monotone(lib, graph, X, section):
    n = graph.edges[section].size
    curve = [_edge_ref(lib, graph, X, section, m) for m in range(0, n + 1, max(1, n // 8))]
    return bool(np.all(np.diff(curve) >= -1e-12))


# -- scikit-learn integration ----------------------------------------------------------------


def _sk(name, setup, quick=False):
    add(SK, name, setup, quick=quick)


def register_sklearn():
    def clone_unfitted():
        lib, X = F.mlp_fit()
        c = clone(lib)

        def check(c):
            if c.model is not lib.model:
                return "clone copied the model"
            if hasattr(c, "bases_"):
                return "clone is fitted"
            return None

        return Trial(lambda: c, check, watch={"estimator": lib})

    _sk("clone shares the model and is unfitted", clone_unfitted, quick=True)

    def clone_fit_independent():
        lib, X = F.mlp_fit()
        before = lib.transform(X)

        def action():
            clone(lib).set_params(n_components=2).fit(X[:50])
            return lib.transform(X)

        return Trial(
            action,
            lambda got: R.close(got, before, 0, 0, what="original transform"),
            watch={"estimator": lib, "model": lib.model},
        )

    _sk("fitting a clone leaves the original", clone_fit_independent)

    def pickle_round():
        lib, X = F.mlp_fit()
        want = lib.transform(X)
        return Trial(
            lambda: pickle.loads(pickle.dumps(lib)).transform(X),
            lambda got: R.close(got, want, 0, 0, what="transform"),
            watch={"estimator": lib},
        )

    _sk("pickle round trip: identical transform", pickle_round, quick=True)

    def pickle_gpt():
        lib, ids = F.gpt2_fit()
        want = lib.transform(ids)
        return Trial(
            lambda: pickle.loads(pickle.dumps(lib)).transform(ids),
            lambda got: R.close(got, want, 0, 0, what="transform"),
            watch={"estimator": lib},
        )

    _sk("pickle round trip of a GPT-2 fit", pickle_gpt)

    def pickle_unfitted():
        lib = LIBTransformer(M.tanh_mlp(), "fc2")
        return Trial(
            lambda: pickle.loads(pickle.dumps(lib)).fit(M.mlp_data()).n_components_,
            lambda got: None if got > 0 else "no features",
        )

    _sk("pickle of an unfitted estimator, then fit", pickle_unfitted)

    def deepcopy_fit():
        lib, X = F.mlp_fit()
        want = lib.score(X)
        return Trial(
            lambda: copy.deepcopy(lib).score(X), lambda got: R.close(got, want, 0, 0, what="score")
        )

    _sk("deepcopy of a fitted estimator scores the same", deepcopy_fit)

    def params_roundtrip():
        lib = LIBTransformer(M.tanh_mlp(), "fc2", downstream_layers=["fc3"], n_components=3)
        params = lib.get_params()

        def action():
            other = LIBTransformer(**params)
            return other.get_params()

        def check(got):
            return None if got == params else "get_params differ after a round trip"

        return Trial(action, check)

    _sk("LIBTransformer(**get_params()) round trip", params_roundtrip)

    def set_params_after_fit(param, value, should_refuse):
        def setup():
            lib, X = F.mlp_fit()
            lib.set_params(**{param: value})
            if should_refuse:
                return Trial(
                    lambda: lib.transform(X),
                    raises=Raises(param, types=(NotFittedError, ValueError)),
                )
            want = _features(lib, X) if param != "whiten" else None
            return Trial(
                lambda: lib.transform(X),
                (lambda got: R.close(got, want, 1e-10, 1e-12)) if want is not None else None,
            )

        return setup

    for param, value, refuse in [
        ("layer", "fc3", True),
        ("downstream_layers", [], True),
        ("capture", "output", True),
        ("dtype", "float32", True),
        ("forward_kwargs", {"unused": 1}, True),
        ("feature_axis", -1, True),
        ("output", 0, True),
        ("batch_size", 5, False),
        ("verbose", True, False),
        ("n_components", 1, False),
        ("truncation_threshold", 0.5, False),
        ("integration", "trapezoidal", False),
        ("basis", "pca", False),
        ("center", False, False),
    ]:
        _sk(
            f"set_params({param}=...) after fit, then transform",
            set_params_after_fit(param, value, refuse),
        )

    def set_params_model():
        lib, X = F.mlp_fit()
        lib.set_params(model=M.tanh_mlp(seed=3))
        return Trial(
            lambda: lib.transform(X),
            stale_ok=True,
            raises=Raises("model"),
            either=True,
            warns=StaleBasisWarning,
        )

    _sk("set_params(model=another model) after fit warns or refuses", set_params_model)

    def pipeline():
        from sklearn.linear_model import LogisticRegression

        model, X = M.tanh_mlp(), M.mlp_data()
        y = (X[:, 0] > 0).astype(int)
        pipe = Pipeline([("lib", LIBTransformer(model, "fc2")), ("clf", LogisticRegression())])

        def action():
            pipe.fit(X, y)
            return pipe.named_steps["lib"].transform(X)

        def check(Z):
            lib = LIBTransformer(model, "fc2").fit(X)
            return R.close(Z, lib.transform(X), 1e-12, 1e-12)

        return Trial(action, check, watch={"model": model, "X": X, "y": y})

    _sk("Pipeline fit: the step equals a fit alone", pipeline)

    def grid():
        model, X = M.tanh_mlp(), M.mlp_data()
        search = GridSearchCV(
            LIBTransformer(model, "fc2"),
            {"truncation_threshold": [0.5, 1e-3]},
            scoring={"faithfulness": faithfulness_scorer, "n_features": n_features_scorer},
            refit=sparsest_faithful(0.0),
            cv=2,
        )

        def check(s):
            res = s.cv_results_
            best = s.best_index_
            nf = res["mean_test_n_features"]
            if nf[best] != nf.max():
                return f"refit chose {best} of {nf}"
            if s.best_estimator_.model is not model:
                return "best estimator holds a copy of the model"
            return None

        return Trial(lambda: search.fit(X), check, watch={"model": model, "X": X})

    _sk("GridSearchCV with the scorers and sparsest_faithful", grid, quick=True)

    def grid_threads():
        model, X = M.tanh_mlp(), M.mlp_data()
        search = GridSearchCV(
            LIBTransformer(model, "fc2"),
            {"n_components": [1, 2, 3]},
            scoring=faithfulness_scorer,
            cv=2,
            n_jobs=2,
        )

        def action():
            from joblib import parallel_backend

            with parallel_backend("threading"):
                return search.fit(X).cv_results_["mean_test_score"]

        def check(got):
            want = []
            for n in (1, 2, 3):
                s = [
                    LIBTransformer(model, "fc2", n_components=n).fit(X[tr]).score(X[te])
                    for tr, te in [(slice(60, None), slice(0, 60)), (slice(0, 60), slice(60, None))]
                ]
                want.append(np.mean(s))
            return R.close(got, want, 1e-9, 1e-12, what="cv scores")

        return Trial(action, check, watch={"model": model})

    _sk("GridSearchCV n_jobs=2 (threads): the sequential scores", grid_threads)

    def feature_names():
        lib, X = F.mlp_fit()
        return Trial(
            lambda: list(lib.get_feature_names_out()),
            lambda got: (
                None
                if got == [f"libtransformer{j}" for j in range(lib.n_components_)]
                else str(got)
            ),
        )

    _sk("get_feature_names_out", feature_names)

    def repr_case():
        lib = LIBTransformer(M.tanh_mlp(), "fc2", n_components=3)
        return Trial(lambda: repr(lib), lambda got: None if "n_components=3" in got else got)

    _sk("repr shows the changed parameters", repr_case)

    def unfitted(method):
        def setup():
            lib = LIBTransformer(M.tanh_mlp(), "fc2")
            X = M.mlp_data(10)
            call = {
                "transform": lambda: lib.transform(X),
                "inverse_transform": lambda: lib.inverse_transform(np.zeros((2, 3))),
                "transform_tokens": lambda: lib.transform_tokens(X),
                "inverse_transform_tokens": lambda: lib.inverse_transform_tokens(np.zeros((2, 3))),
                "transform_activations": lambda: lib.transform_activations(np.zeros((2, 8))),
                "score": lambda: lib.score(X),
                "interaction_graph": lambda: lib.interaction_graph(X),
                "save": lambda: lib.save(os.path.join(temp_dir(), "unfitted.npz")),
                "get_feature_names_out": lambda: lib.get_feature_names_out(),
                "ablation_curve": lambda: ablation_curve(lib, X, n_features=[1]),
                "features_needed": lambda: features_needed(lib, X),
                "faithfulness_scorer": lambda: faithfulness_scorer(lib, X),
                "SpectrumDisplay": lambda: SpectrumDisplay.from_estimator(lib),
                "ActivationTransformer.transform": lambda: ActivationTransformer(
                    M.tanh_mlp(), "fc2"
                ).transform(X),
            }[method]
            return Trial(call, raises=Raises("not fitted|fit", types=(NotFittedError,)))

        return setup

    for method in [
        "transform",
        "inverse_transform",
        "transform_tokens",
        "inverse_transform_tokens",
        "transform_activations",
        "score",
        "interaction_graph",
        "save",
        "get_feature_names_out",
        "ablation_curve",
        "features_needed",
        "faithfulness_scorer",
        "SpectrumDisplay",
        "ActivationTransformer.transform",
    ]:
        _sk(
            f"unfitted: {method} raises NotFittedError",
            unfitted(method),
            quick=method == "transform",
        )


# -- InteractionGraph -------------------------------------------------------------------------


def _graph():
    lib, X, graph = F.mlp3_fit()
    return graph


def _small_graph():
    rng = np.random.default_rng(0)
    nodes = ["a", "b", "output"]
    lambdas = {"a": np.array([3.0, 2.0, 1.0]), "b": np.array([2.0, 1.0]), "output": np.ones(2)}
    edges = {("a", "b"): rng.random((2, 3)), ("b", "output"): rng.random((2, 2))}
    return nodes, lambdas, edges


def register_graph():
    def construct_keeps_inputs():
        nodes, lambdas, edges = _small_graph()
        return Trial(
            lambda: InteractionGraph(nodes, lambdas, edges, {"k": [1, 2]}),
            lambda g: R.close(g.edges[("a", "b")], edges[("a", "b")], 0, 0),
            watch={"nodes": nodes, "lambdas": lambdas, "edges": edges},
        )

    add(GRAPH, "construct: caller's arrays untouched", construct_keeps_inputs, quick=True)

    def construct_ints():
        nodes, lambdas, edges = _small_graph()
        edges = {k: (v * 10).astype(int) for k, v in edges.items()}
        return Trial(
            lambda: InteractionGraph(nodes, lambdas, edges),
            lambda g: None if g.edges[("a", "b")].dtype.kind == "f" else "not float",
            watch={"edges": edges},
        )

    add(GRAPH, "construct: integer edges become float", construct_ints)

    def construct_lists():
        nodes, lambdas, edges = _small_graph()
        edges = {k: v.tolist() for k, v in edges.items()}
        lambdas = {k: v.tolist() for k, v in lambdas.items()}
        return Trial(
            lambda: InteractionGraph(tuple(nodes), lambdas, edges),
            lambda g: None if g.nodes == nodes else str(g.nodes),
        )

    add(GRAPH, "construct: lists and a tuple of nodes", construct_lists)

    def aliasing():
        nodes, lambdas, edges = _small_graph()
        g = InteractionGraph(nodes, lambdas, edges)

        def action():
            edges[("a", "b")][0, 0] = -5.0  # the caller edits their own array afterwards
            return g.to_networkx()

        return Trial(
            action,
            raises=Raises("negative|>= 0"),
            either=True,
            check=lambda G: (
                None if all(d["weight"] >= 0 for *_, d in G.edges(data=True)) else "negative weight"
            ),
        )

    add(GRAPH, "caller edits the arrays after construction", aliasing)

    bad = {
        "nodes a str": (lambda n, l, e: ("abc", l, e), "nodes"),
        "nodes empty": (lambda n, l, e: ([], {}, {}), "nodes"),
        "duplicate nodes": (lambda n, l, e: (["a", "a", "output"], l, e), "distinct"),
        "a node not a str": (lambda n, l, e: (["a", 3, "output"], l, e), "str"),
        "lambdas missing a node": (
            lambda n, l, e: (n, {"a": l["a"], "b": l["b"]}, e),
            "output|keys",
        ),
        "lambdas with an extra node": (
            lambda n, l, e: (n, {**l, "z": np.ones(1)}, e),
            "z|keys|unexpected",
        ),
        "edges missing a section": (
            lambda n, l, e: (n, l, {("a", "b"): e[("a", "b")]}),
            "output|keys|missing",
        ),
        "edges of the wrong shape": (
            lambda n, l, e: (n, l, {**e, ("a", "b"): np.ones((3, 2))}),
            "shape",
        ),
        "edges NaN": (
            lambda n, l, e: (n, l, {**e, ("a", "b"): np.full((2, 3), np.nan)}),
            "nan|finite",
        ),
        "edges inf": (
            lambda n, l, e: (n, l, {**e, ("a", "b"): np.full((2, 3), np.inf)}),
            "inf|finite",
        ),
        "edges negative": (
            lambda n, l, e: (n, l, {**e, ("a", "b"): -np.ones((2, 3))}),
            "negative|>= 0",
        ),
        "edges complex": (
            lambda n, l, e: (n, l, {**e, ("a", "b"): np.ones((2, 3)) * 1j}),
            "complex|dtype|float|real",
        ),
        "edges strings": (
            lambda n, l, e: (n, l, {**e, ("a", "b"): np.full((2, 3), "x")}),
            "dtype|float|str|numeric",
        ),
        "edges 3-D": (
            lambda n, l, e: (n, l, {**e, ("a", "b"): np.ones((2, 3, 1))}),
            "dimension|shape|2",
        ),
        "lambdas 2-D": (lambda n, l, e: (n, {**l, "a": np.ones((3, 1))}, e), "dimension|shape|1"),
        "lambdas negative": (lambda n, l, e: (n, {**l, "a": -np.ones(3)}, e), "negative|>= 0"),
        "edges as a list not a dict": (
            lambda n, l, e: (n, l, list(e.values())),
            "edges|dict|mapping",
        ),
        "section key as a list": (
            lambda n, l, e: (n, l, {("a", "b"): e[("a", "b")], "b,output": e[("b", "output")]}),
            "keys|output",
        ),
        "edges object array": (
            lambda n, l, e: (n, l, {**e, ("a", "b"): np.ones((2, 3), dtype=object)}),
            "dtype|float|object",
        ),
        "edges bool": (
            lambda n, l, e: (n, l, {**e, ("a", "b"): np.ones((2, 3), dtype=bool)}),
            "dtype|float|bool",
        ),
        "edges None": (lambda n, l, e: (n, l, {**e, ("a", "b"): None}), "None|array|dtype"),
    }
    for name, (edit, match) in bad.items():

        def setup(edit=edit, match=match):
            args = edit(*_small_graph())
            return Trial(lambda: InteractionGraph(*args), raises=Raises(match))

        add(GRAPH, f"construct refuses: {name}", setup, quick=name == "edges NaN")

    def info_not_dict():
        return Trial(lambda: InteractionGraph(*_small_graph(), info=[1]), raises=Raises("info"))

    add(GRAPH, "construct refuses: info not a dict", info_not_dict)

    def networkx_case():
        g = _graph()

        def check(G):
            want = sum(int((E > 0).sum()) for E in g.edges.values())
            if G.number_of_edges() != want:
                return f"{G.number_of_edges()} edges, expected {want}"
            for (src, dst), E in g.edges.items():
                i, j = np.unravel_index(np.argmax(E), E.shape)
                w = G.edges[(src, int(j)), (dst, int(i))]["weight"]
                if w != E[i, j]:
                    return f"weight of the strongest {src}->{dst} edge {w} != {E[i, j]}"
            n = sum(len(v) for v in g.lambdas.values())
            if G.number_of_nodes() != n:
                return f"{G.number_of_nodes()} nodes, expected {n}"
            return None

        return Trial(g.to_networkx, check, watch={"graph": g})

    add(GRAPH, "to_networkx: every nonzero edge, weights E[i, j]", networkx_case, quick=True)

    def modules_case(resolution):
        def setup():
            g = _graph()

            def check(mods):
                part = {}
                for layer, labels in mods.labels.items():
                    if len(labels) != len(g.lambdas[layer]):
                        return f"{layer}: {len(labels)} labels for {len(g.lambdas[layer])}"
                    for j, m in enumerate(labels):
                        part.setdefault(int(m), set()).add((layer, j))
                U = g.to_networkx().to_undirected()
                Q = nx.community.modularity(
                    U, list(part.values()), weight="weight", resolution=resolution
                )
                if abs(Q - mods.modularity) > 1e-9:
                    return f"modularity {mods.modularity}, networkx says {Q}"
                sizes = [len(part[m]) for m in sorted(part)]
                if sizes != sorted(sizes, reverse=True):
                    return f"modules not numbered by decreasing size: {sizes}"
                return None

            return Trial(
                lambda: g.modules(resolution=resolution, random_state=0), check, watch={"graph": g}
            )

        return setup

    for res in (0.5, 1.0, 2.0):
        add(
            GRAPH,
            f"modules(resolution={res}): modularity as networkx computes it",
            modules_case(res),
        )

    def modules_seeded():
        g = _graph()
        first = g.modules(random_state=3)
        return Trial(
            lambda: g.modules(random_state=3),
            lambda m: (
                None
                if all(np.array_equal(m.labels[k], first.labels[k]) for k in m.labels)
                else "another partition"
            ),
        )

    add(GRAPH, "modules: the same seed, the same modules", modules_seeded)

    def members_case():
        g = _graph()
        mods = g.modules(random_state=0)

        def check(members):
            for layer, idx in members.items():
                if not np.all(mods.labels[layer][idx] == 0):
                    return f"{layer}: members {idx} not in module 0"
            return None

        return Trial(lambda: mods.members(0), check)

    add(GRAPH, "GraphModules.members", members_case)

    for res in (0, -1.0, float("nan"), float("inf"), "1", True, None):

        def setup(res=res):
            g = _graph()
            return Trial(lambda: g.modules(resolution=res), raises=Raises("resolution"))

        add(GRAPH, f"modules refuses resolution={res!r}", setup)

    def zero_graph():
        nodes, lambdas, edges = _small_graph()
        edges = {k: np.zeros_like(v) for k, v in edges.items()}
        g = InteractionGraph(nodes, lambdas, edges)
        return Trial(lambda: g.modules(), raises=Raises("edge|zero"))

    add(GRAPH, "modules of a graph without a nonzero edge", zero_graph)

    def top_edges_case(n):
        def setup():
            g = _graph()
            E = g.edges[("fc2", "fc3")]
            order = np.argsort(-E, axis=None, kind="stable")[:n]
            want = np.zeros(E.size, bool)
            want[order] = True
            return Trial(
                lambda: g.top_edges(("fc2", "fc3"), n),
                lambda m: None if np.array_equal(m, want.reshape(E.shape)) else "mask",
            )

        return setup

    for n in (0, 1, 7, 64, 10**6):
        add(GRAPH, f"top_edges({n})", top_edges_case(n))
    for n, match in [(-1, "n_edges"), (2.5, "n_edges"), (True, "n_edges"), ("3", "n_edges")]:

        def setup(n=n, match=match):
            g = _graph()
            return Trial(lambda: g.top_edges(("fc2", "fc3"), n), raises=Raises(match))

        add(GRAPH, f"top_edges refuses {n!r}", setup)

    def top_edges_bad_section():
        g = _graph()
        return Trial(lambda: g.top_edges(("fc3", "fc2"), 3), raises=Raises("section"))

    add(GRAPH, "top_edges refuses a reversed section", top_edges_bad_section)

    def summary_case(labels):
        def setup():
            g = _graph()
            return Trial(
                lambda: g.summary(top=3, labels=labels),
                lambda s: None if isinstance(s, str) and "fc1" in s else repr(s)[:80],
                watch={"graph": g, "labels": labels},
            )

        return setup

    add(GRAPH, "summary()", summary_case(None))
    add(GRAPH, "summary(labels=a vocabulary list)", summary_case(["zero", "one", "two"]))

    def summary_short_labels():
        g = _graph()
        return Trial(
            lambda: g.summary(labels=["only"]),
            raises=Raises("labels"),
            either=True,
            check=lambda s: None if isinstance(s, str) else "no text",
        )

    add(GRAPH, "summary(labels shorter than the output)", summary_short_labels)

    for top in (-1, 2.5, "3"):

        def setup(top=top):
            g = _graph()
            return Trial(lambda: g.summary(top=top), raises=Raises("top"))

        add(GRAPH, f"summary refuses top={top!r}", setup)

    def edited_to_nan(method):
        def setup():
            g = _graph()
            g.edges[("fc1", "fc2")][0, 0] = np.nan
            call = {
                "to_networkx": g.to_networkx,
                "modules": g.modules,
                "save": lambda: g.save(os.path.join(temp_dir(), "nan_graph.npz")),
                "plot": lambda: g.plot(),
                "summary": g.summary,
            }[method]
            return Trial(call, raises=Raises("nan|finite"))

        return setup

    for method in ("to_networkx", "modules", "save", "plot", "summary"):
        add(GRAPH, f"{method} of a graph edited to hold NaN", edited_to_nan(method))


# -- displays ----------------------------------------------------------------------------


def _close_figures(result):
    import matplotlib.pyplot as plt

    plt.close("all")


def register_displays():
    def spectrum():
        lib, X = F.mlp_fit()
        pca = LIBTransformer(lib.model, "fc2", basis="pca").fit(X)

        def check(d):
            lines = list(d.lines_.values())
            y0, y1 = lines[0].get_ydata(), lines[1].get_ydata()
            problem = R.close(y0, lib.lambdas_ / lib.lambdas_.max(), 1e-12, 0, what="LIB line")
            problem = problem or R.close(
                y1, pca.lambdas_ / pca.lambdas_.max(), 1e-12, 0, what="PCA line"
            )
            _close_figures(d)
            return problem

        return Trial(
            lambda: SpectrumDisplay.from_estimator(lib, pca), check, watch={"estimator": lib}
        )

    add(DISPLAY, "SpectrumDisplay: lines are Lambda / max", spectrum, quick=True)

    def spectrum_sklearn_pca():
        from sklearn.decomposition import PCA

        lib, X = F.mlp_fit()
        acts = _acts(lib, X)[:, 0]
        pca = PCA().fit(acts)

        def check(d):
            y = list(d.lines_.values())[1].get_ydata()
            want = pca.explained_variance_[pca.explained_variance_ > 0]
            want = want / want.max()
            _close_figures(d)
            return R.close(y[: len(want)], want, 1e-9, 0, what="PCA line")

        return Trial(lambda: SpectrumDisplay.from_estimator(lib, pca, normalize=True), check)

    add(DISPLAY, "SpectrumDisplay with a plain sklearn PCA", spectrum_sklearn_pca)

    def spectrum_layer():
        lib, X, _ = F.mlp3_fit()

        def check(d):
            y = list(d.lines_.values())[0].get_ydata()
            b = lib.bases_["fc3"]
            want = b.lambdas[: b.n_components]
            _close_figures(d)
            return R.close(y, want, 1e-12, 0, what="fc3 line")

        return Trial(
            lambda: SpectrumDisplay.from_estimator(lib, layer="fc3", normalize=False), check
        )

    add(DISPLAY, "SpectrumDisplay(layer=downstream, normalize=False)", spectrum_layer)

    for bad, match in [("nope", "layer|nope"), (3, "layer")]:

        def setup(bad=bad, match=match):
            lib, X = F.mlp_fit()
            return Trial(
                lambda: SpectrumDisplay.from_estimator(lib, layer=bad), raises=Raises(match)
            )

        add(DISPLAY, f"SpectrumDisplay refuses layer={bad!r}", setup)

    def spectrum_zero():
        d = SpectrumDisplay({"z": np.zeros(3)})
        return Trial(d.plot, raises=Raises("positive|z"))

    add(DISPLAY, "SpectrumDisplay of an all-zero spectrum", spectrum_zero)

    def ablation_display():
        lib, X = F.mlp_fit()
        ks = [0, 1, 3]
        want = _ref_scores(lib, X, None, ks)

        def check(d):
            y = d.lines_[next(iter(d.lines_))].get_ydata()
            _close_figures(d)
            return R.close(y, want, 1e-9, 1e-12, what="curve")

        return Trial(
            lambda: AblationCurveDisplay.from_estimator(lib, X, n_features=ks),
            check,
            watch={"X": X},
        )

    add(
        DISPLAY,
        "AblationCurveDisplay.from_estimator: the reference curve",
        ablation_display,
        quick=True,
    )

    def two_on_one_axis():
        lib, X = F.mlp_fit()
        pca = LIBTransformer(lib.model, "fc2", basis="pca").fit(X)

        def action():
            d = AblationCurveDisplay.from_estimator(lib, X, n_features=[0, 2])
            AblationCurveDisplay.from_estimator(pca, X, n_features=[0, 2], ax=d.ax_)
            return d

        def check(d):
            n = len(d.ax_.get_lines())
            _close_figures(d)
            return None if n == 2 else f"{n} lines on the shared axes"

        return Trial(action, check)

    add(DISPLAY, "two estimators on one axis", two_on_one_axis)

    curves_bad = {
        "lengths differ": ({"a": ([0, 1], [0.5])}, "2 feature counts|scores"),
        "negative counts": ({"a": ([-1, 1], [0.5, 0.6])}, ">= 0|counts"),
        "empty dict": ({}, "curves|empty"),
        "not a pair": ({"a": [0, 1, 2]}, "pair"),
        "fractional counts": ({"a": ([0.5, 1], [0.5, 0.6])}, "whole"),
        "NaN scores": ({"a": ([0, 1], [np.nan, 0.6])}, "nan|finite|score"),
    }
    for name, (curves, match) in curves_bad.items():

        def setup(curves=curves, match=match, name=name):
            return Trial(
                lambda: AblationCurveDisplay.from_curves(curves),
                raises=Raises(match),
                either=name == "NaN scores",
                check=_close_figures,
            )

        add(DISPLAY, f"from_curves: {name}", setup)

    for baseline in (np.nan, "0.9", [0.9]):

        def setup(baseline=baseline):
            return Trial(
                lambda: AblationCurveDisplay.from_curves(
                    {"a": ([0, 1], [0.1, 0.2])}, baseline=baseline
                ),
                raises=Raises("baseline"),
            )

        add(DISPLAY, f"from_curves refuses baseline={baseline!r}", setup)

    def graph_display(top, max_features):
        def setup():
            g = _graph()

            def check(d):
                for (src, dst), (i, j, share) in d.edges_shown_.items():
                    E = g.edges[(src, dst)]
                    if len(i) > min(top, E.size):
                        return f"{len(i)} edges drawn for top_edges={top}"
                    if len(i) and abs(share.max() - 1.0) > 1e-12:
                        return f"largest share {share.max()}"
                    if len(i) and not np.allclose(share, E[i, j] / E[i, j].max()):
                        return "shares are not E / max E of the drawn edges"
                for layer, n in d.features_shown_.items():
                    if n > max(max_features, 0) + 2 * len(g.sections):
                        return f"{layer}: {n} features for max_features={max_features}"
                _close_figures(d)
                return None

            return Trial(
                lambda: InteractionGraphDisplay.from_graph(
                    g, top_edges=top, max_features=max_features
                ),
                check,
                watch={"graph": g},
                raises=Raises("top_edges|max_features") if 0 in (top, max_features) else None,
                either=True,
            )

        return setup

    for top, mf in [(200, 30), (5, 3), (0, 30), (1, 1), (10**6, 10**6)]:
        add(
            DISPLAY,
            f"InteractionGraphDisplay top_edges={top} max_features={mf}",
            graph_display(top, mf),
            quick=top == 5,
        )
    for kw, match in [
        ({"top_edges": -1}, "top_edges"),
        ({"max_features": -2}, "max_features"),
        ({"top_edges": 2.5}, "top_edges"),
        ({"cmap": "no-such-map"}, "cmap"),
        ({"labels": {"nope": ["a"]}}, "nope|labels"),
        ({"top_edges": True}, "top_edges"),
    ]:

        def setup(kw=kw, match=match):
            g = _graph()
            return Trial(lambda: InteractionGraphDisplay.from_graph(g, **kw), raises=Raises(match))

        add(DISPLAY, f"InteractionGraphDisplay refuses {kw}", setup)

    def plot_edges_needed():
        from sklearn_lib import Sparsity
        from sklearn_lib.plotting import plot_edges_needed as plot

        results = {
            "LIB": {("a", "b"): Sparsity(3, 10, 0.9, 0.91)},
            "PCA": {("a", "b"): Sparsity(7, 10, 0.9, 0.91)},
        }
        return Trial(lambda: plot(results), _close_figures, watch={"results": results})

    add(DISPLAY, "plot_edges_needed", plot_edges_needed)


# -- public functions ------------------------------------------------------------------------


def register_functions():
    for method, n in [
        ("gradient", 0),
        ("trapezoidal", 1),
        ("trapezoidal", 5),
        ("gauss-legendre", 0),
        ("gauss-legendre", 3),
        ("trapezoidal", 200),
    ]:

        def setup(method=method, n=n):
            want = R.integration_rule(method, n)
            if method == "gauss-legendre" and n == 0:
                return Trial(lambda: integration_rule(method, n), raises=Raises("n_intervals"))
            return Trial(
                lambda: integration_rule(method, n),
                lambda got: (
                    R.close(got[0], want[0], 1e-14, 1e-15, what="points")
                    or R.close(got[1], want[1], 1e-14, 1e-15, what="weights")
                ),
            )

        add(FUNCS, f"integration_rule({method!r}, {n})", setup, quick=n == 5)
    for method, n, match in [
        ("gradient", 2, "n_intervals"),
        ("trapezoidal", 0, "n_intervals"),
        ("trapezoidal", -3, "n_intervals"),
        ("simpson", 2, "simpson"),
        ("trapezoidal", 2.5, "n_intervals"),
        ("trapezoidal", True, "n_intervals"),
        ("trapezoidal", "4", "n_intervals"),
        (None, 1, "None|integration|method"),
    ]:

        def setup(method=method, n=n, match=match):
            return Trial(lambda: integration_rule(method, n), raises=Raises(match))

        add(FUNCS, f"integration_rule refuses ({method!r}, {n!r})", setup)

    def huge_rule():
        return Trial(
            lambda: integration_rule("trapezoidal", 10**9),
            either=True,
            raises=Raises("n_intervals"),
            check=lambda got: None,
            mem_mb=1024,
        )

    add(FUNCS, "integration_rule('trapezoidal', 10**9)", huge_rule, isolate=True, timeout=60)

    def huge_fit():
        lib = LIBTransformer(M.tanh_mlp(), "fc2", integration="gauss-legendre", n_intervals=10**8)
        return Trial(
            lambda: lib.fit(M.mlp_data(20)),
            raises=Raises("n_intervals"),
            either=True,
            check=lambda got: None,
            mem_mb=1024,
        )

    add(FUNCS, "fit with n_intervals=10**8", huge_fit, isolate=True, timeout=60)

    def nodebasis_repr():
        lib, X = F.mlp_fit()
        b = lib.bases_["fc2"]
        return Trial(
            lambda: (repr(b), b.kept_matrix.shape, b.kept_pinv.shape, b.n_features),
            lambda got: (
                None
                if got[1] == (8, b.n_components) and got[2] == (b.n_components, 8) and got[3] == 8
                else str(got)
            ),
        )

    add(FUNCS, "NodeBasis properties", nodebasis_repr)

    def identity_output():
        lib, X = F.mlp_fit()
        b = lib.bases_["output"]
        return Trial(
            lambda: np.asarray(b.matrix) @ np.ones(3),
            lambda got: R.close(got, np.ones(3), 0, 0, what="identity @ 1"),
        )

    add(FUNCS, "the identity output basis acts as an identity", identity_output)

    def warnings_public():
        from sklearn_lib import FlattenedPositionsWarning, StaleBasisWarning

        return Trial(
            lambda: (
                issubclass(StaleBasisWarning, UserWarning),
                issubclass(FlattenedPositionsWarning, UserWarning),
            ),
            lambda got: None if all(got) else "not UserWarnings",
        )

    add(FUNCS, "the warnings are UserWarnings", warnings_public)
