"""Benchmark: feature dashboards (issue 25): memory of the example search, and the page.

``--memory``: the strongest examples of 64 features at 3 node layers of a random
2-layer GPT-2 (width 128), streamed over N sequences of 32 tokens made on the fly
(nothing of size N is held), for N = 10^3 .. 10^5, each N in a fresh process; the
resident memory is sampled every 5 ms during the pass and its peak reported above
the memory before it.  The search holds ``n_features x n_examples`` rows per node
whatever N, so the peak must not grow with N.

``--page``: the issue's file: a 2-layer GPT-2 at 3 node layers with 64 features
each and 20 examples per feature (token contexts, the interaction graph, LIB
only): its size, and the time it takes to open and become interactive in
headless Chromium (from navigation to the page's ``ready``), five times.

    python benchmarks/bench_dashboard.py --memory [--sizes 1000,10000,100000]
    python benchmarks/bench_dashboard.py --page [--out page.html]
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))

WIDTH, VOCAB, LENGTH = 128, 512, 32
NODES = ["transformer.h.0", "transformer.h.1", "transformer.ln_f"]


class Stream:
    """Deterministic batches of token ids, regenerated on every pass."""

    def __init__(self, n, batch=256):
        self.n, self.batch = n, batch

    def __iter__(self):
        import torch

        gen = torch.Generator().manual_seed(0)
        for start in range(0, self.n, self.batch):
            size = min(self.batch, self.n - start)
            yield torch.randint(0, VOCAB, (size, LENGTH), generator=gen)


def _fitted(n_fit=256):
    import torch
    from _gpt2 import random_gpt2

    from sklearn_lib import LIBTransformer

    torch.set_num_threads(2)
    model = random_gpt2(WIDTH, VOCAB, LENGTH)
    lib = LIBTransformer(
        model,
        NODES[0],
        downstream_layers=NODES[1:],
        output="logits",
        forward_kwargs={"use_cache": False},
        dtype="float32",
        n_stochastic_sources=2,
        random_state=0,
    )
    return lib.fit(Stream(n_fit))


def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_memory(n):
    from sklearn_lib import FeatureDashboard

    lib = _fitted()
    before, peak, done = _rss_mib(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    dashboard = FeatureDashboard.from_estimator(
        lib, Stream(n), n_features=64, n_examples=20, graph=None
    )
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    rows = sum(found.n_rows for found in dashboard.examples["LIB"].values())
    print(json.dumps({"n": n, "seconds": seconds, "above_mib": peak[0] - before, "rows": rows}))


def memory(sizes):
    print(f"{'N':>7s} {'tokens searched':>16s} {'seconds':>8s} {'peak above start (MiB)':>23s}")
    for n in sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True
        ).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(f"{row['n']:7d} {row['rows']:16d} {row['seconds']:8.1f} {row['above_mib']:23.1f}")


def page(out):
    from sklearn_lib import FeatureDashboard

    lib = _fitted()
    data = Stream(1024)
    start = time.perf_counter()
    graph = lib.interaction_graph(Stream(64), n_stochastic_sources=2, random_state=0)
    graph_seconds = time.perf_counter() - start
    start = time.perf_counter()
    vocabulary = [f"tok{i}" for i in range(VOCAB)]
    dashboard = FeatureDashboard.from_estimator(
        lib, data, n_features=64, n_examples=20, graph=graph, tokenizer=vocabulary
    )
    path = dashboard.save_html(out)
    seconds = time.perf_counter() - start
    size = path.stat().st_size
    edges = sum(len(s["src"]) for s in dashboard.data["views"][0]["sections"])
    print(
        f"graph: {graph_seconds:.1f} s; dashboard (search over 1,024 x {LENGTH} tokens and "
        f"the page): {seconds:.1f} s"
    )
    print(
        f"file: {path} {size / 2**20:.2f} MiB ({size:,} bytes), "
        f"3 x 64 cards x 20 examples, {edges:,} edges"
    )
    for run, (load_ms, wall_ms, render_ms) in enumerate(_open_in_chromium(path, 5)):
        print(
            f"run {run + 1}: ready {load_ms:.0f} ms after navigation (page's own clock), "
            f"{wall_ms:.0f} ms goto -> ready (wall), first canvas render {render_ms:.0f} ms"
        )


def _open_in_chromium(path, times):
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "tests"))
    from browser.chromium import VIEWPORT, launch

    with sync_playwright() as p:
        browser = launch(p)
        for _ in range(times):
            page = browser.new_page(viewport=VIEWPORT)
            start = time.perf_counter()
            page.goto(path.resolve().as_uri())
            page.wait_for_function("window.LIBDashboard && window.LIBDashboard.ready")
            wall = (time.perf_counter() - start) * 1000
            load, render = page.evaluate("[LIBDashboard.loadMs, LIBDashboard.renderMs]")
            yield load, wall, render
            page.close()
        browser.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--page", action="store_true")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--out", default=None, help="where --page writes the file")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return run_memory(args.one)
    if args.memory:
        memory([int(s) for s in args.sizes.split(",")])
    if args.page:
        out = args.out or os.path.join(tempfile.mkdtemp(), "gpt2_dashboard.html")
        page(pathlib.Path(out))


if __name__ == "__main__":
    main()
