"""Results checked against independent computations.

- ``brute force``: every node's Lambda, the features, their covariance, the
  reconstruction and the edges against :func:`reference.brute_lib` /
  :func:`reference.brute_edges` (per-sample Jacobians, LIB-SPEC step by step);
- ``auto vs autograd``: ``jacobian="auto"`` (closed forms, traced routes)
  against ``jacobian="autograd"``, bases and edges;
- ``pca``: ``basis="pca"`` and ``ActivationTransformer`` against
  ``sklearn.decomposition.PCA`` and plain hooks;
- ``padding``: padded, left-padded and dynamically padded batches against
  the unpadded sequences.
"""

import copy
import warnings

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline

from sklearn_lib import ActivationTransformer, LIBTransformer, ablation_curve

from . import fixtures as F
from . import models as M
from . import reference as R
from .harness import Trial, add

BRUTE = "results: brute force"
AUTO = "results: auto vs autograd"
PCA_GROUP = "results: PCA and activations"
PAD = "results: padding"


def expected_k(lams, n_components):
    if n_components is None:
        return len(lams)
    if isinstance(n_components, float):
        ratio = np.cumsum(lams) / lams.sum()
        return int(np.searchsorted(ratio, n_components) + 1)
    return min(n_components, len(lams))


def check_fit(lib, ref, X, nodes, *, rtol=1e-7, whiten=False, n_components=None):
    """None if ``lib`` matches the brute-force ``ref`` on ``X``, else the reason."""
    for node in nodes:
        b = lib.bases_[node]
        lams = ref[node]["lambdas"]
        if node == nodes[0]:
            lams = lams[: expected_k(lams, n_components)]
            got = lib.lambdas_
        else:
            got = b.lambdas[: b.n_components]
        problem = R.compare_lambdas(got, lams, rtol)
        if problem:
            return f"{node}: {problem}"
    main = ref[nodes[0]]
    k = lib.n_components_
    lam = main["lambdas"][:k]
    acts = main["acts"]  # (N, P, d)
    Z = np.asarray(lib.transform(X)).reshape(-1, k)
    Zr = ((acts - main["mean"]) @ main["C"][:, :k]).reshape(-1, k)
    if whiten:
        Zr = Zr / np.sqrt(lam)
    problem = R.compare_features(Z, Zr, lam, rtol=max(rtol * 10, 1e-6))
    if problem:
        return f"transform: {problem}"
    cov = Z.T @ Z / len(Z)
    target = np.eye(k) if whiten else np.diag(lam)
    err = np.abs(cov - target).max() / max(np.abs(target).max(), 1e-300)
    if err > max(rtol * 10, 1e-6):
        return f"E[f_hat^T f_hat] differs from diag(Lambda) by {err:.2e}"
    back = np.asarray(lib.inverse_transform(lib.transform(X)))
    expect = (acts - main["mean"]) @ main["C"][:, :k] @ main["Cpinv"][:k] + main["mean"]
    return R.close(
        back.reshape(expect.shape),
        expect,
        rtol=max(rtol, 1e-7),
        atol=max(rtol, 1e-9) * np.abs(expect).max(),
        what="inverse_transform(transform(X))",
    )


def _brute(
    name,
    make,
    X_fn,
    nodes,
    *,
    params=None,
    ref=None,
    rtol=1e-7,
    quick=False,
    edges=(),
    whiten=False,
    timeout=120.0,
):
    params = dict(params or {})
    ref_kw = dict(ref or {})

    def setup():
        model, X = make(), X_fn()
        est = LIBTransformer(model, nodes[0], downstream_layers=nodes[1:], **params)
        expected = R.brute_lib(model, X, nodes, **ref_kw)
        rule = ref_kw.get("rule", ((1.0,), (1.0,)))
        kw = {k: v for k, v in ref_kw.items() if k in ("capture", "output", "kwargs")}
        brute_edges = {s: R.brute_edges(model, X, *s, expected, rule=rule, **kw) for s in edges}

        def action():
            est.fit(X)
            return est, (est.interaction_graph(X) if edges else None)

        def check(result):
            lib, graph = result
            problem = check_fit(
                lib,
                expected,
                X,
                nodes,
                rtol=rtol,
                whiten=whiten,
                n_components=params.get("n_components"),
            )
            if problem:
                return problem
            for s, E in brute_edges.items():
                problem = R.close(
                    graph.edges[s], E, rtol=max(rtol, 1e-7), atol=1e-9 * E.max(), what=f"edges {s}"
                )
                if problem:
                    return problem
            return None

        return Trial(action, check, watch={"model": model, "X": X})

    add(BRUTE, name, setup, quick=quick, timeout=timeout)


MLP3 = ["fc1", "fc2", "fc3"]
ALL_MLP_EDGES = [("fc1", "fc2"), ("fc2", "fc3"), ("fc3", "output")]


def register_brute():
    mlp, X = M.tanh_mlp, lambda: M.mlp_data(80)
    _brute("tanh MLP, 3 nodes, defaults, with edges", mlp, X, MLP3, edges=ALL_MLP_EDGES, quick=True)
    _brute(
        "center=False",
        mlp,
        X,
        MLP3,
        params=dict(center=False),
        ref=dict(center=False),
        edges=[("fc1", "fc2")],
    )
    for rule, n in [("trapezoidal", 3), ("gauss-legendre", 2), ("trapezoidal", 1)]:
        _brute(
            f"integration={rule}, n_intervals={n}",
            mlp,
            X,
            MLP3,
            params=dict(integration=rule, n_intervals=n),
            ref=dict(rule=R.integration_rule(rule, n)),
            edges=[("fc2", "fc3")],
        )
    _brute(
        "jacobian=autograd", mlp, X, MLP3, params=dict(jacobian="autograd"), edges=[("fc1", "fc2")]
    )
    _brute("dtype=float32", mlp, X, MLP3, params=dict(dtype="float32"), rtol=2e-4)
    _brute("float32 model fitted in float64", M.float32_mlp, X, MLP3)
    _brute(
        "capture=output (act1, act2)",
        mlp,
        X,
        ["act1", "act2"],
        params=dict(capture="output"),
        ref=dict(capture="output"),
        edges=[("act1", "act2")],
    )
    _brute(
        "truncation_threshold=1e-2 at every node",
        mlp,
        X,
        MLP3,
        params=dict(truncation_threshold=1e-2),
        ref=dict(threshold=1e-2),
    )
    _brute("n_components=3", mlp, X, MLP3, params=dict(n_components=3))
    _brute("n_components=0.9 (fraction)", mlp, X, MLP3, params=dict(n_components=0.9))
    _brute("whiten=True", mlp, X, MLP3, params=dict(whiten=True), whiten=True)
    _brute("batch_size=7 (a ragged last batch)", mlp, X, MLP3, params=dict(batch_size=7))
    _brute("output_basis=pca leaves upstream bases", mlp, X, MLP3, params=dict(output_basis="pca"))
    _brute("two samples (rank-deficient Gram)", mlp, lambda: M.mlp_data(2), MLP3)
    _brute("inputs of scale 1e-6", mlp, lambda: M.mlp_data(60) * 1e-6, MLP3, rtol=1e-6)
    _brute(
        "inputs of scale 1e3 (saturated tanh)", mlp, lambda: M.mlp_data(60) * 1e3, MLP3, rtol=1e-6
    )
    _brute("duplicated rows", mlp, lambda: np.repeat(M.mlp_data(20), 3, axis=0), MLP3)
    _brute(
        "linear chain",
        M.linear_chain,
        lambda: M.rng().normal(size=(60, 5)),
        ["fc1", "fc2", "fc3"],
        edges=[("fc2", "fc3")],
    )
    _brute(
        "linear chain without bias",
        lambda: M.linear_chain(bias=False),
        lambda: M.rng().normal(size=(60, 5)),
        ["fc2", "fc3"],
    )
    _brute(
        "in-place ReLU after the node",
        M.inplace_relu_mlp,
        X,
        ["act", "fc2"],
        params=dict(capture="output"),
        ref=dict(capture="output"),
    )
    _brute(
        "residual MLP (block, out)",
        lambda: M.ResidualMLP(),
        X,
        ["block", "out"],
        edges=[("block", "out")],
        quick=True,
    )
    _brute(
        "positions (mix, head)",
        lambda: M.PositionMixer().double(),
        lambda: M.positions_data(40),
        ["mix", "head"],
        edges=[("mix", "head"), ("head", "output")],
    )
    _brute(
        "positions, trapezoidal",
        lambda: M.PositionMixer().double(),
        lambda: M.positions_data(30),
        ["mix", "head"],
        params=dict(integration="trapezoidal", n_intervals=2),
        ref=dict(rule=R.integration_rule("trapezoidal", 2)),
        edges=[("mix", "head")],
    )
    _brute(
        "token ids (TokenMixer)",
        lambda: M.TokenMixer().double(),
        lambda: M.rng().integers(0, 7, size=(50, 3)),
        ["mix", "head"],
        edges=[("mix", "head")],
    )
    _brute(
        "final linear of positions (TanhThenLinear)",
        M.TanhThenLinear,
        lambda: M.positions_data(30)[:, :, :3],
        ["head"],
    )
    _brute(
        "wide mixer, 12 positions",
        lambda: M.WideMixer().double(),
        lambda: M.rng().normal(size=(16, 12, 10)),
        ["mix", "head"],
    )
    _brute(
        "modular addition (closed forms)",
        M.small_modadd,
        lambda: M.modadd_tokens(49),
        ["blocks.0.attn", "blocks.0.mlp", "unembed"],
        quick=True,
    )
    _brute(
        "user transformer (traced)",
        M.user_transformer,
        lambda: M.modadd_tokens(49),
        ["blocks.0.attn", "blocks.0.mlp", "unembed"],
    )
    _brute(
        "residual conv net (pool, fc), feature_axis=1",
        M.small_resnet,
        lambda: M.images(16),
        ["pool", "fc"],
        params=dict(feature_axis=1),
        ref=dict(feature_axis=1),
    )
    _brute(
        "residual conv net (stage2, pool, fc)",
        M.small_resnet,
        lambda: M.images(6),
        ["stage2", "pool", "fc"],
        params=dict(feature_axis=1),
        ref=dict(feature_axis=1),
        timeout=240,
    )
    gpt = dict(output="logits", forward_kwargs=dict(M.KW))
    gref = dict(output="logits", kwargs=dict(M.KW))
    _brute(
        "GPT-2 (h.1, ln_f), autograd",
        M.gpt2_eval,
        lambda: M.token_ids(12, 8),
        ["transformer.h.1", "transformer.ln_f"],
        params=dict(gpt, jacobian="autograd"),
        ref=gref,
    )
    _brute(
        "GPT-2 (h.0, h.1, ln_f), auto",
        M.gpt2_eval,
        lambda: M.token_ids(12, 8),
        ["transformer.h.0", "transformer.h.1", "transformer.ln_f"],
        params=gpt,
        ref=gref,
        quick=True,
    )
    _brute(
        "GPT-2 shorter sequences (5 of 8 positions)",
        M.gpt2_eval,
        lambda: M.token_ids(12, 5),
        ["transformer.h.1", "transformer.ln_f"],
        params=gpt,
        ref=gref,
    )

    def bert_inputs():
        ids = M.token_ids(12, 6, vocab=M.BERT_VOCAB)
        return {"input_ids": torch.as_tensor(ids), "attention_mask": torch.ones(12, 6).long()}

    _brute(
        "BERT encoder (layer.1), dict inputs",
        lambda: M.tiny_bert().eval(),
        bert_inputs,
        ["encoder.layer.1"],
        params=dict(output="last_hidden_state"),
        ref=dict(output="last_hidden_state"),
    )


# -- auto vs autograd --------------------------------------------------------------------------


def _auto(name, make, X_fn, nodes, *, params=None, quick=False, edges=True, rtol=1e-8):
    params = dict(params or {})

    def setup():
        model, X = make(), X_fn()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slow = LIBTransformer(
                model, nodes[0], downstream_layers=nodes[1:], jacobian="autograd", **params
            ).fit(X)
            slow_graph = slow.interaction_graph(X) if edges else None
        fast = LIBTransformer(model, nodes[0], downstream_layers=nodes[1:], **params)

        def action():
            fast.fit(X)
            return fast, (fast.interaction_graph(X) if edges else None)

        def check(result):
            lib, graph = result
            for node in nodes:
                problem = R.compare_lambdas(
                    lib.bases_[node].lambdas, slow.bases_[node].lambdas, rtol, floor=1e-9
                )
                if problem:
                    return f"{node}: {problem}"
            Z, Zs = lib.transform(X), slow.transform(X)
            k = lib.n_components_
            problem = R.compare_features(
                Z.reshape(-1, k), Zs.reshape(-1, k), slow.lambdas_, rtol=max(rtol * 100, 1e-6)
            )
            if problem:
                return f"transform: {problem}"
            for s in graph.sections if graph is not None else ():
                E = slow_graph.edges[s]
                problem = R.close(
                    graph.edges[s],
                    E,
                    rtol=1e-6,
                    atol=1e-9 * max(E.max(), 1e-300),
                    what=f"edges {s}",
                )
                if problem:
                    return problem
            return None

        return Trial(action, check, watch={"model": model, "X": X})

    add(AUTO, name, setup, quick=quick)


def register_auto():
    X = lambda: M.mlp_data(80)  # noqa: E731
    _auto("tanh MLP, 3 nodes", M.tanh_mlp, X, MLP3, quick=True)
    _auto(
        "tanh MLP, trapezoidal",
        M.tanh_mlp,
        X,
        MLP3,
        params=dict(integration="trapezoidal", n_intervals=3),
    )
    _auto(
        "tanh MLP, gauss-legendre",
        M.tanh_mlp,
        X,
        MLP3,
        params=dict(integration="gauss-legendre", n_intervals=2),
    )
    _auto("tanh MLP, center=False", M.tanh_mlp, X, MLP3, params=dict(center=False))
    _auto("tanh MLP, float32", M.tanh_mlp, X, MLP3, params=dict(dtype="float32"), rtol=1e-4)
    _auto("tanh MLP, truncation 1e-3", M.tanh_mlp, X, MLP3, params=dict(truncation_threshold=1e-3))
    _auto("tanh MLP, compute_graph", M.tanh_mlp, X, MLP3, params=dict(compute_graph=True))
    _auto(
        "linear chain (affine)",
        M.linear_chain,
        lambda: M.rng().normal(size=(60, 5)),
        ["fc1", "fc2", "fc3"],
    )
    _auto("residual MLP", lambda: M.ResidualMLP(), X, ["block", "out"], quick=True)
    _auto("in-place ReLU", M.inplace_relu_mlp, X, ["fc1", "fc2"])
    _auto(
        "positions",
        lambda: M.PositionMixer().double(),
        lambda: M.positions_data(60),
        ["mix", "head"],
    )
    _auto(
        "positions, gauss-legendre",
        lambda: M.PositionMixer().double(),
        lambda: M.positions_data(60),
        ["mix", "head"],
        params=dict(integration="gauss-legendre", n_intervals=2),
    )
    _auto(
        "token ids",
        lambda: M.TokenMixer().double(),
        lambda: M.rng().integers(0, 7, size=(60, 3)),
        ["mix", "head"],
    )
    _auto(
        "final linear of positions",
        M.TanhThenLinear,
        lambda: M.positions_data(40)[..., :3],
        ["body", "head"],
    )
    _auto(
        "wide mixer",
        lambda: M.WideMixer().double(),
        lambda: M.rng().normal(size=(24, 12, 10)),
        ["mix", "head"],
    )
    _auto(
        "causal -inf mask, LayerNorm",
        lambda: M.Masked().double(),
        lambda: M.positions_data(40)[..., :3],
        ["fc2", "norm", "out"],
    )
    _auto(
        "modular addition",
        M.small_modadd,
        lambda: M.modadd_tokens(49),
        ["blocks.0.attn", "blocks.0.mlp", "unembed"],
        quick=True,
    )
    _auto(
        "modular addition, trapezoidal",
        M.small_modadd,
        lambda: M.modadd_tokens(49),
        ["blocks.0.attn", "blocks.0.mlp", "unembed"],
        params=dict(integration="trapezoidal", n_intervals=2),
    )
    _auto(
        "user transformer",
        M.user_transformer,
        lambda: M.modadd_tokens(49),
        ["blocks.0.attn", "blocks.0.mlp", "unembed"],
    )
    _auto(
        "residual conv net",
        M.small_resnet,
        lambda: M.images(16),
        ["stage2", "pool", "fc"],
        params=dict(feature_axis=1),
    )
    _auto(
        "GPT-2, 3 nodes",
        M.gpt2_eval,
        lambda: M.token_ids(16, 8),
        ["transformer.h.0", "transformer.h.1", "transformer.ln_f"],
        params=dict(output="logits", forward_kwargs=dict(M.KW)),
        edges=False,
    )
    _auto(
        "GPT-2 ln_f to logits, padded",
        M.gpt2_eval,
        lambda: F.padded(M.token_ids(16, 8), [8, 7, 5, 3] * 4),
        ["transformer.ln_f"],
        params=dict(output="logits", forward_kwargs=dict(M.KW)),
    )


# -- PCA and activations ---------------------------------------------------------------------


def _pca_case(name, make, X_fn, layer, *, params=None, rows_fn=None, quick=False):
    params = dict(params or {})

    def setup():
        model, X = make(), X_fn()
        capture = params.get("capture", "input")
        acts, _ = R.activations(
            model,
            X,
            [layer],
            capture=capture,
            output=params.get("output"),
            kwargs=params.get("forward_kwargs"),
        )
        a = acts[layer]
        axis = params.get("feature_axis")
        axis = axis.get(layer) if isinstance(axis, dict) else axis
        if axis is not None:
            a = torch.movedim(a, axis, -1)
        rows = a.reshape(-1, a.shape[-1]).numpy() if rows_fn is None else rows_fn(a, X)
        center = params.get("center", True)
        if center:
            pca = PCA().fit(rows)
            var = pca.explained_variance_ * (len(rows) - 1) / len(rows)
            comps = pca.components_
        else:
            D, U = np.linalg.eigh(rows.T @ rows / len(rows))
            var, comps = D[::-1], U[:, ::-1].T
        est = LIBTransformer(model, layer, basis="pca", **params)

        def check(lib):
            tol = 1e-5 if params.get("dtype") == "float32" else 1e-9  # tolerances by dtype
            problem = R.compare_lambdas(lib.lambdas_, var, tol)
            if problem:
                return problem
            k = lib.n_components_
            Z = lib.transform(X).reshape(-1, k)
            valid = ~np.isnan(Z).any(1)
            mean = rows.mean(0) if center else 0
            Zr = (a.reshape(-1, a.shape[-1]).numpy()[valid] - mean) @ comps[:k].T
            return R.compare_features(Z[valid], Zr, var[:k])

        return Trial(lambda: est.fit(X), check, watch={"model": model, "X": X})

    add(PCA_GROUP, name, setup, quick=quick)


def _activations_case(name, make, X_fn, layer, *, params=None, quick=False):
    params = dict(params or {})

    def setup():
        model, X = make(), X_fn()
        acts, _ = R.activations(
            model,
            X,
            [layer],
            capture=params.get("capture", "input"),
            output=params.get("output"),
            kwargs=params.get("forward_kwargs"),
        )
        a = acts[layer]
        axis = params.get("feature_axis")
        axis = axis.get(layer) if isinstance(axis, dict) else axis
        if axis is not None:
            a = torch.movedim(a, axis, -1)
        expected = a.reshape(len(a), -1).numpy()
        if isinstance(X, dict) and "attention_mask" in X and a.dim() == 3:
            mask = np.asarray(X["attention_mask"])
            expected = np.where(mask[:, :, None] == 1, a.numpy(), np.nan).reshape(len(a), -1)
        est = ActivationTransformer(model, layer, **params)

        def check(result):
            return R.close(result, expected, rtol=1e-10, atol=1e-12, what="activations")

        return Trial(lambda: est.fit_transform(X), check, watch={"model": model, "X": X})

    add(PCA_GROUP, name, setup, quick=quick)


def register_pca():
    X = lambda: M.mlp_data(80)  # noqa: E731
    _pca_case("basis=pca at fc2 vs sklearn PCA", M.tanh_mlp, X, "fc2", quick=True)
    _pca_case(
        "basis=pca, center=False vs uncentred eig", M.tanh_mlp, X, "fc2", params=dict(center=False)
    )
    _pca_case(
        "basis=pca of positions (n * P rows)",
        lambda: M.PositionMixer().double(),
        lambda: M.positions_data(60),
        "mix",
    )
    _pca_case(
        "basis=pca of a conv map, feature_axis=1",
        M.small_resnet,
        lambda: M.images(12),
        "pool",
        params=dict(feature_axis=1),
    )
    _pca_case("basis=pca, dtype=float32", M.tanh_mlp, X, "fc2", params=dict(dtype="float32"))

    def gpt_padded():
        return F.padded(M.token_ids(16, 8), [8, 6, 3, 5] * 4)

    def real_rows(a, X):
        return a.numpy()[np.asarray(X["attention_mask"]) == 1]

    _pca_case(
        "basis=pca of GPT-2, padded: real tokens only",
        M.gpt2_eval,
        gpt_padded,
        "transformer.h.1",
        params=dict(output="logits", forward_kwargs=dict(M.KW)),
        rows_fn=real_rows,
        quick=True,
    )
    _activations_case("ActivationTransformer fc2", M.tanh_mlp, X, "fc2")
    _activations_case(
        "ActivationTransformer capture=output", M.tanh_mlp, X, "act1", params=dict(capture="output")
    )
    _activations_case(
        "ActivationTransformer positions",
        lambda: M.PositionMixer().double(),
        lambda: M.positions_data(20),
        "mix",
    )
    _activations_case(
        "ActivationTransformer conv map, features last",
        M.small_resnet,
        lambda: M.images(6),
        "stage2",
        params=dict(feature_axis=1),
    )
    # An int applies to the (n, 5) output too, where -3 is no axis: the dict form.
    _activations_case(
        "ActivationTransformer conv map, feature_axis={'stage2': -3}",
        M.small_resnet,
        lambda: M.images(6),
        "stage2",
        params=dict(feature_axis={"stage2": -3}),
    )
    _activations_case(
        "ActivationTransformer GPT-2 padded: NaN at padding",
        M.gpt2_eval,
        gpt_padded,
        "transformer.h.1",
        params=dict(output="logits", forward_kwargs=dict(M.KW)),
    )
    _activations_case("ActivationTransformer float32 model", M.float32_mlp, X, "fc2")
    _activations_case(
        "ActivationTransformer batch_size=3", M.tanh_mlp, X, "fc2", params=dict(batch_size=3)
    )

    def pipeline_curve():
        model, Xd = M.tanh_mlp(), M.mlp_data(80)
        pipe = Pipeline([("acts", ActivationTransformer(model, "fc2")), ("pca", PCA())]).fit(Xd)
        pca = pipe.named_steps["pca"]
        acts, out = R.activations(model, Xd, ["fc2"])
        expected = []
        for k in (0, 1, 3, 8):
            abl = R.ablated_outputs(
                model, Xd, "fc2", pca.mean_, pca.components_[:k].T, pca.components_[:k]
            )
            expected.append(R.pooled_r2(out.numpy(), abl.numpy()))

        def check(result):
            return R.close(result[1], expected, rtol=1e-8, atol=1e-10, what="R2 curve")

        return Trial(
            lambda: ablation_curve(pipe, Xd, n_features=[0, 1, 3, 8]),
            check,
            watch={"model": model, "X": Xd, "pipe": pipe},
        )

    add(PCA_GROUP, "ablation_curve of Pipeline(ActivationTransformer, PCA)", pipeline_curve)


# -- padding ------------------------------------------------------------------------------


def _gpt(**extra):
    return dict(output="logits", forward_kwargs=dict(M.KW), **extra)


LENGTHS = [8, 7, 6, 5, 4, 3, 8, 6, 5, 4, 7, 8]


_UNPADDED = {}


def _unpadded_fit(model, layer, downstream, key, params, positions=False):
    """The fit of the sequences unpadded, in batches of one length (cached by ``key``)."""
    cache_key = (model, layer, downstream, key, positions)
    if cache_key not in _UNPADDED:
        ids = M.token_ids(len(LENGTHS), 8)
        reference = LIBTransformer(model(), layer, downstream_layers=list(downstream), **params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference.fit(Stream(_unpadded_stream(ids, list(LENGTHS), positions)))
        _UNPADDED[cache_key] = reference
    return _UNPADDED[cache_key]


def _unpadded_stream(ids, lengths, positions=False):
    """Batches of equal-length sequences, each unpadded (a bucketed stream); with
    ``positions``, their ``position_ids`` too (the fields of left-padded data)."""
    batches = []
    for length in sorted(set(lengths)):
        rows = [i for i, n in enumerate(lengths) if n == length]
        batch = {
            "input_ids": torch.as_tensor(ids[rows, :length]),
            "attention_mask": torch.ones(len(rows), length, dtype=torch.long),
        }
        if positions:
            batch["position_ids"] = torch.arange(length).repeat(len(rows), 1)
        batches.append(batch)
    return batches


class Stream:
    """A re-iterable stream over a list of batches."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def _padding_case(
    name,
    make_padded,
    *,
    method="fit",
    quick=False,
    model=M.gpt2_eval,
    layer="transformer.h.1",
    downstream=("transformer.ln_f",),
    params=None,
    rtol=1e-9,
):
    params = dict(params or _gpt())

    def setup():
        ids = M.token_ids(len(LENGTHS), 8)
        order = np.argsort(LENGTHS, kind="stable")
        lengths = list(LENGTHS)
        net = model()
        data = make_padded(ids, lengths)
        positions = isinstance(data, dict) and "position_ids" in data
        unpadded = Stream(_unpadded_stream(ids, lengths, positions))
        reference = _unpadded_fit(
            model, layer, tuple(downstream), repr(sorted(params.items())), params, positions
        )
        if method == "fit":
            est = LIBTransformer(net, layer, downstream_layers=list(downstream), **params)
        else:
            # The fits agree (the fit cases check it): the methods run on the same one.
            est = copy.deepcopy(reference)
            net = est.model
        if method == "fit":
            expect = [reference.bases_[n].lambdas for n in (layer, *downstream)]

            def action():
                est.fit(data)
                return [est.bases_[n].lambdas for n in (layer, *downstream)]

            def check(got):
                for g, e in zip(got, expect):
                    problem = R.compare_lambdas(g, e, rtol)
                    if problem:
                        return problem
                return None
        elif method == "tokens":
            expect_rows, _ = reference.transform_tokens(unpadded)

            # The unpadded stream holds the samples sorted by length.
            def action():
                Z, index = est.transform_tokens(data)
                return Z, index

            def check(result):
                Z, index = result
                if len(Z) != sum(lengths):
                    return f"{len(Z)} token rows, expected {sum(lengths)} real tokens"
                by_sample = {}
                for row, s in zip(Z, np.asarray(index)[:, 0]):
                    by_sample.setdefault(int(s), []).append(row)
                got = np.concatenate([np.asarray(by_sample[i]) for i in order])
                k = est.n_components_
                return R.compare_features(got, expect_rows, est.lambdas_[:k], rtol=1e-8)
        elif method == "score":
            expect = reference.score(unpadded)

            def action():
                return est.score(data)

            def check(got):
                return R.close(got, expect, rtol=1e-9, atol=1e-12, what="R2")
        elif method == "graph":
            expect = reference.interaction_graph(unpadded)

            def action():
                return est.interaction_graph(data)

            def check(graph):
                for s in expect.sections:
                    E = expect.edges[s]
                    problem = R.close(
                        graph.edges[s], E, rtol=1e-7, atol=1e-9 * E.max(), what=f"edges {s}"
                    )
                    if problem:
                        return problem
                return None
        else:  # ablation curve
            expect = ablation_curve(reference, unpadded, n_features=[0, 2, 8])[1]

            def action():
                return ablation_curve(est, data, n_features=[0, 2, 8])[1]

            def check(got):
                return R.close(got, expect, rtol=1e-8, atol=1e-10, what="R2 curve")

        return Trial(action, check, watch={"model": net, "data": data})

    add(PAD, name, setup, quick=quick)


def _right(ids, lengths):
    return F.padded(ids, lengths)


def _right_junk(ids, lengths):
    d = F.padded(ids, lengths)
    d["input_ids"] = np.where(d["attention_mask"] == 1, d["input_ids"], 13)
    return d


def _left(ids, lengths):
    d = F.padded(ids, lengths, side="left")
    d["position_ids"] = np.clip(np.cumsum(d["attention_mask"], 1) - 1, 0, None)
    return d


def _collated(ids, lengths):
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    tok = M.tiny_tokenizer(M.GPT2_VOCAB)
    feats = [
        {"input_ids": ids[i, :n].tolist(), "attention_mask": [1] * n} for i, n in enumerate(lengths)
    ]
    return DataLoader(feats, batch_size=5, collate_fn=DataCollatorWithPadding(tok))


def _tensors(ids, lengths):
    return {k: torch.as_tensor(v) for k, v in F.padded(ids, lengths).items()}


def _records(ids, lengths):
    d = F.padded(ids, lengths)
    return [{k: v[i] for k, v in d.items()} for i in range(len(lengths))]


def register_padding():
    _padding_case("fit: right padding = unpadded", _right, quick=True)
    _padding_case("fit: junk token ids at padding", _right_junk)
    _padding_case("fit: left padding with position_ids", _left)
    _padding_case("fit: DataCollatorWithPadding batches", _collated, quick=True)
    _padding_case("fit: dict of tensors", _tensors)
    _padding_case("fit: list of per-sample dicts", _records)
    _padding_case("fit: batch_size=5 of a padded dict", _right, params=_gpt(batch_size=5))
    _padding_case("fit autograd: right padding", _right, params=_gpt(jacobian="autograd"))
    _padding_case("fit float32: right padding", _right, params=_gpt(dtype="float32"), rtol=1e-4)
    _padding_case(
        "fit trapezoidal: right padding",
        _right,
        params=_gpt(integration="trapezoidal", n_intervals=1, jacobian="autograd"),
    )
    _padding_case("fit PCA basis: left padding", _left, params=_gpt(basis="pca"))
    _padding_case(
        "fit 3 nodes: collated",
        _collated,
        layer="transformer.h.0",
        downstream=("transformer.h.1", "transformer.ln_f"),
    )
    _padding_case("transform_tokens: right padding", _right, method="tokens")
    _padding_case("transform_tokens: left padding", _left, method="tokens")
    _padding_case("transform_tokens: collated", _collated, method="tokens")
    _padding_case("score R2: right padding", _right, method="score", quick=True)
    _padding_case("score R2: left padding", _left, method="score")
    _padding_case("score R2: collated", _collated, method="score")
    _padding_case("interaction_graph: right padding", _right, method="graph")
    _padding_case("interaction_graph: collated", _collated, method="graph")
    _padding_case("ablation_curve: left padding", _left, method="curve")
    _padding_case("ablation_curve: collated", _collated, method="curve")

    def bert():
        return M.tiny_bert().eval()

    def bert_right(ids, lengths):
        return F.padded(ids % M.BERT_VOCAB, lengths)

    _padding_case(
        "BERT fit: right padding",
        bert_right,
        model=bert,
        layer="encoder.layer.1",
        downstream=(),
        params=dict(output="last_hidden_state"),
    )
    _padding_case(
        "BERT score: right padding",
        bert_right,
        model=bert,
        layer="encoder.layer.1",
        downstream=(),
        params=dict(output="last_hidden_state"),
        method="score",
    )
