"""Run adversarial cases and classify what each one did.

A *case* is a name, a group and a ``setup`` function.  ``setup()`` builds
everything the case needs (models, data, fitted estimators) and returns a
:class:`Trial`: the ``action`` under review (one call of the package, or a
few), and what to expect of it.  Only the action is measured and
classified; a failure in ``setup`` is a harness error, reported apart.

Classification of one case, in this order (the first that applies):

- ``memory``: the process's resident memory grew by more than the case's
  limit while the action ran (sampled every 2 ms; isolated cases run in a
  forked child that is killed at the limit);
- ``hang``: an isolated case ran past its time limit;
- ``swallowed``: an injected out-of-memory error, ``MemoryError``,
  ``KeyboardInterrupt`` or ``SystemExit`` did not reach the caller as
  itself (the call returned, or raised something else in its place);
- ``lost_file``: a watched file is gone or changed, or a temporary file
  was left beside it;
- ``mutated``: a watched object (the user's model, the caller's arrays,
  dicts, tensors, data loaders, the estimator after a failed call) is not
  as it was before the action (see :func:`snapshot`);
- then the result or the error:

  - an error where one is expected is ``ok`` if it is *clear*, else
    ``deep`` or ``unclear`` (:func:`judge_error`);
  - an error where a result is expected is ``refused`` when it is one of
    the package's own clear errors (a valid input refused), else ``deep``
    or ``unclear``;
  - a result where an error is expected, or a result that fails the
    case's independent check, or a missing expected warning, is ``wrong``;
  - a ``StaleBasisWarning`` where the model did not change is ``unclear``
    (a false alarm).

The rule for a clear error (:func:`judge_error`): the exception's innermost
traceback frame, where it was raised, is in the package (``sklearn_lib/``),
in scikit-learn's parameter and data validation that the package delegates
to (``sklearn/utils/_param_validation.py``, ``sklearn/utils/validation.py``),
or in the user's own code (here: the models of ``benchmarks/adversarial``),
and not inside torch, numpy, scipy, transformers or the standard library
(``deep``); its type is one the case allows (by default ``ValueError`` or
``TypeError``, which ``NotFittedError`` and ``InvalidParameterError``
are); and its message, with any notes, matches the case's pattern, which
names the argument or the problem (``unclear`` otherwise).
"""

import atexit
import contextlib
import copy
import dataclasses
import faulthandler
import gc
import io
import os
import pickle
import random
import re
import shutil
import signal
import tempfile
import threading
import time
import traceback
import warnings
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

KINDS = {
    "ok": "OK",
    "wrong": "silently wrong",
    "unclear": "unclear error",
    "deep": "deep traceback",
    "refused": "valid input refused",
    "mutated": "mutated object",
    "lost_file": "lost file",
    "swallowed": "swallowed fault",
    "memory": "excessive memory",
    "hang": "hang",
    "harness": "harness error",
}

PACKAGE = os.sep + "sklearn_lib" + os.sep
DELEGATED = (
    os.path.join("sklearn", "utils", "_param_validation.py"),
    os.path.join("sklearn", "utils", "validation.py"),
)
USER_CODE = os.sep + os.path.join("benchmarks", "adversarial") + os.sep

#: Faults that must reach the caller as themselves.
FATAL = (torch.OutOfMemoryError, MemoryError, KeyboardInterrupt, SystemExit)


# -- what a case expects -----------------------------------------------------------------


@dataclass
class Raises:
    """An expected error: one of ``types``, whose message matches ``match`` (a regex,
    case-insensitive, searched in the message and its notes)."""

    match: str = ""
    types: tuple = (ValueError, TypeError)


@dataclass
class Trial:
    """What ``setup`` returns: the action and what to expect of it.

    Parameters
    ----------
    action : callable
        The call under review; its return value goes to ``check``.
    check : callable, optional
        ``check(result)`` returns None when the result is right, else the reason
        (a short string) it is wrong.  Without it any result is right.
    raises : Raises, optional
        An error is expected; a result is ``wrong`` unless ``either``.
    either : bool
        A clear error or a right result are both fine.
    watch : dict
        Objects that must be unchanged by the action (see :func:`snapshot`).
    files : list of paths
        Files that must still hold their bytes after the action, with no
        temporary file left in their folder.
    fault : Fault, optional
        An injected fault: fatal ones must reach the caller as themselves.
    warns : type, optional
        A warning category the action must emit (when it returns).
    stale_ok : bool
        A StaleBasisWarning is expected or allowed (the model changed).
    mem_mb : float
        Growth of resident memory allowed during the action.
    """

    action: Callable[[], Any]
    check: Callable[[Any], str | None] | None = None
    raises: Raises | None = None
    either: bool = False
    watch: dict = field(default_factory=dict)
    files: list = field(default_factory=list)
    fault: Any = None
    warns: type | None = None
    stale_ok: bool = False
    mem_mb: float = 400.0
    after: Callable[[], str | None] | None = None


@dataclass
class Case:
    group: str
    name: str
    setup: Callable[[], Trial]
    quick: bool = False
    isolate: bool = False
    timeout: float = 120.0


@dataclass
class Outcome:
    group: str
    name: str
    kind: str
    reason: str = ""
    seconds: float = 0.0
    peak_mb: float = 0.0


REGISTRY: list[Case] = []


def case(group, name, *, quick=False, isolate=False, timeout=120.0):
    """Register ``setup`` as a case (a decorator)."""

    def register(setup):
        REGISTRY.append(Case(group, name, setup, quick, isolate, timeout))
        return setup

    return register


def add(group, name, setup, *, quick=False, isolate=False, timeout=120.0):
    """Register ``setup`` as a case."""
    REGISTRY.append(Case(group, name, setup, quick, isolate, timeout))


# -- temporary files -----------------------------------------------------------------------

_TEMP_ROOT = []


def in_threads(*targets, timeout):
    """Run each of ``targets`` in a thread of its own, wait up to ``timeout`` seconds for
    each, and raise the first exception one of them raised."""
    errors = []

    def guarded(target):
        try:
            target()
        except Exception as exc:  # noqa: BLE001 - raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if errors:
        raise errors[0]


def temp_dir():
    """A new folder for one case's files, under one root removed when the review ends
    (forked children leave theirs to the parent)."""
    if not _TEMP_ROOT:
        root = tempfile.mkdtemp(prefix="adversarial-review-")
        owner = os.getpid()
        atexit.register(lambda: os.getpid() == owner and shutil.rmtree(root, True))
        _TEMP_ROOT.append(root)
    return tempfile.mkdtemp(dir=_TEMP_ROOT[0])


# -- injected faults ---------------------------------------------------------------------


class _FaultState:
    """What a :class:`Fault` counts and holds, one object further from the model.

    The package's fingerprint reads a module's plain attributes and one level into
    other objects (a configuration); the fault's moving counters sit a level deeper,
    so arming it is not a change of the model."""

    def __init__(self, at, make):
        self.calls, self.at, self.make, self.raised = 0, at, make, None


class Fault:
    """Raises ``make()`` on call ``at`` (counted from 0) of :meth:`tick`, once.

    Shared by the model's private copies (``deepcopy`` returns it), so the
    package's copies count the same calls as the user's model.
    """

    no_snapshot = True  # its counter moves by design: not part of the model's state

    def __init__(self, at=None, make=None):
        self.state = _FaultState(at, make)

    def __getattr__(self, name):
        if name in ("calls", "at", "make", "raised"):
            return getattr(self.__dict__["state"], name)
        raise AttributeError(name)

    def __setattr__(self, name, value):
        if name in ("calls", "at", "make", "raised"):
            setattr(self.state, name, value)
        else:
            super().__setattr__(name, value)

    def tick(self):
        s = self.state
        s.calls += 1
        if s.at is not None and s.calls - 1 == s.at:
            s.at = None
            s.raised = s.make()
            raise s.raised

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):  # pickling an estimator pickles a fresh, disarmed fault
        return (Fault, ())


# -- snapshots of objects -----------------------------------------------------------------

_MODULE_INTERNALS = frozenset(vars(torch.nn.Module()))


def _tensor_state(t):
    t = t.detach()
    state = (str(t.dtype), tuple(t.shape), str(t.device), str(t.layout))
    if t.is_meta:
        return state
    if t.layout != torch.strided:
        t = t.to_dense()
    data = t.cpu().contiguous().reshape(-1)
    return (*state, data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")


def _module_state(module):
    state = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        grad = None if p.grad is None else _tensor_state(p.grad)
        state[f"param {name}"] = (_tensor_state(p), p.requires_grad, grad, id(p))
    for name, b in module.named_buffers(remove_duplicate=False):
        state[f"buffer {name}"] = (_tensor_state(b), id(b))
    for name, m in module.named_modules(remove_duplicate=False):
        hooks = tuple(
            len(getattr(m, h))
            for h in (
                "_forward_hooks",
                "_forward_pre_hooks",
                "_backward_hooks",
                "_backward_pre_hooks",
                "_state_dict_hooks",
                "_load_state_dict_pre_hooks",
            )
        )
        own = {
            k: snapshot(v, depth=3)
            for k, v in vars(m).items()
            if k not in _MODULE_INTERNALS and not k.startswith("__")
        }
        state[f"module {name or '<model>'}"] = (type(m).__name__, m.training, hooks, own)
    return state


def snapshot(obj, depth=6):
    """A comparable record of ``obj``'s contents (bytes of every array and tensor).

    Modules: every parameter, buffer and gradient (bytes, dtype, shape, device,
    ``requires_grad``, identity), every module's class, ``training`` flag, hooks
    and plain attributes.  Estimators: the parameters (the model by identity)
    and every attribute.  Containers recursively; other objects by their
    ``vars`` or ``repr``.
    """
    if depth < 0:
        return ("...", type(obj).__name__)
    if getattr(type(obj), "no_snapshot", False):
        return ("skipped", type(obj).__name__)
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        return ("value", type(obj).__name__, repr(obj))
    if isinstance(obj, torch.nn.Module):
        return ("module", _module_state(obj))
    if torch.is_tensor(obj):
        return ("tensor", _tensor_state(obj), obj.requires_grad)
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return ("objects", obj.shape, [snapshot(v, depth - 1) for v in obj.ravel()])
        return ("ndarray", obj.dtype.str, obj.shape, obj.tobytes(), obj.flags.writeable)
    if isinstance(obj, np.generic):
        return ("npscalar", obj.dtype.str, obj.tobytes())
    if isinstance(obj, Mapping):
        return (
            "map",
            type(obj).__name__,
            [(repr(k), snapshot(v, depth - 1)) for k, v in obj.items()],
        )
    if isinstance(obj, (list, tuple)):
        return ("seq", type(obj).__name__, [snapshot(v, depth - 1) for v in obj])
    if isinstance(obj, (set, frozenset)):
        return ("set", sorted(repr(v) for v in obj))
    if isinstance(obj, torch.utils.data.DataLoader):
        # The data and how it is batched; not the collate function's own bookkeeping
        # (a tokenizer records the deprecation warnings it gave).
        return ("loader", snapshot(obj.dataset, depth - 1), obj.batch_size, obj.drop_last)
    if type(obj).__module__.startswith("pandas"):
        return ("pandas", pickle.dumps(obj))
    if hasattr(obj, "get_params") and hasattr(obj, "fit"):
        attrs = {
            k: (("identity", id(v)) if k == "model" else snapshot(v, depth - 1))
            for k, v in vars(obj).items()
        }
        return ("estimator", type(obj).__name__, attrs)
    if callable(obj) and not hasattr(obj, "__dict__"):
        return ("callable", id(obj))
    if hasattr(obj, "__dict__"):
        return (
            "object",
            type(obj).__name__,
            {k: snapshot(v, depth - 1) for k, v in vars(obj).items()},
        )
    if dataclasses.is_dataclass(obj):
        return ("dataclass", type(obj).__name__, snapshot(dataclasses.asdict(obj), depth - 1))
    return ("repr", type(obj).__name__, repr(obj)[:200])


def difference(a, b, path=""):
    """The path of the first difference between two snapshots, or None."""
    if type(a) is not type(b):
        return path or "<root>"
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return f"{path} keys {sorted(set(a) ^ set(b))[:3]}"
        for k in a:
            found = difference(a[k], b[k], f"{path}.{k}" if path else str(k))
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{path} (length {len(a)} -> {len(b)})"
        for i, (x, y) in enumerate(zip(a, b)):
            label = x[0] if isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) else i
            found = difference(x, y, f"{path}[{label}]")
            if found:
                return found
        return None
    return None if a == b else (path or "<root>")


# -- the error rule -------------------------------------------------------------------------


def raised_at(exc):
    """``(file, line)`` of the innermost traceback frame: where ``exc`` was raised."""
    tb = exc.__traceback__
    if tb is None:
        return "?", 0
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename, tb.tb_lineno


def origin(exc):
    """``"package"``, ``"user"`` or ``"deep"``: who raised ``exc`` (see the module doc)."""
    filename, _ = raised_at(exc)
    if PACKAGE in filename or filename.endswith(DELEGATED):
        return "package"
    if USER_CODE in filename:
        return "user"
    return "deep"


def message(exc):
    notes = getattr(exc, "__notes__", None) or []
    return " ".join([str(exc), *map(str, notes)])


def describe(exc, limit=150):
    filename, line = raised_at(exc)
    text = re.sub(r"\s+", " ", message(exc))
    if len(text) > limit:
        text = text[:limit] + "..."
    where = os.path.relpath(filename) if filename.startswith("/") else filename
    return f"{type(exc).__name__}: {text} [raised at {where}:{line}]"


def judge_error(exc, raises):
    """``(kind, reason)`` of an error where ``raises`` is expected."""
    if origin(exc) == "deep":
        return "deep", describe(exc)
    if not isinstance(exc, raises.types):
        wanted = "/".join(t.__name__ for t in raises.types)
        return "unclear", f"expected {wanted}, got {describe(exc)}"
    if raises.match and not re.search(raises.match, message(exc), re.IGNORECASE | re.DOTALL):
        return "unclear", f"message does not say /{raises.match}/: {describe(exc)}"
    return "ok", ""


def judge_unexpected_error(exc):
    """``(kind, reason)`` of an error where a result is expected."""
    where = origin(exc)
    if where == "deep":
        return "deep", describe(exc)
    if isinstance(exc, (ValueError, TypeError)):
        return "refused", describe(exc)
    return "unclear", describe(exc)


# -- memory ---------------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid="self"):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


class PeakMemory:
    """Samples the resident memory every 2 ms in a thread; ``peak`` is the growth."""

    def __enter__(self):
        self.start = self.top = rss_bytes()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.002):
            self.top = max(self.top, rss_bytes())

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.top = max(self.top, rss_bytes())
        self.peak = self.top - self.start
        return False


# -- running one case -------------------------------------------------------------------------


def _seed(name):
    seed = zlib.crc32(name.encode())
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (code that draws from the global state)
    torch.manual_seed(seed)


def _file_state(paths):
    state = {}
    for p in paths:
        p = Path(p)
        state[str(p)] = (p.read_bytes() if p.is_file() else None, sorted(os.listdir(p.parent)))
    return state


def _check_files(before):
    for path, (data, listing) in before.items():
        p = Path(path)
        if data is not None and not p.is_file():
            return f"{path} is gone"
        if data is not None and p.read_bytes() != data:
            return f"{path} changed ({len(data)} -> {p.stat().st_size} bytes)"
        extra = sorted(set(os.listdir(p.parent)) - set(listing))
        if extra:
            return f"left {extra[:3]} beside {p.name}"
    return None


def _judge_fault(trial, exc, result):
    """``(kind, reason)`` for a case with an injected fault, or None to go on."""
    fault = trial.fault
    if fault.raised is None:  # the run made fewer calls than the fault-free one counted
        return "harness", f"the fault was never triggered ({fault.calls} calls)"
    injected = fault.raised
    if isinstance(injected, FATAL) or "out of memory" in str(injected):
        if exc is None:
            return "swallowed", f"injected {type(injected).__name__} did not propagate"
        same = exc is injected or (
            type(exc) is type(injected) and str(exc).startswith(str(injected))
        )
        if not same:
            return "swallowed", (
                f"injected {type(injected).__name__} came back as {describe(exc, 100)}"
            )
        return None
    if exc is not None:
        chain, seen = exc, set()
        while chain is not None and id(chain) not in seen:
            if chain is injected or "injected fault" in message(chain):
                return None
            seen.add(id(chain))
            chain = chain.__cause__ or chain.__context__
        return "unclear", f"the injected error was replaced by {describe(exc, 100)}"
    return None


def evaluate(trial, name):
    """Run one trial; ``(kind, reason, peak_mb)``."""
    watched = {k: snapshot(v) for k, v in trial.watch.items()}
    files = _file_state(trial.files)
    exc = result = None
    sink = io.StringIO()  # progress bars and plans of verbose calls
    with (
        warnings.catch_warnings(record=True) as caught,
        PeakMemory() as memory,
        contextlib.redirect_stderr(sink),
        contextlib.redirect_stdout(sink),
    ):
        warnings.simplefilter("always")
        try:
            result = trial.action()
        except BaseException as error:  # what the action raises is what is reviewed
            exc = error
    peak_mb = memory.peak / 2**20
    if peak_mb > trial.mem_mb:
        return "memory", f"resident memory grew by {peak_mb:.0f} MiB", peak_mb
    if trial.fault is not None:
        verdict = _judge_fault(trial, exc, result)
        if verdict is not None:
            return (*verdict, peak_mb)
    elif isinstance(exc, (KeyboardInterrupt, SystemExit)) and not (
        trial.raises and isinstance(exc, trial.raises.types)
    ):
        raise exc  # a real interrupt of the review
    damage = _check_files(files)
    if damage:
        return "lost_file", damage, peak_mb
    for key, before in watched.items():
        where = difference(before, snapshot(trial.watch[key]))
        if where:
            return "mutated", f"{key} changed at {where}", peak_mb
    kind, reason = _judge_outcome(trial, exc, result, caught)
    if kind == "ok" and trial.after is not None:
        problem = trial.after()
        if problem:
            kind, reason = "wrong", problem
    return kind, reason, peak_mb


def _judge_outcome(trial, exc, result, caught):
    from sklearn_lib import StaleBasisWarning

    stale = [w for w in caught if issubclass(w.category, StaleBasisWarning)]
    if stale and not trial.stale_ok:
        return "unclear", f"false alarm: StaleBasisWarning {str(stale[0].message)[:100]}"
    if exc is not None:
        if trial.fault is not None and trial.fault.raised is not None:
            return "ok", ""  # propagated as judged by _judge_fault
        if trial.raises is not None:
            return judge_error(exc, trial.raises)
        return judge_unexpected_error(exc)
    if trial.raises is not None and not trial.either:
        return "wrong", f"returned {_short(result)} where an error was expected"
    if trial.warns is not None and not any(issubclass(w.category, trial.warns) for w in caught):
        return "wrong", f"returned without {trial.warns.__name__}"
    if trial.check is not None:
        try:
            problem = trial.check(result)
        except Exception as error:  # a result the check cannot read is a wrong one
            problem = f"the result does not check: {describe(error, 120)}"
        if problem:
            return "wrong", problem
    return "ok", ""


def _short(value):
    text = repr(value)
    text = re.sub(r"\s+", " ", text)
    return text[:80] + ("..." if len(text) > 80 else "")


def run_case(c):
    """The :class:`Outcome` of one case, in this process."""
    _seed(f"{c.group}/{c.name}")
    start = time.perf_counter()
    try:
        # Setups fit and compute references: their warnings and progress are not reviewed.
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            trial = c.setup()
    except Exception as error:
        tb = traceback.extract_tb(error.__traceback__)[-1]
        reason = f"setup failed: {describe(error, 200)} (in {tb.name})"
        return Outcome(c.group, c.name, "harness", reason, time.perf_counter() - start)
    try:
        kind, reason, peak = evaluate(trial, c.name)
    except Exception as error:  # a bug of the harness's own checks
        kind, reason, peak = "harness", f"evaluation failed: {describe(error, 200)}", 0.0
    finally:
        del trial
        gc.collect(1)  # a full collection costs ~0.3 s with transformers loaded
    return Outcome(c.group, c.name, kind, reason, time.perf_counter() - start, peak)


def run_isolated(c, limit_mb=1536):
    """Run a case in a forked child, killed past ``limit_mb`` of growth or ``c.timeout``."""
    read, write = os.pipe()
    base = rss_bytes()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        code = 0
        # A hang shows where it waits (on stderr), before the parent kills the child.
        faulthandler.dump_traceback_later(max(c.timeout - 3, 1), exit=False)
        # OpenMP's thread pool does not survive a fork (the child's first parallel
        # region would wait forever): the child computes on one thread.
        torch.set_num_threads(1)
        try:
            outcome = run_case(c)
            data = pickle.dumps(outcome)
        except BaseException as error:  # report anything, never return into the runner
            data = pickle.dumps(Outcome(c.group, c.name, "harness", describe(error)))
            code = 1
        with os.fdopen(write, "wb") as f:
            f.write(data)
        os._exit(code)
    os.close(write)
    start, top, verdict = time.perf_counter(), base, None
    chunks = []
    os.set_blocking(read, False)
    while True:
        try:
            chunk = os.read(read, 1 << 16)
        except BlockingIOError:
            chunk = None
        if chunk:
            chunks.append(chunk)
        elif chunk == b"":
            break
        top = max(top, rss_bytes(pid))
        if top - base > limit_mb * 2**20:
            verdict = ("memory", f"killed at {(top - base) / 2**20:.0f} MiB of growth")
        elif time.perf_counter() - start > c.timeout:
            verdict = ("hang", f"killed after {c.timeout:.0f} s")
        if verdict:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    os.close(read)
    os.waitpid(pid, 0)
    seconds = time.perf_counter() - start
    if verdict:
        return Outcome(c.group, c.name, *verdict, seconds, (top - base) / 2**20)
    try:
        return pickle.loads(b"".join(chunks))
    except Exception as error:
        return Outcome(c.group, c.name, "harness", f"child died: {error}", seconds)


# -- the report -----------------------------------------------------------------------------


def table(outcomes):
    """The markdown case table by group, and the failing cases under it."""
    first = list(dict.fromkeys(o.group for o in outcomes))
    order = ("results", "memory", "api", "inputs", "params", "model", "faults", "threads", "files")
    groups = sorted(
        first,
        key=lambda g: (
            next((i for i, p in enumerate(order) if g.startswith(p)), len(order)),
            first.index(g),
        ),
    )
    kinds = [k for k in KINDS if k != "ok"]
    shown = [k for k in kinds if k not in ("hang", "harness") or any(o.kind == k for o in outcomes)]
    head = ["group", "cases", "OK", *(KINDS[k] for k in shown)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for g in [*groups, None]:
        rows = [o for o in outcomes if g is None or o.group == g]
        counts = [sum(o.kind == k for o in rows) for k in ["ok", *shown]]
        label = "**total**" if g is None else g
        cells = [label, str(len(rows)), *(str(n) if n else "" for n in counts)]
        if g is None:
            cells = [f"**{c}**" if c and i else c for i, c in enumerate(cells)]
        lines.append("| " + " | ".join(cells) + " |")
    failing = [o for o in outcomes if o.kind != "ok"]
    lines += ["", f"Cases not OK: {len(failing)}", ""]
    for o in failing:
        lines.append(f"- `{o.group}` / `{o.name}`: **{KINDS[o.kind]}**: {o.reason}")
    return "\n".join(lines)


@contextlib.contextmanager
def quiet():
    """Silence the package's logger and stray prints of progress during a run."""
    import logging

    logger = logging.getLogger("sklearn_lib")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def deep_copy(obj):
    return copy.deepcopy(obj)
