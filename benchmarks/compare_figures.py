"""Compare two dumps of ``dump_figures.py``, key by key.

Two dumps agree when they hold the same keys, every array has the same
shape and dtype kind, strings, ints and bools are equal, NaN and infinite
entries sit at the same places, and the finite float entries differ by at
most ``rtol`` times the largest absolute entry of the array (so that entries
near zero do not blow the error up): ``rtol = 1e-12`` for the cases whose
passes ran in float64 and ``1e-6`` for those in float32, as each case
records in its ``case/dtype`` key.

The script prints the worst keys (the largest error relative to their
tolerance), every key that differs, and a last line ``N keys, M differ``;
it exits with status 1 if any key differs.

Usage
-----
From the repository root::

    git worktree add /tmp/before HEAD
    PYTHONPATH=/tmp/before python benchmarks/dump_figures.py --out before.npz
    python benchmarks/dump_figures.py --out after.npz
    python benchmarks/compare_figures.py before.npz after.npz

Parameters
----------
BEFORE, AFTER : path
    The two ``.npz`` files of ``dump_figures.py``.
--exact : flag
    Tolerance 0 for every key: bit-identical dumps, e.g. to check that two
    runs of the same code agree.
--top : int, default=20
    Rows of the table of the worst keys.
"""

import argparse
import sys

import numpy as np

TOLERANCES = {"float64": 1e-12, "float32": 1e-6}


def tolerance(data, key, exact):
    """``rtol`` of a key: by the ``dtype`` its case recorded (float64 if none)."""
    if exact:
        return 0.0
    case = key.split("/", 1)[0]
    dtype = str(data[f"{case}/dtype"]) if f"{case}/dtype" in data else "float64"
    return TOLERANCES[dtype]


def difference(a, b):
    """``(error, why)``: the largest difference relative to the largest magnitude.

    ``error`` is ``inf`` where the arrays cannot be compared (shape, dtype,
    unequal strings or ints, NaN at other places), with ``why`` saying so.
    """
    if a.shape != b.shape:
        return np.inf, f"shape {a.shape} != {b.shape}"
    float_kinds = "fc"
    if (a.dtype.kind in float_kinds) != (b.dtype.kind in float_kinds) or (a.dtype.kind in "US") != (
        b.dtype.kind in "US"
    ):
        return np.inf, f"dtype {a.dtype} != {b.dtype}"
    if a.dtype.kind not in float_kinds:
        equal = np.array_equal(a, b)
        return (0.0, "") if equal else (np.inf, "values differ")
    finite_a, finite_b = np.isfinite(a), np.isfinite(b)
    if not np.array_equal(finite_a, finite_b) or not np.array_equal(
        a[~finite_a], b[~finite_b], equal_nan=True
    ):
        return np.inf, "NaN / inf at other places"
    if not finite_a.any():
        return 0.0, ""
    diff = np.abs(a[finite_a] - b[finite_b]).max()
    if diff == 0:
        return 0.0, ""
    scale = max(np.abs(a[finite_a]).max(), np.abs(b[finite_b]).max())
    return float(diff / scale), ""


def compare(before, after, exact=False):
    """Rows ``(key, rtol, error, why)`` for the union of the keys, in the files' order."""
    keys = list(before) + [key for key in after if key not in before]
    rows = []
    for key in keys:
        data = before if key in before else after
        rtol = tolerance(data, key, exact)
        if key not in after:
            rows.append((key, rtol, np.inf, "only in BEFORE"))
        elif key not in before:
            rows.append((key, rtol, np.inf, "only in AFTER"))
        else:
            rows.append((key, rtol, *difference(before[key], after[key])))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", metavar="BEFORE")
    parser.add_argument("after", metavar="AFTER")
    parser.add_argument("--exact", action="store_true", help="tolerance 0 for every key")
    parser.add_argument("--top", type=int, default=20, help="rows of the table of worst keys")
    args = parser.parse_args(argv)

    with np.load(args.before) as b, np.load(args.after) as a:
        before = {key: b[key] for key in b.files}
        after = {key: a[key] for key in a.files}
    rows = compare(before, after, exact=args.exact)
    differ = [row for row in rows if row[2] > row[1]]
    inexact = [row for row in rows if row[2] > 0]

    def ratio(row):
        _, rtol, error, _ = row
        return np.inf if error > 0 and rtol == 0 else (error / rtol if rtol else 0.0)

    worst = sorted(inexact, key=lambda row: (-ratio(row), -row[2]))[: args.top]
    width = max([len(row[0]) for row in worst] + [3])
    if worst:
        print(f"{'key':{width}s}  {'rtol':>7s}  {'error':>10s}  status")
        for key, rtol, error, why in worst:
            status = "DIFFERS" if error > rtol else "ok"
            print(f"{key:{width}s}  {rtol:7.0e}  {error:10.3e}  {status} {why}".rstrip())
    shown = {row[0] for row in worst}
    for key, rtol, error, why in differ:
        if key not in shown:
            print(f"{key:{width}s}  {rtol:7.0e}  {error:10.3e}  DIFFERS {why}".rstrip())
    print(f"{len(rows) - len(inexact)} of {len(rows)} keys bit-identical")
    print(f"{len(rows)} keys, {len(differ)} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
