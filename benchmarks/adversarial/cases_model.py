"""The user's model and objects: never changed; a changed model makes the basis stale.

- ``untouched``: models with state a careless implementation would change (train
  mode, dropout, BatchNorm statistics, frozen layers, gradients, hooks, counters
  and buffers updated by the forward, float32 and bfloat16 weights, inputs and
  keyword arguments edited in place) through every entry point; the model's
  parameters, buffers, gradients, flags, hooks and attributes, and the caller's
  inputs, must be as they were, and results those of an unedited copy;
- ``stale``: the model changed after ``fit`` (a -inf mask that moves, a swapped
  activation module, float and bool attributes, a LayerNorm's eps, weight edits,
  other weights loaded, a hook that changes outputs) must warn with
  ``StaleBasisWarning``; changes of nothing must not.
"""

import copy
import pickle

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from sklearn_lib import (
    ActivationTransformer,
    FeatureDashboard,
    LIBTransformer,
    StaleBasisWarning,
    ablation_curve,
    edges_needed,
    features_needed,
)

from . import models as M
from . import reference as R
from .harness import Raises, Trial, add

UNTOUCHED = "model: untouched by every entry point"
CALLER = "model: caller's objects untouched"
STALE = "model: changed after fit"
NOT_STALE = "model: unchanged, no false alarm"

#: model name -> (make model, make X, layer, downstream)
MODELS = {
    "float64 eval": (M.tanh_mlp, lambda: M.mlp_data(60), "fc2", ["fc3"]),
    "train mode, dropout, BatchNorm, frozen layer (float32)": (
        M.stateful_mlp,
        lambda: M.mlp_data(60).astype(np.float32),
        "fc2",
        [],
    ),
    "gradients set, train mode": (M.mlp_with_grads, lambda: M.mlp_data(60), "fc2", ["fc3"]),
    "a user hook on fc3": (M.mlp_with_hooks, lambda: M.mlp_data(60), "fc2", ["fc3"]),
    "counter, history and buffer updated by forward": (
        lambda: M.CountsCalls().double(),
        lambda: M.mlp_data(60),
        "fc2",
        ["fc3"],
    ),
    "edits its input in place": (
        lambda: M.EditsInput().double(),
        lambda: M.mlp_data(60),
        "fc2",
        ["fc3"],
    ),
    "clamps its input in place": (
        lambda: M.EditsInput("clamp").double(),
        lambda: M.mlp_data(60),
        "fc2",
        ["fc3"],
    ),
    "float32 weights": (M.float32_mlp, lambda: M.mlp_data(60).astype(np.float32), "fc2", ["fc3"]),
    "bfloat16 weights": (
        M.bfloat16_mlp,
        lambda: torch.as_tensor(M.mlp_data(60)).bfloat16(),
        "fc2",
        ["fc3"],
    ),
    "GPT-2 in train mode": (
        lambda: M.tiny_gpt2(),
        lambda: M.token_ids(6, 4),
        "transformer.h.1",
        ["transformer.ln_f"],
    ),
    "conv net with BatchNorm in train mode": (
        lambda: M.small_resnet().train(),
        lambda: M.images(6),
        "pool",
        ["fc"],
    ),
}

ENTRIES = {
    "fit": lambda lib, X: lib.fit(X),
    "transform": lambda lib, X: lib.transform(X),
    "score": lambda lib, X: lib.score(X),
    "interaction_graph": lambda lib, X: lib.interaction_graph(X),
    "ablation_curve": lambda lib, X: ablation_curve(lib, X, n_features=[0, 1]),
    "features_needed": lambda lib, X: features_needed(lib, X, tolerance=0.1),
    "edges_needed": lambda lib, X: edges_needed(lib, lib.interaction_graph(X), X, tolerance=0.5),
    "transform_tokens": lambda lib, X: lib.transform_tokens(X),
    "save and load": lambda lib, X: _save_load(lib),
    "pickle": lambda lib, X: pickle.loads(pickle.dumps(lib)),
    "FeatureDashboard": lambda lib, X: FeatureDashboard.from_estimator(
        lib, X, n_features=3, n_examples=2, ablation=True
    ).to_html(),
    "ActivationTransformer": lambda lib, X: ActivationTransformer(
        lib.model,
        lib.layer,
        output=lib.output,
        forward_kwargs=lib.forward_kwargs,
        feature_axis=lib.feature_axis,
    ).fit_transform(X),
}


def _save_load(lib):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/fit.npz"
        lib.save(path)
        return LIBTransformer.load(path, lib.model)


def _params(name):
    if name.startswith("GPT-2"):
        return dict(output="logits", forward_kwargs=dict(M.KW))
    if name.startswith("conv"):
        return dict(feature_axis=1)
    return {}


def _untouched(name, entry):
    make, make_X, layer, downstream = MODELS[name]

    def setup():
        model, X = make(), make_X()
        lib = LIBTransformer(model, layer, downstream_layers=downstream, **_params(name))
        if entry != "fit":
            lib.fit(X)
        check = None
        if entry == "fit" and "in place" in name:
            ref = R.brute_lib(model, X, [layer, *downstream])

            def check(lib):
                return R.compare_lambdas(lib.lambdas_, ref[layer]["lambdas"], 1e-7)

        return Trial(
            lambda: ENTRIES[entry](lib, X), check, watch={"model": model, "X": X}, mem_mb=600
        )

    return setup


def register_untouched():
    for name in MODELS:
        entries = list(ENTRIES)
        if name.startswith(("GPT-2", "conv")):
            entries = ["fit", "transform", "score", "interaction_graph", "save and load"]
            entries.append("FeatureDashboard")
        for entry in entries:
            add(
                UNTOUCHED,
                f"{name}: {entry}",
                _untouched(name, entry),
                quick=entry == "fit" and name.startswith(("train", "edits")),
            )


# -- the caller's objects ----------------------------------------------------------------------


def _caller(name, make_data, entry="fit", model=None):
    def setup():
        net = (model or (lambda: M.tanh_mlp()))()
        data = make_data()
        lib = LIBTransformer(net, "fc2", downstream_layers=["fc3"])
        if entry != "fit":
            lib.fit(make_data())
        return Trial(lambda: ENTRIES[entry](lib, data), watch={"data": data, "model": net})

    add(CALLER, f"{entry}: {name}", setup)


def register_caller():
    X = lambda: M.mlp_data(60)  # noqa: E731
    forms = {
        "array": X,
        "tensor": lambda: torch.as_tensor(X()),
        "tensor requiring grad": lambda: torch.as_tensor(X()).requires_grad_(),
        "list of tensors": lambda: list(torch.as_tensor(X())),
        "DataLoader": lambda: DataLoader(torch.as_tensor(X()), batch_size=16),
        "list of lists": lambda: X().tolist(),
        "pandas DataFrame": lambda: __import__("pandas").DataFrame(X()),
    }
    for name, make in forms.items():
        for entry in ("fit", "transform", "score"):
            _caller(name, make, entry)
    for how in ("mul", "clamp"):
        for name, make in forms.items():
            if name in ("list of lists", "pandas DataFrame"):
                continue
            _caller(
                f"{name} given to a model that edits it ({how})",
                make,
                "fit",
                model=lambda how=how: M.EditsInput(how).double(),
            )

    def dict_inputs(entry):
        def setup():
            model = M.EditsDictInput().double()
            data = {
                "x": torch.as_tensor(M.mlp_data(40)),
                "scale": torch.linspace(0.5, 1.5, 40, dtype=torch.float64),
            }
            ref = R.brute_lib(model, data, ["fc2", "fc3"])
            lib = LIBTransformer(model, "fc2", downstream_layers=["fc3"])
            if entry != "fit":
                lib.fit(data)

            def check(result):
                if entry != "fit":
                    return None
                return R.compare_lambdas(result.lambdas_, ref["fc2"]["lambdas"], 1e-7)

            return Trial(
                lambda: ENTRIES[entry](lib, data), check, watch={"data": data, "model": model}
            )

        return setup

    for entry in ("fit", "transform", "score", "interaction_graph"):
        add(
            CALLER,
            f"dict of tensors edited in place by the model: {entry}",
            dict_inputs(entry),
            quick=entry == "fit",
        )

    def kwargs_case(entry, which):
        def setup():
            model = M.EditsKwargs().double()
            kw = (
                {"shift": torch.zeros(6, dtype=torch.float64)}
                if which == "tensor"
                else ({"log": []} if which == "list" else {"cfg": {"scale": 1.0}})
            )
            lib = LIBTransformer(model, "fc2", downstream_layers=["fc3"], forward_kwargs=kw)
            X = M.mlp_data(40)
            ref = R.brute_lib(model, X, ["fc2", "fc3"], kwargs=copy.deepcopy(kw))
            if entry != "fit":
                lib.fit(X)

            def check(result):
                if entry != "fit":
                    return None
                return R.compare_lambdas(result.lambdas_, ref["fc2"]["lambdas"], 1e-7)

            # save cannot store a tensor in forward_kwargs (documented): it must say so.
            unsaved = entry == "save and load" and which == "tensor"
            return Trial(
                lambda: ENTRIES[entry](lib, X),
                check,
                raises=Raises("forward_kwargs") if unsaved else None,
                either=unsaved,
                watch={"forward_kwargs": kw, "model": model, "X": X},
            )

        return setup

    for which in ("tensor", "list", "dict"):
        for entry in ("fit", "transform", "score", "interaction_graph", "save and load"):
            add(
                CALLER,
                f"forward_kwargs {which} edited in place: {entry}",
                kwargs_case(entry, which),
            )

    def arguments(fn):
        def setup():
            model, X = M.tanh_mlp(), M.mlp_data(60)
            lib = LIBTransformer(model, "fc1", downstream_layers=["fc2", "fc3"]).fit(X)
            graph = lib.interaction_graph(X)
            y = np.arange(60) % 3
            ks = [0, 2, 1]
            sections = [("fc1", "fc2"), ["fc2", "fc3"]]
            labels = ["a", "b", "c"]
            call = {
                "ablation_curve": lambda: ablation_curve(lib, X, y, n_features=ks),
                "edges_needed": lambda: edges_needed(lib, graph, X, y, sections=sections),
                "graph.summary": lambda: graph.summary(labels=labels),
                "graph.plot": lambda: graph.plot(labels=labels),
                "graph.modules": lambda: graph.modules(),
            }[fn]
            return Trial(
                call,
                watch={
                    "X": X,
                    "y": y,
                    "n_features": ks,
                    "sections": sections,
                    "graph": graph,
                    "labels": labels,
                    "estimator": lib,
                },
            )

        return setup

    for fn in ("ablation_curve", "edges_needed", "graph.summary", "graph.plot", "graph.modules"):
        add(CALLER, f"{fn}: its arguments", arguments(fn))


# -- stale bases -------------------------------------------------------------------------------


def _masked_fit():
    model = M.Masked().double()
    X = M.positions_data(40)[..., :3]
    lib = LIBTransformer(model, "fc2", downstream_layers=["out"]).fit(X)
    return model, X, lib


def _gpt_fit():
    """A PCA fit (no Jacobians: fast) of a GPT-2; what goes stale is the same."""
    model = copy.deepcopy(M.gpt2_eval())
    ids = M.token_ids(8, 6)
    lib = LIBTransformer(
        model,
        "transformer.h.1",
        downstream_layers=["transformer.ln_f"],
        output="logits",
        forward_kwargs=dict(M.KW),
        basis="pca",
    ).fit(ids)
    return model, ids, lib


def _edit(fn):
    def change(model):
        with torch.no_grad():
            fn(model)

    return change


CHANGES = {
    # the masked model
    "causal -inf mask moved": (
        _masked_fit,
        _edit(lambda m: m.causal.copy_(torch.full((4, 4), -torch.inf).triu(2))),
    ),
    "a -inf gate moved": (
        _masked_fit,
        _edit(lambda m: m.gate.copy_(torch.tensor([-torch.inf, 0.0, 0, 0, 0, 0]))),
    ),
    "a -inf gate removed": (_masked_fit, _edit(lambda m: m.gate.zero_())),
    "activation module swapped (Tanh -> GELU)": (
        _masked_fit,
        lambda m: setattr(m, "act", nn.GELU()),
    ),
    "float attribute (temperature)": (_masked_fit, lambda m: setattr(m, "temperature", 2.0)),
    "bool attribute (scale_scores)": (_masked_fit, lambda m: setattr(m, "scale_scores", False)),
    "LayerNorm eps": (_masked_fit, lambda m: setattr(m.norm, "eps", 0.5)),
    "LayerNorm affine weight via .data": (_masked_fit, lambda m: m.norm.weight.data.mul_(2)),
    "a weight edited through numpy": (
        _masked_fit,
        lambda m: m.fc2.weight.detach().numpy().__setitem__((0, 0), 5.0),
    ),
    "an optimiser step": (_masked_fit, lambda m: _sgd_step(m)),
    "other weights loaded": (
        _masked_fit,
        lambda m: m.load_state_dict(_other_masked().state_dict()),
    ),
    "a module replaced by a new Linear": (
        _masked_fit,
        lambda m: setattr(m, "out", nn.Linear(6, 2).double()),
    ),
    "half precision round trip": (_masked_fit, lambda m: m.half().double()),
    "a forward hook that scales the output": (
        _masked_fit,
        lambda m: m.out.register_forward_hook(lambda mod, a, out: out * 3),
    ),
    "a forward pre-hook that shifts fc2's input": (
        _masked_fit,
        lambda m: m.fc2.register_forward_pre_hook(lambda mod, a: (a[0] + 1,)),
    ),
    "forward method replaced on the instance": (
        _masked_fit,
        lambda m: setattr(m.fc2, "forward", lambda x: x * 0),
    ),
    # GPT-2
    "GPT-2: MLP activation swapped": (
        _gpt_fit,
        lambda m: setattr(m.transformer.h[1].mlp, "act", nn.ReLU()),
    ),
    "GPT-2: ln_f eps": (_gpt_fit, lambda m: setattr(m.transformer.ln_f, "eps", 0.3)),
    "GPT-2: attention unscaled": (
        _gpt_fit,
        lambda m: setattr(m.transformer.h[1].attn, "scale_attn_weights", False),
    ),
    "GPT-2: a position embedding row": (
        _gpt_fit,
        _edit(lambda m: m.transformer.wpe.weight[3].add_(0.5)),
    ),
    "GPT-2: tied embedding edited through lm_head": (
        _gpt_fit,
        _edit(lambda m: m.lm_head.weight[5].mul_(2)),
    ),
}


def _sgd_step(model):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(4, 4, 3, dtype=torch.float64)).sum().backward()
    opt.step()


def _other_masked():
    torch.manual_seed(7)
    other = M.Masked().double()
    with torch.no_grad():
        for p in other.parameters():
            p.normal_()
    return other


METHODS = {
    "transform": lambda lib, X: lib.transform(X),
    "score": lambda lib, X: lib.score(X),
    "interaction_graph": lambda lib, X: lib.interaction_graph(X),
    "ablation_curve": lambda lib, X: ablation_curve(lib, X, n_features=[1]),
    "transform_tokens": lambda lib, X: lib.transform_tokens(X),
}


def _stale(change, method):
    make, edit = CHANGES[change]

    def setup():
        model, X, lib = make()
        edit(model)
        return Trial(
            lambda: METHODS[method](lib, X),
            warns=StaleBasisWarning,
            stale_ok=True,
            raises=Raises(r"changed|stale|model"),
            either=True,
        )

    return setup


def register_stale():
    for change in CHANGES:
        methods = ["transform", "score"] if change.startswith("GPT") else list(METHODS)
        for method in methods:
            add(
                STALE,
                f"{change}: {method}",
                _stale(change, method),
                quick=method == "transform" and "mask" in change,
            )

    same = {
        "train() then eval()": lambda m: m.train().eval(),
        "left in train mode": lambda m: m.train(),
        "requires_grad_(False)": lambda m: m.requires_grad_(False),
        "the same weights loaded": lambda m: m.load_state_dict(copy.deepcopy(m.state_dict())),
        "a module replaced by a deep copy": lambda m: setattr(m, "norm", copy.deepcopy(m.norm)),
        "run forward under no_grad": lambda m: _run(m),
        "zero_grad after a backward": lambda m: _backward_then_zero(m),
        "float() then double() (exact)": lambda m: m.float().double(),
        "a new plain attribute the forward ignores": lambda m: setattr(m, "note", "hello"),
    }
    for name, edit in same.items():

        def setup(edit=edit):
            model, X, lib = _masked_fit()
            want = lib.transform(X)
            edit(model)
            return Trial(
                lambda: lib.transform(X), lambda got: R.close(got, want, 0, 0, what="transform")
            )

        add(NOT_STALE, f"{name}: transform", setup)

    def set_params_copy():
        model, X, lib = _masked_fit()
        want = lib.transform(X)
        lib.set_params(model=pickle.loads(pickle.dumps(model)))
        return Trial(
            lambda: lib.transform(X), lambda got: R.close(got, want, 0, 0, what="transform")
        )

    add(NOT_STALE, "set_params(model=an unpickled copy): transform", set_params_copy)


def _run(model):
    with torch.no_grad():
        model(torch.randn(2, 4, 3, dtype=torch.float64))


def _backward_then_zero(model):
    model(torch.randn(2, 4, 3, dtype=torch.float64)).sum().backward()
    model.zero_grad()
