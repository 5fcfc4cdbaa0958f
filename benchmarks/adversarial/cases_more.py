"""More results against independent computations: edges under overrides and on new data,
token accuracies of padded sequences, features of streams of several lengths, and the
inverses of NaN-padded features.
"""

import numpy as np
import torch
from torch.utils.data import DataLoader

from sklearn_lib import LIBTransformer

from . import fixtures as F
from . import models as M
from . import reference as R
from .harness import Raises, Trial, add

EDGES = "results: edges"
TOKENS = "results: sequences"


def _edges_case(
    name,
    *,
    params=None,
    graph_kw=None,
    rule=((1.0,), (1.0,)),
    new_data=False,
    k=None,
    compute_graph=False,
    quick=False,
):
    params = dict(params or {})
    graph_kw = dict(graph_kw or {})

    def setup():
        model, X = M.tanh_mlp(), M.mlp_data(60)
        nodes = ["fc1", "fc2", "fc3"]
        lib = LIBTransformer(
            model, "fc1", downstream_layers=nodes[1:], compute_graph=compute_graph, **params
        ).fit(X)
        data = M.mlp_data(40, seed=9) if new_data else X
        bases = {}
        for node in [*nodes, "output"]:
            b = lib.bases_[node]
            bases[node] = dict(
                mean=np.asarray(b.mean), C=np.asarray(b.kept_matrix), Cpinv=np.asarray(b.kept_pinv)
            )
        acts, _ = R.activations(model, data, nodes)
        for node in nodes:
            bases[node]["acts"] = acts[node].reshape(len(data), 1, -1).numpy()
        sections = list(zip(nodes, [*nodes[1:], "output"]))
        want = {s: R.brute_edges(model, data, *s, bases, rule=rule) for s in sections}

        def action():
            if compute_graph:
                return lib.interaction_graph_
            return lib.interaction_graph(data, **graph_kw)

        def check(graph):
            if k is not None and graph.edges[("fc1", "fc2")].shape[1] != k:
                return f"edges of fc1 have {graph.edges[('fc1', 'fc2')].shape[1]} columns, not {k}"
            for s, E in want.items():
                problem = R.close(
                    graph.edges[s], E, rtol=1e-7, atol=1e-10 * E.max(), what=f"edges {s}"
                )
                if problem:
                    return problem
            return None

        return Trial(action, check, watch={"model": model, "X": data, "estimator": lib})

    add(EDGES, name, setup, quick=quick)


def register_edges():
    _edges_case("interaction_graph on new data", new_data=True, quick=True)
    trap = R.integration_rule("trapezoidal", 2)
    _edges_case(
        "interaction_graph(integration='trapezoidal') of a gradient fit",
        graph_kw=dict(integration="trapezoidal", n_intervals=2),
        rule=trap,
    )
    gl = R.integration_rule("gauss-legendre", 1)
    _edges_case(
        "interaction_graph(integration='gauss-legendre') of a trapezoidal fit",
        params=dict(integration="trapezoidal", n_intervals=3),
        graph_kw=dict(integration="gauss-legendre", n_intervals=1),
        rule=gl,
    )
    _edges_case(
        "interaction_graph() of a trapezoidal fit uses its rule",
        params=dict(integration="trapezoidal", n_intervals=2),
        rule=trap,
    )
    _edges_case("edges of n_components=3", params=dict(n_components=3), k=3)
    _edges_case("edges of truncation_threshold=0.05", params=dict(truncation_threshold=0.05))
    _edges_case("edges of center=False", params=dict(center=False))
    _edges_case("edges of whiten=True (unchanged by whitening)", params=dict(whiten=True))
    _edges_case("edges of jacobian='autograd'", params=dict(jacobian="autograd"))
    _edges_case("compute_graph=True", compute_graph=True)
    _edges_case(
        "compute_graph=True with n_components=3",
        params=dict(n_components=3),
        compute_graph=True,
        k=3,
    )
    _edges_case(
        "compute_graph=True, trapezoidal",
        compute_graph=True,
        rule=trap,
        params=dict(integration="trapezoidal", n_intervals=2),
    )
    _edges_case(
        "compute_graph=True, truncation_threshold=0.05",
        compute_graph=True,
        params=dict(truncation_threshold=0.05),
    )
    _edges_case("interaction_graph with batch_size=7", params=dict(batch_size=7))
    _edges_case("edges of basis='pca'", params=dict(basis="pca"))
    _edges_case("edges of output_basis='pca'", params=dict(output_basis="pca"))
    _edges_case(
        "edges of n_stochastic_sources=2 (one output row: exact)",
        graph_kw=dict(n_stochastic_sources=2, random_state=1),
    )

    def one_output(name, **params):
        def setup():
            torch.manual_seed(0)
            model = M.tanh_mlp(d_out=1)
            X = M.mlp_data(60)
            exact = LIBTransformer(model, "fc3").fit(X)
            est = LIBTransformer(model, "fc3", random_state=0, **params)
            return Trial(
                lambda: est.fit(X).lambdas_,
                lambda got: R.compare_lambdas(got, exact.lambdas_, 1e-9),
                watch={"model": model},
            )

        add(EDGES, name, setup)

    # One output row per sample: any +-1 combination of it is +-the row, so M' is exact.
    one_output(
        "n_stochastic_sources=3 with one output row equals the exact fit", n_stochastic_sources=3
    )
    one_output(
        "n_stochastic_sources='auto' with one output row equals the exact fit",
        n_stochastic_sources="auto",
    )

    def auto_sources():
        model, X = M.tanh_mlp(d_out=3, hidden=16), M.mlp_data(200)
        exact = LIBTransformer(model, "fc2", downstream_layers=["fc3"]).fit(X)
        est = LIBTransformer(
            model, "fc2", downstream_layers=["fc3"], n_stochastic_sources="auto", random_state=0
        )

        def check(lib):
            top = exact.lambdas_[:5]
            err = np.abs(lib.lambdas_[:5] - top).max() / top[0]
            return None if err < 0.05 else f"top-5 Lambdas off by {err:.3f} of the largest"

        return Trial(lambda: est.fit(X), check)

    add(EDGES, "n_stochastic_sources='auto': top-5 Lambdas within 5% of exact", auto_sources)

    def fit_with_y():
        model, X = M.tanh_mlp(), M.mlp_data(60)
        want = LIBTransformer(model, "fc2").fit(X).lambdas_
        y = np.arange(60) % 3
        return Trial(
            lambda: LIBTransformer(model, "fc2").fit(X, y).lambdas_,
            lambda got: R.compare_lambdas(got, want, 1e-12),
            watch={"y": y},
        )

    add(EDGES, "fit(X, y) ignores y", fit_with_y)


# -- sequences -------------------------------------------------------------------------------

LENGTHS = [8, 3, 6, 5, 8, 4, 7, 2, 8, 6, 5, 4]


def _gpt_lib():
    """The GPT-2 fitted on a padded dict (dict inputs with a mask later)."""
    return F.gpt2_padded_fit()[0]


def _gpt_array_lib():
    """The GPT-2 fitted on an array of token ids."""
    return F.gpt2_fit()[0]


def _labels(ids, lengths, side="right"):
    """Next-token-like labels at real tokens, -100 at padding and at every 3rd token."""
    n, T = ids.shape
    y = np.full((n, T), -100)
    for i, length in enumerate(lengths):
        pos = range(length) if side == "right" else range(T - length, T)
        for j, t in enumerate(pos):
            if j % 3 != 2:
                y[i, t] = (ids[i, j] * 7 + 3) % M.GPT2_VOCAB
    return y


def _token_accuracy(lib, data, y):
    """Accuracy over the real, labelled tokens of the model with the kept features."""
    b = lib.bases_[lib.layer]
    out = R.ablated_outputs(
        lib.model,
        {k: np.asarray(v) for k, v in data.items()},
        lib.layer,
        b.mean,
        np.asarray(b.kept_matrix),
        np.asarray(b.kept_pinv),
        output="logits",
        kwargs=dict(M.KW),
    ).numpy()
    mask = np.asarray(data["attention_mask"]) == 1
    valid = mask & (y != -100)
    return float(np.mean(out.argmax(-1)[valid] == y[valid]))


def register_sequences():
    def accuracy(side):
        def setup():
            lib = _gpt_lib()
            ids = M.token_ids(len(LENGTHS), 8, seed=4)
            data = F.padded(ids, LENGTHS, side=side)
            if side == "left":
                data["position_ids"] = np.clip(np.cumsum(data["attention_mask"], 1) - 1, 0, None)
                lib = LIBTransformer(
                    lib.model,
                    lib.layer,
                    downstream_layers=lib.downstream_layers,
                    output="logits",
                    forward_kwargs=dict(M.KW),
                ).fit(data)
            y = _labels(ids, LENGTHS, side)
            want = _token_accuracy(lib, data, y)
            return Trial(
                lambda: lib.score(data, y),
                lambda got: R.close(got, want, 1e-12, 1e-12, what="token accuracy"),
                watch={"y": y, "X": data},
            )

        return setup

    add(TOKENS, "GPT-2 token accuracy, right padding, -100 labels", accuracy("right"), quick=True)
    add(TOKENS, "GPT-2 token accuracy, left padding, -100 labels", accuracy("left"))

    def stream_accuracy():
        lib = _gpt_lib()
        ids = M.token_ids(len(LENGTHS), 8, seed=4)
        data = F.padded(ids, LENGTHS)
        y = _labels(ids, LENGTHS)
        want = _token_accuracy(lib, data, y)
        from transformers import DataCollatorWithPadding

        tok = M.tiny_tokenizer(M.GPT2_VOCAB)
        feats = [
            {"input_ids": ids[i, :n].tolist(), "attention_mask": [1] * n}
            for i, n in enumerate(LENGTHS)
        ]
        loader = DataLoader(feats, batch_size=5, collate_fn=DataCollatorWithPadding(tok))
        return Trial(
            lambda: lib.score(loader, y),
            lambda got: R.close(got, want, 1e-12, 1e-12, what="token accuracy"),
        )

    add(TOKENS, "GPT-2 token accuracy of collated batches, y padded with -100", stream_accuracy)

    def stream_features():
        lib = _gpt_lib()
        ids = M.token_ids(len(LENGTHS), 8, seed=5)
        from transformers import DataCollatorWithPadding

        tok = M.tiny_tokenizer(M.GPT2_VOCAB)
        feats = [
            {"input_ids": ids[i, :n].tolist(), "attention_mask": [1] * n}
            for i, n in enumerate(LENGTHS)
        ]
        loader = DataLoader(feats, batch_size=5, collate_fn=DataCollatorWithPadding(tok))
        k = lib.n_components_
        want = np.full((len(LENGTHS), 8 * k), np.nan)
        for i, n in enumerate(LENGTHS):
            acts, _ = R.activations(
                lib.model, ids[i : i + 1, :n], [lib.layer], output="logits", kwargs=dict(M.KW)
            )
            z = (acts[lib.layer][0].numpy() - lib.mean_) @ lib.components_.T
            want[i, : n * k] = z.ravel()
        return Trial(
            lambda: lib.transform(loader),
            lambda got: R.close(got, want, 1e-8, 1e-10, what="features"),
        )

    add(TOKENS, "transform of collated batches: NaN beyond each sequence", stream_features)

    def inverse_nan():
        lib = _gpt_lib()
        data = F.padded(M.token_ids(6, 8), [8, 3, 5, 8, 1, 6])
        Z = lib.transform(data)
        k = lib.n_components_
        want = np.full((6, 8 * 16), np.nan)
        for i in range(6):
            for t in range(8):
                z = Z[i, t * k : (t + 1) * k]
                if not np.isnan(z).any():
                    want[i, t * 16 : (t + 1) * 16] = z @ lib.inverse_components_ + lib.mean_
        return Trial(
            lambda: lib.inverse_transform(Z),
            lambda got: R.close(got, want, 1e-10, 1e-12, what="activations"),
        )

    add(TOKENS, "inverse_transform keeps padded positions NaN", inverse_nan)

    def partly_nan():
        lib = _gpt_array_lib()
        Z = lib.transform(M.token_ids(4, 8))
        Z[1, 3] = np.nan
        return Trial(lambda: lib.inverse_transform(Z), raises=Raises(r"nan|padded|position"))

    add(TOKENS, "inverse_transform of a position NaN in one column only", partly_nan)

    def tokens_round_trip():
        lib = _gpt_lib()
        data = F.padded(M.token_ids(6, 8), [8, 3, 5, 8, 1, 6])
        Z, index = lib.transform_tokens(data)
        acts, _ = R.activations(
            lib.model,
            {k: np.asarray(v) for k, v in data.items()},
            [lib.layer],
            output="logits",
            kwargs=dict(M.KW),
        )
        a = acts[lib.layer].numpy()
        want = (
            a[index[:, 0], index[:, 1]] - lib.mean_
        ) @ lib.components_.T @ lib.inverse_components_ + lib.mean_
        return Trial(
            lambda: lib.inverse_transform_tokens(Z),
            lambda got: R.close(got, want, 1e-9, 1e-11, what="token activations"),
        )

    add(TOKENS, "inverse_transform_tokens of transform_tokens", tokens_round_trip)

    def activations_nan():
        lib, X = F.mlp_fit()
        A = np.ones((3, 8))
        A[1, 2] = np.nan
        return Trial(
            lambda: lib.transform_activations(A),
            raises=Raises(r"nan|finite"),
            either=True,
            check=lambda Z: (
                None
                if np.isnan(Z[1]).all() and not np.isnan(Z[[0, 2]]).any()
                else "NaN spread or vanished"
            ),
        )

    add(TOKENS, "transform_activations with a NaN", activations_nan)

    def activations_wrong_width():
        lib, X = F.mlp_fit()
        return Trial(
            lambda: lib.transform_activations(np.ones((3, 7))),
            raises=Raises(r"7|8|shape|features|width"),
        )

    add(TOKENS, "transform_activations of 7-wide activations (fit: 8)", activations_wrong_width)

    def inverse_tokens_width():
        lib, X = F.mlp_fit()
        return Trial(
            lambda: lib.inverse_transform_tokens(np.ones((3, lib.n_components_ + 1))),
            raises=Raises(r"columns|n_components"),
        )

    add(TOKENS, "inverse_transform_tokens of one column too many", inverse_tokens_width)

    def inverse_width():
        lib, X = F.positions_fit()
        k = lib.n_components_
        return Trial(
            lambda: lib.inverse_transform(np.ones((3, 3 * k))),
            raises=Raises(r"features|n_positions|expects"),
            either=True,
            check=lambda got: None if got.shape == (3, 3 * 5) else str(got.shape),
        )

    add(TOKENS, "inverse_transform of 3 positions of a 4-position fit", inverse_width)

    def transform_stream_mixed():
        lib = _gpt_array_lib()

        class Two:
            def __iter__(self):
                yield torch.as_tensor(M.token_ids(3, 5, seed=1))
                yield torch.as_tensor(M.token_ids(3, 8, seed=2))

        want = np.full((6, 8 * lib.n_components_), np.nan)
        want[:3, : 5 * lib.n_components_] = lib.transform(M.token_ids(3, 5, seed=1))
        want[3:] = lib.transform(M.token_ids(3, 8, seed=2))
        return Trial(
            lambda: lib.transform(Two()),
            lambda got: R.close(got, want, 1e-10, 1e-12, what="features"),
        )

    add(TOKENS, "transform of a stream of token ids of two lengths", transform_stream_mixed)


# -- memory ------------------------------------------------------------------------------------

MEMORY = "memory: far beyond the input"


def register_memory():
    def case(name, action_of, mb, quick=False):
        def setup():
            return Trial(action_of(), check=lambda got: None, mem_mb=mb)

        add(MEMORY, name, setup, quick=quick, isolate=True, timeout=120)

    big = lambda n: M.mlp_data(n, seed=3)  # noqa: E731
    case(
        "fit of 100,000 samples (3 MB)",
        lambda: (
            lambda: (
                LIBTransformer(M.tanh_mlp(), "fc2", downstream_layers=["fc3"]).fit(big(100_000))
                and None
            )
        ),
        200,
        quick=True,
    )
    case(
        "fit of a DataLoader of 100,000 samples",
        lambda: (
            lambda: (
                LIBTransformer(M.tanh_mlp(), "fc2", downstream_layers=["fc3"]).fit(
                    DataLoader(torch.as_tensor(big(100_000)), batch_size=500)
                )
                and None
            )
        ),
        200,
    )
    case(
        "transform of 200,000 samples (12 MB out)",
        lambda: lambda: F.mlp_fit()[0].transform(big(200_000)) is None,
        250,
    )
    case(
        "interaction_graph of 50,000 samples",
        lambda: lambda: F.mlp3_fit()[0].interaction_graph(big(50_000)) and None,
        200,
    )
    case("ablation_curve of 50,000 samples, 9 points", lambda: lambda: _curve(big(50_000)), 200)
    case("score of 100,000 samples", lambda: lambda: F.mlp_fit()[0].score(big(100_000)), 200)
    case(
        "fit with compute_graph of 50,000 samples",
        lambda: (
            lambda: (
                LIBTransformer(
                    M.tanh_mlp(), "fc1", downstream_layers=["fc2", "fc3"], compute_graph=True
                ).fit(big(50_000))
                and None
            )
        ),
        250,
    )
    case(
        "GPT-2 fit on 256 sequences of 8",
        lambda: (
            lambda: (
                LIBTransformer(
                    M.gpt2_eval(),
                    "transformer.h.1",
                    downstream_layers=["transformer.ln_f"],
                    output="logits",
                    forward_kwargs=dict(M.KW),
                ).fit(M.token_ids(256, 8))
                and None
            )
        ),
        400,
    )


def _curve(X):
    from sklearn_lib import ablation_curve

    lib = F.mlp_fit()[0]
    return ablation_curve(lib, X, n_features=list(range(9)))


# -- the output's PCA basis, masks of other dtypes, a racing set_params --------------------------


def register_output_basis():
    group = "results: PCA and activations"

    def case(name, make, rows_of):
        def setup():
            lib_unfit, X = make()

            def check(lib):
                rows = rows_of(lib, X)
                var, _ = R.brute_pca(rows)
                return R.compare_lambdas(lib.bases_["output"].lambdas, var, 1e-9)

            return Trial(lambda: lib_unfit.fit(X), check)

        add(group, name, setup)

    def mlp():
        return LIBTransformer(M.tanh_mlp(), "fc2", output_basis="pca"), M.mlp_data(60)

    def mlp_rows(lib, X):
        return R.outputs(lib.model, X).numpy()

    def gpt():
        data = F.padded(M.token_ids(12, 8), [8, 3, 5, 7] * 3)
        lib = LIBTransformer(
            M.gpt2_eval(),
            "transformer.ln_f",
            output="logits",
            forward_kwargs=dict(M.KW),
            output_basis="pca",
            jacobian="autograd",
        )
        return lib, data

    def gpt_rows(lib, data):
        out = R.outputs(
            lib.model,
            {k: np.asarray(v) for k, v in data.items()},
            output="logits",
            kwargs=dict(M.KW),
        ).numpy()
        return out[np.asarray(data["attention_mask"]) == 1]

    case("output_basis='pca': the output's variances", mlp, mlp_rows)
    case("output_basis='pca' of padded GPT-2: real tokens only", gpt, gpt_rows)

    def mask_dtype(name, convert, either=False):
        def setup():
            lib, data = F.gpt2_padded_fit()
            want = lib.transform(data)
            other = {**data, "attention_mask": convert(data["attention_mask"])}
            return Trial(
                lambda: lib.transform(other),
                lambda got: R.close(got, want, 1e-12, 1e-12, what="features"),
                raises=Raises("attention_mask") if either else None,
                either=either,
                watch={"X": other},
            )

        add("results: padding", f"transform with a {name} attention_mask", setup)

    mask_dtype("boolean", lambda m: m.astype(bool))
    mask_dtype("int32", lambda m: m.astype(np.int32))
    mask_dtype("uint8 tensor", lambda m: torch.as_tensor(m.astype(np.uint8)))
    mask_dtype("float 0.0/1.0", lambda m: m.astype(np.float32), either=True)

    def racing_layer():
        from sklearn.exceptions import NotFittedError

        from .cases_faults import _race, _same

        lib, X = F.mlp_fit()
        want = lib.transform(X)

        def writer():
            for i in range(20):
                lib.set_params(layer="fc3" if i % 2 == 0 else "fc2")
            lib.set_params(layer="fc2")

        def check(results):
            for i, r in enumerate(results):
                if isinstance(r, NotFittedError):
                    continue  # a fit-defining parameter changed: refused until a refit
                if isinstance(r, Exception):
                    return f"read {i}: {type(r).__name__}: {r}"[:200]
                if _same(r, want) is not None:
                    return f"read {i} is not the fit's features"
            return None

        return Trial(lambda: _race(lambda: lib.transform(X), writer, n_reads=20), check)

    add(
        "threads: racing a refit",
        "transform while another thread sets layer",
        racing_layer,
        isolate=True,
    )
