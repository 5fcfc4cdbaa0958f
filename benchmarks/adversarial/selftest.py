"""Controls of the harness: cases built to fail in one known way each.

``adversarial_review.py --self-test`` runs them and checks that each is classified as
the kind it was built for, so that a review of all OK means the checks can fail.
"""

import os

import numpy as np
import torch

from . import models as M
from . import reference as R
from .harness import Case, Fault, Raises, Trial, run_case, run_isolated, temp_dir


def _mutates_model():
    model = M.tanh_mlp()

    def action():
        with torch.no_grad():
            model.fc2.weight[0, 0] += 1e-12

    return Trial(action, watch={"model": model})


def _mutates_flag():
    model = M.tanh_mlp()
    return Trial(lambda: model.train(False) and model.fc1.train(), watch={"model": model})


def _mutates_array():
    X = M.mlp_data(5)

    def action():
        X[2, 1] = np.nextafter(X[2, 1], 1)

    return Trial(action, watch={"X": X})


def _wrong_result():
    return Trial(lambda: np.ones(3), lambda got: R.close(got, np.ones(3) + 1e-6, 1e-9, 0))


def _deep():
    return Trial(lambda: np.linalg.inv(np.zeros((2, 3))), raises=Raises("matrix"))


def _unclear():
    def action():
        raise KeyError("x")

    return Trial(action, raises=Raises("x"))


def _unnamed():
    def action():
        raise ValueError("something went wrong")

    return Trial(action, raises=Raises("n_components"))


def _swallowed():
    fault = Fault(0, lambda: torch.OutOfMemoryError("CUDA out of memory (injected fault)"))

    def action():
        try:
            fault.tick()
        except RuntimeError:
            return "recovered"

    return Trial(action, fault=fault)


def _converted():
    fault = Fault(0, lambda: KeyboardInterrupt("injected fault"))

    def action():
        try:
            fault.tick()
        except KeyboardInterrupt as exc:
            raise ValueError("stopped") from exc

    return Trial(action, fault=fault)


def _lost_file():
    path = os.path.join(temp_dir(), "f.npz")
    with open(path, "wb") as f:
        f.write(b"data")
    return Trial(lambda: os.remove(path), files=[path])


def _litter():
    path = os.path.join(temp_dir(), "f.npz")
    with open(path, "wb") as f:
        f.write(b"data")
    return Trial(lambda: open(path + ".tmp", "wb").close(), files=[path])


def _memory():
    return Trial(lambda: np.ones(64 * 2**20).sum(), mem_mb=100)


def _refused():
    def action():
        raise ValueError("X is bad")

    return Trial(action)


def _false_alarm():
    from sklearn_lib import LIBTransformer

    model = M.tanh_mlp()
    lib = LIBTransformer(model, "fc2").fit(M.mlp_data(20))
    with torch.no_grad():
        model.fc1.weight.mul_(2)
    return Trial(lambda: lib.transform(M.mlp_data(3)))


def _missing_warning():
    return Trial(lambda: 1, warns=UserWarning)


CONTROLS = {
    "a weight moved by 1e-12": ("mutated", _mutates_model, False),
    "a module's training flag": ("mutated", _mutates_flag, False),
    "one value of an array": ("mutated", _mutates_array, False),
    "a result off by 1e-6": ("wrong", _wrong_result, False),
    "numpy's own error": ("deep", _deep, False),
    "a KeyError": ("unclear", _unclear, False),
    "a message that names nothing": ("unclear", _unnamed, False),
    "an OOM caught": ("swallowed", _swallowed, False),
    "a KeyboardInterrupt turned into ValueError": ("swallowed", _converted, False),
    "a file removed": ("lost_file", _lost_file, False),
    "a file left beside": ("lost_file", _litter, False),
    "512 MiB allocated": ("memory", _memory, False),
    "512 MiB allocated, isolated": ("memory", _memory, True),
    "a valid input refused": ("refused", _refused, False),
    "an unexpected StaleBasisWarning": ("unclear", _false_alarm, False),
    "an expected warning missing": ("wrong", _missing_warning, False),
}


def run():
    """``(passed, lines)``: each control against the kind it was built for."""
    lines, passed = [], True
    for name, (kind, setup, isolate) in CONTROLS.items():
        case = Case("self-test", name, setup, isolate=isolate, timeout=60)
        outcome = run_isolated(case) if isolate else run_case(case)
        ok = outcome.kind == kind
        passed &= ok
        lines.append(
            f"{'ok ' if ok else 'BAD'} {name}: expected {kind}, got {outcome.kind} "
            f"({outcome.reason[:100]})"
        )
    return passed, lines
