"""Adversarial review of sklearn-lib (issue 24): hundreds of cases over every public entry
point, results checked against independent computations.

Run by hand, never in the test suite::

    .venv/bin/python benchmarks/adversarial_review.py --out /tmp/adversarial.md
    .venv/bin/python benchmarks/adversarial_review.py --quick          # a subset, ~1 minute
    .venv/bin/python benchmarks/adversarial_review.py --group padding  # groups matching a word

Each case is classified as OK, silently wrong, unclear error, deep traceback, valid
input refused, mutated object, lost file, swallowed fault or excessive memory (see
``benchmarks/adversarial/harness.py`` for the rules); the script prints a markdown table
by group with the failing cases listed under it, and writes it to ``--out``.  Cases are
seeded by their names, so a run is deterministic.  The exit status is 0 whatever the
cases found (they are findings, not errors of the script), 2 on harness errors.
"""

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from adversarial import harness  # noqa: E402

FAMILIES = (
    "cases_results",
    "cases_more",
    "cases_api",
    "cases_inputs",
    "cases_params",
    "cases_model",
    "cases_faults",
    "cases_files",
)


def register():
    import importlib

    for name in FAMILIES:
        module = importlib.import_module(f"adversarial.{name}")
        for attr in sorted(vars(module)):
            if attr.startswith("register_"):
                getattr(module, attr)()


def warm_up():
    """Import what cases import lazily and trace once, so that no case pays for it in
    memory (transformers, matplotlib, networkx, torch.fx and torch.export)."""
    import matplotlib.pyplot  # noqa: F401
    import networkx  # noqa: F401
    import transformers  # noqa: F401
    from adversarial import fixtures

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fixtures.mlp_fit()
        fixtures.mlp3_fit()
        fixtures.positions_fit()
        fixtures.gpt2_fit()
        from adversarial import models as M

        from sklearn_lib import LIBTransformer

        LIBTransformer(M.user_transformer(), "blocks.0.attn").fit(M.modadd_tokens(20))
        LIBTransformer(M.small_resnet(), "pool", feature_axis=1).fit(M.images(4))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the report (markdown) here")
    parser.add_argument("--quick", action="store_true", help="only the cases marked quick")
    parser.add_argument(
        "--group",
        action="append",
        default=[],
        help="only groups whose name contains this word (repeatable)",
    )
    parser.add_argument("--name", default="", help="only cases whose name contains this")
    parser.add_argument("--cases", help="write every case's outcome here (tab-separated)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--verbose", "-v", action="store_true", help="print every case")
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="run the harness's controls (cases built to fail) and exit",
    )
    args = parser.parse_args(argv)

    # One thread: the cases are tiny (overheads dominate), the results do not depend on
    # the thread count, and two OpenMP threads on a shared 2-core machine slow every
    # backward pass by up to 50x when another process takes a core.
    torch.set_num_threads(1)
    if args.self_test:
        from adversarial import selftest

        with harness.quiet():
            passed, lines = selftest.run()
        print("\n".join(lines))
        return 0 if passed else 1
    register()
    cases = [
        c
        for c in harness.REGISTRY
        if (not args.quick or c.quick)
        and (not args.group or any(g in c.group for g in args.group))
        and args.name in c.name
    ]
    if args.list:
        for c in cases:
            print(f"{c.group} / {c.name}{' (quick)' if c.quick else ''}")
        print(f"{len(cases)} cases")
        return 0
    start = time.perf_counter()
    with harness.quiet():
        warm_up()
        outcomes = []
        for i, c in enumerate(cases):
            outcome = harness.run_isolated(c) if c.isolate else harness.run_case(c)
            outcomes.append(outcome)
            if args.verbose or outcome.kind != "ok":
                flag = "" if outcome.kind == "ok" else f" {harness.KINDS[outcome.kind].upper()}"
                print(
                    f"[{i + 1}/{len(cases)}] {c.group} / {c.name}: {outcome.seconds:.1f}s"
                    f"{flag} {outcome.reason}",
                    file=sys.stderr,
                    flush=True,
                )
    seconds = time.perf_counter() - start
    report = render(outcomes, seconds, quick=args.quick)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    if args.cases:
        rows = ["group\tcase\toutcome\tseconds\tpeak_mib\treason"]
        rows += [
            "\t".join(
                [
                    o.group,
                    o.name,
                    harness.KINDS[o.kind],
                    f"{o.seconds:.2f}",
                    f"{o.peak_mb:.0f}",
                    o.reason.replace("\t", " "),
                ]
            )
            for o in outcomes
        ]
        Path(args.cases).write_text("\n".join(rows) + "\n")
    return 2 if any(o.kind == "harness" for o in outcomes) else 0


LEGEND = """\
How a case is classified (`benchmarks/adversarial/harness.py`): **OK** is a result that
agrees with an independent computation (brute-force LIB from per-sample Jacobians,
`jacobian="autograd"`, scikit-learn's PCA, the unpadded sequences, the model run with the
reconstruction put in by a hook, the original before a save) or a clear error. An error is
clear when it is raised in the package (or in scikit-learn's parameter and data validation
it delegates to, or in the user's own model), is a `ValueError` or `TypeError` (or the
type the case names, such as `NotFittedError` or an `OSError` about a path), and its
message names the argument or the problem. **Deep traceback**: raised inside torch, numpy,
scipy, pandas, matplotlib or the standard library. **Unclear error**: another type, a
message that names nothing the case looks for, or a `StaleBasisWarning` about a model that
did not change. **Valid input refused**: an error where a result is expected. **Silently
wrong**: a result that disagrees, a result where an error is expected, or a missing
`StaleBasisWarning` after the model changed. **Mutated object**: the model (parameters,
buffers, gradients, flags, hooks, attributes), the caller's data, arguments or the estimator
after a failed call differ byte for byte from before. **Lost file**: a file at the path is
gone or changed after a failed save or a load, or a temporary file is left beside it.
**Swallowed fault**: an injected out-of-memory error, `MemoryError`, `KeyboardInterrupt`
or `SystemExit` did not reach the caller as itself. **Excessive memory**: resident memory
grew past the case's limit (100 MiB to 1 GiB, for inputs of kilobytes to a few megabytes).
**Hang**: an isolated case ran past its time limit."""


def render(outcomes, seconds, quick=False):
    slowest = sorted(outcomes, key=lambda o: -o.seconds)[:5]
    biggest = sorted(outcomes, key=lambda o: -o.peak_mb)[:3]
    lines = [
        "# Adversarial review" + (" (quick subset)" if quick else ""),
        "",
        f"{len(outcomes)} cases in {seconds:.0f} s on {platform.machine()} "
        f"({os.cpu_count()} cores, torch {torch.__version__} on one thread, numpy "
        f"{np.__version__}); `benchmarks/adversarial_review.py`{' --quick' if quick else ''}.",
        "",
        LEGEND,
        "",
        harness.table(outcomes),
        "",
        "Slowest cases: "
        + ", ".join(f"{o.group} / {o.name} ({o.seconds:.1f} s)" for o in slowest)
        + ". Largest growth of resident memory: "
        + ", ".join(f"{o.group} / {o.name} ({o.peak_mb:.0f} MiB)" for o in biggest)
        + ".",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
