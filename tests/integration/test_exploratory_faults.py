"""No swallowed faults: one-time faults injected into every exploratory call of a fit.

A fit calls the model well beyond its passes: to choose each section's
route (reading the probe, tracing with ``torch.fx`` or ``torch.export``,
detecting closed forms and checking them against autograd) and to price the
routes.  A model whose forward raises on its ``N``-th call, once, shows
what each call does with a failure:

- out of memory (``torch.OutOfMemoryError``, a ``RuntimeError`` or
  ``MemoryError`` saying so), ``KeyboardInterrupt`` and ``SystemExit``
  propagate from every call, the user's model untouched and the estimator
  as it was;
- any other error propagates from a real pass (the inspection and checks of
  the model, the memory measurement, the passes), naming the batch; from an
  exploratory call it falls back with a warning naming the section and the
  reason, and the fit equals the fault-free one.  Tracing is the exception:
  ``torch.fx`` and ``torch.export`` fail on much real code (Hugging Face's
  GPT-2 and BERT among it), so a failure there only means that way of
  tracing does not apply (the route lines of ``verbose=True`` say why).
"""

import sys
import warnings

import numpy as np
import pytest
import torch
from _faults import FATAL as STOPPING
from torch import nn
from toy_models import GPT2_VOCAB, MixPositions, tiny_gpt2

from sklearn_lib import LIBTransformer

# -- the fault and the models --------------------------------------------------------

#: Functions of the package whose calls of the model only decide how the fit computes.
EXPLORATORY = {"decide_routes", "row_seconds"}


class Fault:
    """Raises ``error()`` on the forward call ``at`` (counted from 0), once, and notes
    where each call came from.  Shared by the model's private copies."""

    def __init__(self):
        self.arm()

    def arm(self, at=None, error=None):
        self.calls, self.at, self.error, self.sites, self.raised = 0, at, error, [], None

    def tick(self, x):
        self.sites.append(_site(x))
        self.calls += 1
        if self.calls - 1 == self.at:
            self.at, self.raised = None, self.error()
            raise self.raised

    def __deepcopy__(self, memo):
        return self


def _site(x):
    """``"tracing"`` (fx's proxies, torch.export's fake tensors), ``"exploratory"`` or
    ``"pass"``, by the caller's frames."""
    if type(x) is not torch.Tensor:
        return "tracing"
    frame, names = sys._getframe(2), set()
    while frame is not None:
        names.add(frame.f_code.co_name)
        frame = frame.f_back
    return "exploratory" if names & EXPLORATORY else "pass"


class Mixer(nn.Module):
    """``head(mix(tanh(embed(x))))``: ``mix`` mixes positions (the traced section's form,
    by fx), ``head`` is affine (the affine route, proved by fx and checked on values)."""

    def __init__(self, fault):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.mix, self.head = nn.Linear(3, 5), MixPositions(4, 2, 5), nn.Linear(5, 3)
        self.fault = fault

    def forward(self, x):
        self.fault.tick(x)
        return self.head(self.mix(torch.tanh(self.embed(x))))


class ExportedMixer(Mixer):
    """As :class:`Mixer`, with a nonlinear head, and a forward fx cannot trace (``len`` of
    its input, as much user code has): the traced section's form comes from torch.export."""

    def __init__(self, fault):
        super().__init__(fault)
        self.head = nn.Sequential(nn.Linear(5, 3), nn.Tanh())

    def forward(self, x):
        self.fault.tick(x)
        scale = len(x) / len(x)  # fx: "'len' is not supported in symbolic tracing"
        return self.head(self.mix(torch.tanh(self.embed(x)))) * scale


MODELS = {"fx": Mixer, "export": ExportedMixer}

#: The calls each model's tests inject into, within a budget of seconds: every one of a
#: fit of :class:`Mixer`; of :class:`ExportedMixer` (whose fits export), those beyond the
#: passes, and its exports alone for the errors that must propagate.
INJECTED = {
    "fx": {"fatal": ("exploratory", "tracing"), "other": ("exploratory", "tracing", "pass")},
    "export": {"fatal": ("tracing",), "other": ("exploratory", "tracing")},
}


def _X():
    return np.random.default_rng(0).normal(size=(64, 4, 3))


def _estimator(model):
    return LIBTransformer(model, "mix", downstream_layers=["head"], verbose=True).fit(_X())


@pytest.fixture(scope="module", params=list(MODELS))
def fitted(request):
    """The fault-free fit, the fault, where each forward call of the fit came from, and
    which of them the tests inject into."""
    fault = Fault()
    model = MODELS[request.param](fault).double()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fault-free fit warns of nothing
        lib = _estimator(model)
    return lib, fault, list(fault.sites), INJECTED[request.param]


def _lambdas(lib):
    return {name: basis.lambdas for name, basis in lib.bases_.items()}


def _fitted_state(lib):
    return {k: v for k, v in vars(lib).items() if k.endswith("_") and not k.startswith("_")}


def _refit(lib, fault, at, error):
    """``lib.fit`` with ``error()`` raised on forward call ``at``: (the exception or None,
    the warnings' messages, the error injected)."""
    fault.arm(at, error)
    raised = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            lib.fit(_X())
        except BaseException as exc:  # what propagates is the test's subject
            raised = exc
    injected = fault.raised
    fault.arm()
    assert all(w.filename == __file__ for w in caught)  # at the user's line: lib.fit above
    return raised, [str(w.message) for w in caught], injected


def _causes(exc):
    while exc is not None:
        yield exc
        exc = exc.__cause__


FATAL = {**STOPPING, "SystemExit": lambda: SystemExit(3)}


# -- the tests -----------------------------------------------------------------------


def test_a_fit_makes_exploratory_calls_of_every_kind(fitted):
    """What the tests below inject into: a fit's calls of the model beyond its passes."""
    _, _, sites, _ = fitted
    assert {"tracing", "exploratory", "pass"} <= set(sites)
    assert sites.count("exploratory") + sites.count("tracing") >= 5


@pytest.mark.parametrize("error", list(FATAL))
def test_out_of_memory_and_stops_propagate_from_every_exploratory_call(fitted, error):
    lib, fault, sites, injected = fitted
    before, lambdas = _fitted_state(lib), _lambdas(lib)
    state = {k: v.clone() for k, v in lib.model.state_dict().items()}
    for at in [n for n, site in enumerate(sites) if site in injected["fatal"]]:
        raised, _, injected = _refit(lib, fault, at, FATAL[error])
        assert raised is injected, (at, sites[at], raised)
        # The estimator as it was: the same objects, not refitted ones.
        after = _fitted_state(lib)
        assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    np.testing.assert_array_equal(lib.bases_["mix"].lambdas, lambdas["mix"])
    assert all(torch.equal(v, state[k]) for k, v in lib.model.state_dict().items())
    assert lib.model.training and not lib.model.mix._forward_pre_hooks


def test_out_of_memory_propagates_from_every_call():
    """The real passes too (inspection, checks, memory measurement, the passes)."""
    fault = Fault()
    lib = _estimator(Mixer(fault).double())
    sites = fault.sites
    for at in range(len(sites)):
        raised, _, injected = _refit(lib, fault, at, FATAL["OutOfMemoryError"])
        assert raised is injected, (at, sites[at], raised)


def test_other_faults_fall_back_with_a_warning_naming_the_section(fitted):
    lib, fault, sites, injected = fitted
    reference = _lambdas(lib)
    for at, site in enumerate(sites):
        if site not in injected["other"]:
            continue
        raised, caught, error = _refit(lib, fault, at, lambda: RuntimeError("injected fault"))
        where = (at, site, raised, caught)
        if site == "pass":
            # A real pass: the error propagates, naming the batch and the fault.
            assert isinstance(raised, ValueError) and "injected fault" in str(raised), where
            assert error in _causes(raised), where
            continue
        assert raised is None, where
        named = [m for m in caught if "injected fault" in m]
        if site == "exploratory":
            assert named and all("'mix'" in m or "'head'" in m for m in named), where
        else:
            # Tracing: a way of tracing that does not apply, no fault of the fit's.
            assert not caught, where
        got = _lambdas(lib)
        for name, expected in reference.items():
            scale = np.abs(expected).max()
            np.testing.assert_allclose(got[name], expected, rtol=1e-9, atol=1e-12 * scale)


def test_gpt2_fits_without_a_warning(capsys):
    """Tracing that does not apply is no fault: fx fails on Hugging Face's GPT-2 ("code:
    co_varnames is too small"), and torch.export takes it.  None of it warns.  (BERT's
    layers and a conv net's stages fit without a warning too: fx fails on BERT with
    "Proxy object cannot be iterated"; checked by hand, too slow for a test here.)"""
    pytest.importorskip("transformers")
    ids = np.random.default_rng(0).integers(0, GPT2_VOCAB, size=(12, 5))
    params = dict(output="logits", forward_kwargs={"use_cache": False}, verbose=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lib = LIBTransformer(tiny_gpt2(), "transformer.h.0", downstream_layers=["transformer.ln_f"],
                             **params).fit(ids)  # fmt: skip
    assert lib.n_components_ > 0
    # The route lines say how: fx failed, the export serves.
    assert "M' by closed-form rows (The traced section's products (torch.export)" in (
        capsys.readouterr().err
    )
