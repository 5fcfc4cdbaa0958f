"""Faults injected into the model on its N-th call, and threads racing a refit.

A fault is raised by the model's forward (on entry, inside a section, or in a
backward pass) on call ``N`` of an entry point, for ``N`` spread over the calls a
fault-free run makes (counted first): out of memory (``torch.OutOfMemoryError``, a
``RuntimeError`` saying "CUDA out of memory"), ``MemoryError``, ``KeyboardInterrupt``,
``SystemExit`` and a plain ``RuntimeError``.  The fatal ones must reach the caller as
themselves, the plain one as itself or chained to a ``ValueError`` naming the batch,
or be recovered from with the fault-free result; the estimator, the model and the
data must be as before, and the next call must work.
"""

import functools
import os
import threading
import warnings

import numpy as np
import torch
from sklearn.base import clone

from sklearn_lib import (
    ActivationTransformer,
    FeatureDashboard,
    LIBTransformer,
    ablation_curve,
    features_needed,
)

from . import fixtures as F
from . import models as M
from . import reference as R
from .harness import Fault, Trial, add, in_threads, temp_dir

FAULTS = "faults: injected on the N-th call"
THREADS = "threads: racing a refit"

MAKE = {
    "torch.OutOfMemoryError": lambda: torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB (injected fault)"
    ),
    "RuntimeError('CUDA out of memory')": lambda: RuntimeError(
        "CUDA out of memory. Tried to allocate 8.00 GiB (injected fault)"
    ),
    "MemoryError": lambda: MemoryError("injected fault"),
    "KeyboardInterrupt": lambda: KeyboardInterrupt("injected fault"),
    "SystemExit": lambda: SystemExit("injected fault"),
    "RuntimeError": lambda: RuntimeError("injected fault"),
}

#: model kind -> (make model from a fault, X, layer, downstream)
KINDS = {
    "entry": (lambda f: M.faulty_mlp(f, "entry"), lambda: M.mlp_data(70), "fc2", ["fc3"]),
    "section": (lambda f: M.faulty_mlp(f, "section"), lambda: M.mlp_data(70), "fc2", ["fc3"]),
    "backward": (lambda f: M.faulty_mlp(f, "backward"), lambda: M.mlp_data(70), "fc2", ["fc3"]),
    "traced mixer": (
        lambda f: M.TickingMixer(f).double(),
        lambda: M.positions_data(70),
        "mix",
        ["head"],
    ),
}

#: entry -> (parameters of the estimator, the call)
ENTRIES = {
    "fit": ({}, lambda lib, X, path: lib.fit(X)),
    "fit (autograd)": ({"jacobian": "autograd"}, lambda lib, X, path: lib.fit(X)),
    "fit (trapezoidal)": (
        {"integration": "trapezoidal", "n_intervals": 2},
        lambda lib, X, path: lib.fit(X),
    ),
    "fit (compute_graph)": ({"compute_graph": True}, lambda lib, X, path: lib.fit(X)),
    "fit (n_stochastic_sources='auto')": (
        {"n_stochastic_sources": "auto"},
        lambda lib, X, path: lib.fit(X),
    ),
    "transform": ({}, lambda lib, X, path: lib.transform(X)),
    "score": ({}, lambda lib, X, path: lib.score(X)),
    "interaction_graph": ({}, lambda lib, X, path: lib.interaction_graph(X)),
    "ablation_curve": ({}, lambda lib, X, path: ablation_curve(lib, X, n_features=[0, 2])[1]),
    "features_needed": ({}, lambda lib, X, path: features_needed(lib, X, tolerance=0.05).n_needed),
    "ActivationTransformer": (
        {},
        lambda lib, X, path: ActivationTransformer(lib.model, lib.layer).fit(X).transform(X),
    ),
    "load": ({}, lambda lib, X, path: LIBTransformer.load(path, lib.model).transform(X[:5])),
    "FeatureDashboard": ({}, lambda lib, X, path: _dashboard_values(lib, X)),
}


def _dashboard_values(lib, X):
    """A dashboard's examples and ablations (with the graph), as one array."""
    shown = FeatureDashboard.from_estimator(lib, X, n_features=2, n_examples=3, ablation=True)
    cards = [c for node in shown.data["views"][0]["nodes"] for c in node["features"]]
    found = shown.examples["LIB"][lib.layer]
    return np.concatenate([found.values.ravel(), [c["ablation"] for c in cards]])


#: Errors that must reach the caller as themselves.
FATAL_NAMES = {
    "torch.OutOfMemoryError",
    "RuntimeError('CUDA out of memory')",
    "MemoryError",
    "KeyboardInterrupt",
    "SystemExit",
}


def _result(out):
    """What a fault-free run's result is compared on."""
    if isinstance(out, LIBTransformer):
        return [out.bases_[n].lambdas for n in out.bases_ if n != "output"]
    if hasattr(out, "edges"):
        return [out.edges[s] for s in out.sections]
    return out


def _fitted(kind, entry, fault, fit=True):
    """``(model, X, lib, path)``: a fitted estimator of a model ticking ``fault`` (disarmed),
    and its saved file for ``load``."""
    make, make_X, layer, downstream = KINDS[kind]
    model = make(fault)
    X = make_X()
    params, _ = ENTRIES[entry]
    lib = LIBTransformer(model, layer, downstream_layers=downstream, random_state=0, **params)
    path = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fit:
            lib.fit(X)
        if entry == "load":
            path = os.path.join(temp_dir(), "fit.npz")
            lib.save(path)
    return model, X, lib, path


@functools.cache
def _clean_run(kind, entry):
    """``(calls, result)`` of a fault-free run of ``entry`` on a model of ``kind``."""
    fault = Fault()
    model, X, lib, path = _fitted(kind, entry, fault)
    fault.calls = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = ENTRIES[entry][1](lib, X, path)
    return fault.calls, _result(out)


def _same(got, want):
    if isinstance(want, list):
        if len(got) != len(want):
            return f"{len(got)} results, expected {len(want)}"
        for g, w in zip(got, want):
            problem = R.close(g, w, 1e-9, 1e-12 * max(np.abs(w).max(initial=0), 1))
            if problem:
                return problem
        return None
    return R.close(got, want, 1e-9, 1e-12)


def _fault_case(kind, entry, error, at):
    def setup():
        _, want = _clean_run(kind, entry)
        fault = Fault()
        # A traced model's fit is slow: its fit cases start from an unfitted estimator
        # (which a failed fit must leave unfitted).
        fit = not (kind == "traced mixer" and entry.startswith("fit"))
        model, X, lib, path = _fitted(kind, entry, fault, fit=fit)
        fault.at, fault.make, fault.calls = at, MAKE[error], 0
        call = ENTRIES[entry][1]

        def after():
            # The next call works and gives the fault-free result.
            fault.at = None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    out = call(lib, X, path)
                except Exception as exc:  # noqa: BLE001 - reported as the case's finding
                    return f"the call after the fault failed: {type(exc).__name__}: {exc}"[:200]
            problem = _same(_result(out), want)
            return f"the call after the fault: {problem}" if problem else None

        watch = {"model": model, "X": X}
        if error in FATAL_NAMES or not entry.startswith("fit"):
            watch["estimator"] = lib  # a failed fit leaves it as it was
        return Trial(
            lambda: _result(call(lib, X, path)),
            lambda got: _same(got, want),
            fault=fault,
            watch=watch,
            after=after,
            files=[path] if path else [],
        )

    return setup


def _points(calls, spread):
    """Distinct call indices spread over ``range(calls)``: the first, the last and up to
    ``spread`` between."""
    if calls <= 0:
        return []
    return sorted({int(p) for p in np.linspace(0, calls - 1, spread + 2).round()})


ALL = list(MAKE)
THREE = ["torch.OutOfMemoryError", "KeyboardInterrupt", "RuntimeError"]

#: (kind, entry) -> (errors injected, calls between the first and the last injected into)
PLAN = {
    ("entry", "fit"): (ALL, 4),
    ("traced mixer", "fit"): (ALL, 2),
    ("section", "fit"): (THREE, 4),
    ("backward", "fit"): (THREE, 2),
    ("entry", "fit (autograd)"): (THREE, 2),
    ("entry", "fit (trapezoidal)"): (THREE, 2),
    ("entry", "fit (compute_graph)"): (THREE, 2),
    ("entry", "fit (n_stochastic_sources='auto')"): (THREE, 2),
    ("backward", "fit (compute_graph)"): (THREE, 1),
    ("backward", "interaction_graph"): (THREE, 1),
    ("entry", "transform"): (ALL, 1),
    ("entry", "score"): (THREE, 1),
    ("entry", "interaction_graph"): (THREE, 1),
    ("entry", "ablation_curve"): (THREE, 1),
    ("entry", "features_needed"): (THREE, 1),
    ("entry", "ActivationTransformer"): (THREE, 1),
    ("entry", "load"): (THREE, 1),
    ("entry", "FeatureDashboard"): (THREE, 1),
    ("section", "FeatureDashboard"): (THREE, 1),
    ("section", "interaction_graph"): (THREE, 1),
    ("traced mixer", "interaction_graph"): (THREE, 1),
    ("traced mixer", "transform"): (THREE, 0),
}


def register_faults():
    """Counts each entry's calls in a fault-free run first (some seconds in all), so that
    every case injects into a call that happens."""
    for (kind, entry), (errors, spread) in PLAN.items():
        calls, _ = _clean_run(kind, entry)
        for error in errors:
            for at in _points(calls, spread):
                add(
                    FAULTS,
                    f"{kind} model, {entry}: {error} on call {at} of {calls}",
                    _fault_case(kind, entry, error, at),
                    quick=at == 0 and entry == "fit" and kind == "entry",
                )


# -- threads -----------------------------------------------------------------------------------


def _race(reader, writer, n_reads=12):
    """Run ``reader()`` ``n_reads`` times in one thread while ``writer()`` runs in another;
    the readers' results (or exceptions) in order."""
    results = []
    start = threading.Barrier(2)

    def read():
        start.wait()
        for _ in range(n_reads):
            try:
                results.append(reader())
            except Exception as exc:  # noqa: BLE001 - the race's outcome
                results.append(exc)

    def write():
        start.wait()
        writer()

    in_threads(read, write, timeout=120)
    return results


def _one_of(results, candidates, what):
    for i, r in enumerate(results):
        if isinstance(r, Exception):
            return f"read {i} failed: {type(r).__name__}: {r}"[:200]
        if not any(_same(r, c) is None for c in candidates):
            return f"read {i} of {what} matches neither fit"
    return None


def register_threads():
    def two_fits():
        model = M.tanh_mlp()
        X1, X2 = M.mlp_data(80, seed=1), M.mlp_data(80, seed=2) * 2
        a = LIBTransformer(model, "fc2", downstream_layers=["fc3"]).fit(X1)
        b = clone(a).fit(X2)
        return model, X1, X2, a, b

    def reader_case(name, read, extract=lambda r: r):
        def setup():
            model, X1, X2, a, b = two_fits()
            lib = clone(a).fit(X1)
            candidates = [extract(read(a, X1)), extract(read(b, X1))]

            def writer():
                for i in range(6):
                    lib.fit(X2 if i % 2 == 0 else X1)

            return Trial(
                lambda: [
                    extract(r) if not isinstance(r, Exception) else r
                    for r in _race(lambda: read(lib, X1), writer)
                ],
                lambda results: _one_of(results, candidates, name),
                watch={"model": model, "X1": X1, "X2": X2},
            )

        add(
            THREADS,
            f"{name} while another thread refits",
            setup,
            isolate=True,
            timeout=120,
            quick=name == "transform",
        )

    reader_case("transform", lambda lib, X: lib.transform(X))
    reader_case("score", lambda lib, X: lib.score(X))
    reader_case(
        "interaction_graph",
        lambda lib, X: lib.interaction_graph(X),
        extract=lambda g: [g.edges[s] for s in g.sections],
    )
    reader_case("ablation_curve", lambda lib, X: ablation_curve(lib, X, n_features=[1, 3])[1])
    reader_case("transform_tokens", lambda lib, X: lib.transform_tokens(X)[0])
    reader_case(
        "inverse_transform",
        lambda lib, X: lib.inverse_transform(np.ones((3, 8))),
    )
    reader_case(
        "lambdas_ with components_",
        lambda lib, X: np.concatenate([lib.lambdas_, lib.components_.ravel()]),
    )

    def save_race():
        model, X1, X2, a, b = two_fits()
        lib = clone(a).fit(X1)
        folder = temp_dir()
        path = os.path.join(folder, "fit.npz")
        want = [a.transform(X1), b.transform(X1)]

        def read():
            lib.save(path)
            return LIBTransformer.load(path, model).transform(X1)

        def writer():
            for i in range(6):
                lib.fit(X2 if i % 2 == 0 else X1)

        def check(results):
            problem = _one_of(results, want, "a saved and loaded fit")
            leftovers = [f for f in os.listdir(folder) if f != "fit.npz"]
            return problem or (f"left {leftovers}" if leftovers else None)

        return Trial(lambda: _race(read, writer, n_reads=8), check, watch={"model": model})

    add(THREADS, "save while another thread refits", save_race, isolate=True, timeout=120)

    def set_params_race():
        model, X1, X2, a, b = two_fits()
        lib = clone(a).fit(X1)
        want = [a.transform(X1)]

        def writer():
            for i in range(30):
                lib.set_params(batch_size=7 if i % 2 else "auto", verbose=False)

        return Trial(
            lambda: _race(lambda: lib.transform(X1), writer),
            lambda results: _one_of(results, want, "transform"),
        )

    add(THREADS, "transform while another thread sets batch_size", set_params_race, isolate=True)

    def two_fitters():
        model, X1, X2, a, b = two_fits()
        lib = clone(a)

        def check(_):
            z = lib.transform(X1)
            if not any(_same(z, c.transform(X1)) is None for c in (a, b)):
                return "after two racing fits, transform matches neither fit"
            lam = lib.bases_[lib.layer].lambdas[: lib.n_components_]
            if not np.array_equal(lam, lib.lambdas_):
                return "lambdas_ and bases_ come from different fits"
            return None

        return Trial(
            lambda: _race(lambda: lib.fit(X1), lambda: lib.fit(X2), n_reads=1),
            check,
            watch={"model": model},
        )

    add(THREADS, "two threads fitting one estimator", two_fitters, isolate=True)

    def shared_model():
        model = M.tanh_mlp()
        Xs = [M.mlp_data(60, seed=s) for s in range(3)]
        want = [LIBTransformer(model, "fc2", downstream_layers=["fc3"]).fit(X).lambdas_ for X in Xs]
        out = [None] * 3

        def action():
            def run(i):
                out[i] = LIBTransformer(model, "fc2", downstream_layers=["fc3"]).fit(Xs[i]).lambdas_

            threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            return out

        return Trial(action, lambda got: _same(got, want), watch={"model": model})

    add(THREADS, "three threads fitting estimators of one model", shared_model, isolate=True)

    def user_trains_meanwhile():
        """The user's thread runs the model in train mode (BatchNorm statistics move)
        while a fit reads it: the fit equals a fit of one of the states it could copy."""
        model = M.stateful_mlp()
        X = M.mlp_data(60).astype(np.float32)
        before = LIBTransformer(model, "fc2").fit(X).lambdas_

        def writer():
            with torch.no_grad():
                for _ in range(20):
                    model(torch.randn(16, 4))

        def check(results):
            lib = results[0]
            if isinstance(lib, Exception):
                return f"{type(lib).__name__}: {lib}"
            return None if lib.lambdas_.shape == before.shape else "another number of features"

        return Trial(
            lambda: _race(lambda: LIBTransformer(model, "fc2").fit(X), writer, n_reads=1),
            check,
            stale_ok=True,
        )

    add(
        THREADS,
        "a fit while the user's thread runs the model in train mode",
        user_trains_meanwhile,
        isolate=True,
    )

    def graph_race():
        lib, X, graph = F.mlp3_fit()
        want = [lib.transform(X)]

        def writer():
            for _ in range(3):
                graph.modules(random_state=0)
                graph.to_networkx()

        return Trial(
            lambda: _race(lambda: lib.transform(X), writer),
            lambda results: _one_of(results, want, "transform"),
            watch={"graph": graph},
        )

    add(THREADS, "graph analysis in a thread beside transform", graph_race, isolate=True)
