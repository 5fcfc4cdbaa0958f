"""Parameters and model structure: bad values refused by name, unusual valid values taken.

Every constructor parameter of ``LIBTransformer`` and ``ActivationTransformer`` gets
wrong types, out-of-range values, NaN and inf, bools for numbers and near-miss strings;
valid values of unusual types (numpy scalars, ``torch.device``, ``torch.dtype``) must
give the fit of their plain equivalents.  Then models whose structure the package must
refuse (layers out of order, not cuts, called twice, scripted, random, on ``meta``) and
bad arguments of ``interaction_graph``, the ablation functions and ``load``.
"""

import warnings

import numpy as np
import torch
from sklearn.exceptions import NotFittedError

from sklearn_lib import (
    ActivationTransformer,
    LIBTransformer,
    ablation_curve,
    edge_ablation_curve,
    edges_needed,
    features_needed,
)

from . import fixtures as F
from . import models as M
from . import reference as R
from .harness import Raises, Trial, add

BAD = "params: bad values refused by name"
ODD = "params: unusual valid values"
STRUCT = "params: model structure"
ARGS = "params: arguments of methods and functions"

NAN, INF = float("nan"), float("inf")

#: parameter -> bad values (each must be refused naming the parameter)
BAD_VALUES = {
    "layer": [3, None, "fc9", "FC2", ["fc2"], "fc2 "],
    "downstream_layers": ["fc3", ["fc1"], ["fc2"], ["fc3", "fc3"], ["nope"], [3], None],
    "capture": ["inputs", "", None, 1],
    "output": [1.5, [0], "logits", 5, True],
    "forward_kwargs": [[("a", 1)], "use_cache", {"x": 1}, {1: 2}],
    "feature_axis": [1.0, "1", {"nope": 1}, True],
    "basis": ["PCA", "ica", None, 1],
    "n_components": [0, -1, 1.0, 1.5, NAN, INF, True, "3", 0.0],
    "truncation_threshold": [-0.1, 1.0, 2, NAN, INF, True, "0.1", None],
    "center": [1, "yes", None, np.float64(1.0)],
    "whiten": [0, "no", None],
    "integration": ["Gradient", "riemann", None, ""],
    "n_intervals": [-1, 1.5, True, NAN, "2", None],
    "output_basis": ["lib", "PCA", None],
    "feature_axis (2-D layer)": [0, 2, -3, {"fc2": 5}],
    "batch_size": [0, -8, 2.5, True, NAN, "64", None, "Auto"],
    "device": ["gpu", "cuda:x", "tpu", 0, None, "cuda:99", "meta"],
    "dtype": ["float16", "double", torch.float16, torch.bfloat16, np.float64, "int64", None],
    "n_stochastic_sources": [0, -2, 1.5, True, "AUTO", NAN],
    "jacobian": ["fast", "Auto", None, True],
    "compute_graph": [1, "true", None],
    "random_state": ["seed", 1.5, -1, 2**40],
    "verbose": ["loud", -1, None, 1.5],
}

#: Bad values of these parameters whose error is allowed to come from a check elsewhere
#: (the layer's name or the model) rather than name the parameter itself.
MATCH = {
    "layer": r"layer|fc9|FC2|module|name",
    "downstream_layers": r"downstream|layer|order|fc1|fc2|nope|twice|repeat|duplicate",
    "output": r"output",
    "forward_kwargs": r"forward_kwargs|keyword|x",
    "feature_axis": r"feature_axis|axis",
    "device": r"device|cuda|gpu|tpu|meta",
    "dtype": r"dtype|float",
}


def _bad_param(name, value):
    def setup():
        model, X = M.tanh_mlp(), M.mlp_data(60)
        key = name.split(" ")[0]
        params = {"downstream_layers": ["fc3"], key: value}
        layer = params.pop("layer", "fc2")
        est = LIBTransformer(model, layer, **params)
        check, either = None, False
        if name.endswith("(2-D layer)"):
            # 2-D activations have one feature axis whatever the value: the default fit.
            ref = LIBTransformer(model, "fc2", downstream_layers=["fc3"]).fit(X)
            either = True

            def check(lib):
                return R.compare_lambdas(lib.lambdas_, ref.lambdas_, 1e-12)

        return Trial(
            lambda: est.fit(X),
            check,
            raises=Raises(MATCH.get(key, key)),
            either=either,
            watch={"model": model, "X": X},
        )

    return setup


#: parameter -> valid values of unusual types, and the plain value they mean
ODD_VALUES = {
    "n_components": [
        (np.int64(3), 3),
        (np.float32(0.5), float(np.float32(0.5))),
        (np.int8(2), 2),
        (10**30, None),
    ],
    "truncation_threshold": [
        (np.float32(1e-3), float(np.float32(1e-3))),
        (0, 0.0),
        (np.float64(1e-10), 1e-10),
    ],
    "batch_size": [(np.int32(16), 16), (np.uint8(7), 7), (1, 1), (10**6, 10**6)],
    "n_intervals": [(np.int64(0), 0)],
    "device": [(torch.device("cpu"), "cpu"), ("cpu", "auto")],
    "dtype": [(torch.float64, "float64"), (torch.float32, "float32"), ("float64", "float64")],
    "random_state": [(np.random.RandomState(0), 0), (np.int64(0), 0)],
    "downstream_layers": [(("fc3",), ["fc3"])],
    "center": [(np.bool_(True), True)],
    "verbose": [(0, False), (np.bool_(False), False)],
    "n_stochastic_sources": [(np.int64(64), 64)],
}


#: Unusual values scikit-learn's own constraints refuse (PCA refuses them too), or that
#: a clear error may refuse: a refusal naming the parameter is fine.
MAY_REFUSE = {("n_components", "np.float32(0.5)"), ("n_components", "10**30")}


def _value_label(value):
    """``repr(value)`` without an object's address."""
    return "RandomState(0)" if isinstance(value, np.random.RandomState) else repr(value)


def _odd_param(name, value, plain):
    def setup():
        model, X = M.tanh_mlp(), M.mlp_data(60)
        base = {"downstream_layers": ["fc3"], "random_state": 0}
        ref = LIBTransformer(model, "fc2", **{**base, name: plain})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref.fit(X)
        est = LIBTransformer(model, "fc2", **{**base, name: value})

        def check(lib):
            problem = R.compare_lambdas(lib.lambdas_, ref.lambdas_, 1e-7)
            if problem:
                return problem
            k = lib.n_components_
            return R.compare_features(
                lib.transform(X).reshape(-1, k),
                ref.transform(X).reshape(-1, k),
                ref.lambdas_,
                rtol=1e-5,
            )

        label = "10**30" if type(value) is int and value == 10**30 else repr(value)
        may = (name, label) in MAY_REFUSE
        return Trial(
            lambda: est.fit(X),
            check,
            watch={"model": model},
            raises=Raises(name) if may else None,
            either=True,
        )

    return setup


def register_params():
    for name, values in BAD_VALUES.items():
        for value in values:
            add(BAD, f"{name}={value!r}", _bad_param(name, value), quick=value is values[0])
    for name, pairs in ODD_VALUES.items():
        for value, plain in pairs:
            add(
                ODD,
                f"{name}={_value_label(value)}",
                _odd_param(name, value, plain),
                quick=value is pairs[0][0] and name == "n_components",
            )

    def many_sources():
        model, X = M.tanh_mlp(), M.mlp_data(60)
        exact = LIBTransformer(model, "fc2", downstream_layers=["fc3"]).fit(X)
        est = LIBTransformer(
            model, "fc2", downstream_layers=["fc3"], n_stochastic_sources=10**6, random_state=0
        )
        return Trial(
            lambda: est.fit(X).lambdas_,
            lambda got: R.compare_lambdas(got, exact.lambdas_, 0.05),
            raises=Raises("n_stochastic_sources"),
            either=True,
            mem_mb=1024,
        )

    add(
        BAD,
        "n_stochastic_sources=10**6 on 3 exact rows (memory)",
        many_sources,
        isolate=True,
        timeout=30,
    )

    def conv_axis(value):
        def setup():
            model, X = M.small_resnet(), M.images(6)
            est = LIBTransformer(model, "pool", downstream_layers=["fc"], feature_axis=value)
            return Trial(
                lambda: est.fit(X), raises=Raises("feature_axis|axis"), watch={"model": model}
            )

        return setup

    for value in (0, 4, -5, {"pool": 0}, {"pool": 7}):
        add(BAD, f"feature_axis={value!r} of a conv map", conv_axis(value))

    def activation_bad(name, value, match):
        def setup():
            model, X = M.tanh_mlp(), M.mlp_data(30)
            params = {name: value}
            layer = params.pop("layer", "fc2")
            est = ActivationTransformer(model, layer, **params)
            return Trial(lambda: est.fit(X), raises=Raises(match), watch={"model": model})

        return setup

    for name, value, match in [
        ("layer", "nope", "layer|nope"),
        ("capture", "in", "capture"),
        ("batch_size", 0, "batch_size"),
        ("dtype", "half", "dtype"),
        ("device", "gpu", "device"),
        ("output", 9, "output"),
        ("forward_kwargs", {"z": 1}, "z|keyword"),
    ]:
        add(BAD, f"ActivationTransformer {name}={value!r}", activation_bad(name, value, match))


# -- model structure --------------------------------------------------------------------------


def _struct(
    name, make_model, layer, downstream, match, *, X=None, params=None, either=False, quick=False
):
    def setup():
        model = make_model()
        data = M.mlp_data(60) if X is None else X()
        est = LIBTransformer(model, layer, downstream_layers=downstream, **(params or {}))
        return Trial(
            lambda: est.fit(data),
            raises=Raises(match),
            either=either,
            watch={"model": model, "X": data},
        )

    add(STRUCT, name, setup, quick=quick)


def register_structure():
    _struct(
        "a layer the residual bypasses (not a cut)",
        M.Bypass,
        "fc2",
        ["fc3"],
        r"cut|bypass|residual",
        quick=True,
    )
    _struct(
        "residual block's inner layer (block.fc)",
        lambda: M.ResidualMLP(),
        "block.fc",
        ["out"],
        r"cut|bypass|residual",
    )
    _struct("downstream before layer", M.tanh_mlp, "fc3", ["fc2"], r"order|before|after")
    _struct(
        "a module called twice",
        M.SharedLayer,
        "shared",
        [],
        r"twice|called|more than once",
        X=lambda: M.mlp_data(40),
    )
    _struct(
        "batch statistics in eval mode",
        M.batch_statistics_mlp,
        "fc2",
        [],
        r"batch|sample|mates|BatchNorm",
    )
    _struct("a layer mixing samples", M.MixesSamples, "fc2", ["fc3"], r"batch|sample|mates")
    _struct("a random forward pass", M.RandomForward, "fc2", [], r"random")
    _struct(
        "a detached path between nodes", M.NoGradForward, "fc2", ["fc3"], r"gradient|detach|flow"
    )
    _struct(
        "an output that depends on the batch size", M.BatchSizeDependent, "fc2", [], r"batch|sample"
    )
    _struct(
        "rounding on the path (zero Jacobian)",
        M.IntegerPath,
        "fc2",
        ["fc3"],
        r"gradient|derivative|zero|flow|round",
        either=True,
    )
    _struct(
        "activations overflowing to inf",
        M.Overflows,
        "fc2",
        [],
        r"inf|finite|overflow",
        X=lambda: M.mlp_data(60) * 100,
    )
    _struct("NaN activations (log of negatives)", lambda: M.LogOfInput(4), "out", [], r"nan|finite")
    _struct(
        "a model of two positional inputs",
        M.TwoInputs,
        "fc2",
        [],
        r"positional|argument|batch|input|b",
    )

    def scripted(kind):
        def make():
            model = M.tanh_mlp()
            if kind == "script":
                return torch.jit.script(model)
            return torch.jit.trace(model, torch.zeros(2, 4, dtype=torch.float64))

        return make

    _struct("a torch.jit.script model", scripted("script"), "fc2", [], r"TorchScript|jit")
    _struct("a torch.jit.trace model", scripted("trace"), "fc2", [], r"TorchScript|jit")

    def meta_model():
        with torch.device("meta"):
            return M.tanh_mlp()

    _struct("a model on the meta device", meta_model, "fc2", [], r"meta")

    def partly_meta():
        model = M.tanh_mlp()
        model.fc3.to("meta")
        return model

    _struct("a model with one layer on meta", partly_meta, "fc2", ["fc3"], r"meta")

    def not_a_model():
        return Trial(
            lambda: LIBTransformer(lambda x: x, "fc2").fit(M.mlp_data(10)),
            raises=Raises(r"model|Module"),
        )

    add(STRUCT, "a function instead of a model", not_a_model)

    def skorch_unfitted():
        from skorch import NeuralNetRegressor

        net = NeuralNetRegressor(M.TanhThenLinear)
        return Trial(
            lambda: LIBTransformer(net, "head").fit(M.mlp_data(10)[:, :3]),
            raises=Raises(r"skorch|initiali|module_"),
        )

    add(STRUCT, "an uninitialised skorch net", skorch_unfitted)

    def skorch_initialized():
        from skorch import NeuralNetRegressor

        net = NeuralNetRegressor(M.TanhThenLinear).initialize()
        net.module_.double()
        X = M.rng().normal(size=(40, 3))
        lib_ref = LIBTransformer(net.module_, "head").fit(X)
        return Trial(
            lambda: LIBTransformer(net, "head").fit(X).lambdas_,
            lambda got: R.compare_lambdas(got, lib_ref.lambdas_, 1e-12),
        )

    add(STRUCT, "an initialised skorch net = its module_", skorch_initialized)

    def train_mode_dropout():
        model = M.stateful_mlp()
        X = M.mlp_data(60).astype(np.float32)
        ref = R.brute_lib(model, X, ["fc2"])
        est = LIBTransformer(model, "fc2")
        return Trial(
            lambda: est.fit(X).lambdas_,
            lambda got: R.compare_lambdas(got, ref["fc2"]["lambdas"], 1e-7),
            watch={"model": model},
        )

    add(
        STRUCT,
        "a model in train mode with dropout and BatchNorm fits as eval",
        train_mode_dropout,
        quick=True,
    )

    def output_forms(kind, output):
        def setup():
            model = M.WithOutputs(kind).double()
            X = M.mlp_data(60)
            ref = R.brute_lib(model, X, ["fc2"], output=output)
            est = LIBTransformer(model, "fc2", output=output)
            return Trial(
                lambda: est.fit(X).lambdas_,
                lambda got: R.compare_lambdas(got, ref["fc2"]["lambdas"], 1e-7),
                watch={"model": model},
            )

        return setup

    for kind, output in [
        ("tuple", 0),
        ("dict", "logits"),
        ("object", "logits"),
        ("tuple", -2),
        ("list", 0),
        ("dict", lambda out: out["logits"]),
    ]:
        add(
            STRUCT,
            f"output={output if not callable(output) else 'callable'} of a {kind}",
            output_forms(kind, output),
        )

    def output_missing(kind, output, match):
        def setup():
            model = M.WithOutputs(kind).double()
            return Trial(
                lambda: LIBTransformer(model, "fc2", output=output).fit(M.mlp_data(20)),
                raises=Raises(match),
            )

        return setup

    for kind, output, match in [
        ("tuple", 2, r"output|2|index"),
        ("dict", "loss", r"loss|output"),
        ("object", "loss", r"loss|output"),
        ("tuple", None, r"output|tuple|tensor"),
        ("dict", lambda out: "text", r"output|str|tensor"),
    ]:
        add(
            STRUCT,
            f"output={output if not callable(output) else 'callable'} missing from a {kind}",
            output_missing(kind, output, match),
        )

    def keyword_model():
        model = M.KeywordMLP().double()
        X = M.mlp_data(40)
        data = {"x": X, "gain": np.linspace(0.5, 1.5, 40)}
        ref = R.brute_lib(model, data, ["fc2", "fc3"])
        est = LIBTransformer(model, "fc2", downstream_layers=["fc3"])
        return Trial(
            lambda: est.fit(data).lambdas_,
            lambda got: R.compare_lambdas(got, ref["fc2"]["lambdas"], 1e-7),
            watch={"model": model, "data": data},
        )

    add(STRUCT, "dict inputs with a per-sample float field", keyword_model)


# -- arguments of methods ---------------------------------------------------------------------


def _label(kw):
    """``kw`` as a case name, callables by what they return (no addresses in names)."""
    out = []
    for key, value in kw.items():
        if callable(value):
            returned = value(np.zeros(2), np.zeros(2))
            value = f"<a scorer returning {returned!r}>"
        else:
            value = _value_label(value)
        out.append(f"{key}={value}")
    return ", ".join(out)


def register_arguments():
    def graph_arg(kw, match):
        def setup():
            lib, X = F.mlp_fit()
            return Trial(
                lambda: lib.interaction_graph(X, **kw),
                raises=Raises(match),
                watch={"estimator": lib},
            )

        return setup

    for kw, match in [
        ({"integration": "simpson"}, "integration"),
        ({"integration": "trapezoidal"}, "n_intervals"),
        ({"n_intervals": -1}, "n_intervals"),
        ({"n_intervals": True}, "n_intervals"),
        ({"n_stochastic_sources": 0}, "n_stochastic_sources"),
        ({"n_stochastic_sources": "auto"}, "n_stochastic_sources"),
        ({"random_state": "x"}, "random_state"),
        ({"verbose": "x"}, "verbose"),
        ({"n_intervals": 2}, "n_intervals|gradient"),
    ]:
        add(ARGS, f"interaction_graph({kw})", graph_arg(kw, match))

    def graph_valid(kw):
        def setup():
            lib, X = F.mlp_fit()
            return Trial(
                lambda: lib.interaction_graph(X, **kw),
                lambda g: (
                    None
                    if all(np.isfinite(E).all() and (E >= 0).all() for E in g.edges.values())
                    else "bad edges"
                ),
            )

        return setup

    for kw in [
        {"integration": "gauss-legendre", "n_intervals": 2},
        {"n_stochastic_sources": 3, "random_state": 0},
        {"random_state": np.random.RandomState(1)},
        {"verbose": True},
    ]:
        add(ARGS, f"interaction_graph({_label(kw)}) valid", graph_valid(kw))

    def stochastic_one_position():
        lib, X = F.mlp_fit()
        exact = lib.interaction_graph(X)
        return Trial(
            lambda: lib.interaction_graph(X, n_stochastic_sources=2, random_state=0),
            lambda g: R.close(
                g.edges[("fc3", "output")],
                exact.edges[("fc3", "output")],
                1e-9,
                1e-14,
                what="edges",
            ),
        )

    add(ARGS, "stochastic edges with one output position are exact", stochastic_one_position)

    def curve_arg(fn, kw, match):
        def setup():
            lib, X, graph = F.mlp3_fit()
            call = {
                "ablation_curve": lambda: ablation_curve(lib, X, **{"n_features": [1], **kw}),
                "edge_ablation_curve": lambda: edge_ablation_curve(
                    lib, graph, X, **{"section": ("fc1", "fc2"), "n_edges": [1], **kw}
                ),
                "edges_needed": lambda: edges_needed(lib, graph, X, **kw),
                "features_needed": lambda: features_needed(lib, X, **kw),
            }[fn]
            return Trial(call, raises=Raises(match), watch={"estimator": lib, "graph": graph})

        return setup

    for fn, kw, match in [
        ("ablation_curve", {"n_features": [np.int64(-1)]}, "n_features"),
        ("ablation_curve", {"n_features": np.array([2**63 - 1])}, "n_features"),
        ("ablation_curve", {"layer": "output"}, "layer|output"),
        ("ablation_curve", {"layer": "fc9"}, "layer|fc9"),
        ("ablation_curve", {"scoring": "accuracy"}, "accuracy|y|labels"),
        ("ablation_curve", {"scoring": "f1"}, "scoring"),
        ("ablation_curve", {"scoring": lambda a, b: "x"}, "scor|float|number"),
        ("features_needed", {"scoring": lambda a, b: np.nan}, "scor|nan|finite"),
        ("ablation_curve", {"scoring": lambda a, b: np.ones(2)}, "scor|float|scalar|number"),
        ("ablation_curve", {"verbose": "x"}, "verbose"),
        ("edge_ablation_curve", {"section": ("fc2", "fc1")}, "section"),
        ("edge_ablation_curve", {"section": ("fc1", "fc3")}, "section"),
        ("edge_ablation_curve", {"n_edges": [-1]}, "n_edges"),
        ("edge_ablation_curve", {"n_edges": [1.0]}, "n_edges"),
        ("edges_needed", {"tolerance": -1}, "tolerance"),
        ("edges_needed", {"sections": [("a", "b")]}, "section|a"),
        ("edges_needed", {"tolerance": np.float64(np.nan)}, "tolerance"),
        ("features_needed", {"tolerance": INF}, "tolerance"),
        ("features_needed", {"layer": "output"}, "layer|output"),
        ("features_needed", {"scoring": lambda a, b: None}, "scor|float|None"),
    ]:
        add(ARGS, f"{fn}({_label(kw)})", curve_arg(fn, kw, match))

    def foreign_graph():
        lib, X, graph = F.mlp3_fit()
        other, _ = F.positions_fit()
        g2 = other.interaction_graph(M.positions_data(10))
        return Trial(
            lambda: edge_ablation_curve(lib, g2, X, section=("mix", "head"), n_edges=[1]),
            raises=Raises(r"graph|section|mix|estimator|layer"),
        )

    add(ARGS, "edge_ablation_curve with another estimator's graph", foreign_graph)

    def tampered_graph():
        lib, X, graph = F.mlp3_fit()
        from sklearn_lib import InteractionGraph

        edges = dict(graph.edges)
        edges[("fc1", "fc2")] = edges[("fc1", "fc2")][:-1]
        lambdas = dict(graph.lambdas)
        lambdas["fc2"] = lambdas["fc2"][:-1]
        edges[("fc2", "fc3")] = edges[("fc2", "fc3")][:, :-1]
        g2 = InteractionGraph(graph.nodes, lambdas, edges)
        return Trial(lambda: edges_needed(lib, g2, X), raises=Raises(r"graph|features|shape|fc2"))

    add(ARGS, "edges_needed with a graph of other feature counts", tampered_graph)

    def unfitted_pipeline():
        from sklearn.decomposition import PCA
        from sklearn.pipeline import Pipeline

        pipe = Pipeline([("acts", ActivationTransformer(M.tanh_mlp(), "fc2")), ("pca", PCA())])
        return Trial(
            lambda: ablation_curve(pipe, M.mlp_data(10), n_features=[1]),
            raises=Raises(r"fit", types=(NotFittedError, ValueError, TypeError)),
        )

    add(ARGS, "ablation_curve of an unfitted pipeline", unfitted_pipeline)

    def wrong_estimator():
        from sklearn.decomposition import PCA

        pca = PCA().fit(M.mlp_data(10))
        return Trial(
            lambda: ablation_curve(pca, M.mlp_data(10), n_features=[1]),
            raises=Raises(r"LIBTransformer|Pipeline|estimator"),
        )

    add(ARGS, "ablation_curve of a bare PCA", wrong_estimator)
