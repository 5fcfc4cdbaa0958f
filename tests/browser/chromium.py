"""Headless Chromium through Playwright: one home for the tests, the screenshot script
(``docs/make_dashboard_screenshots.py``) and the page benchmark (``benchmarks/bench_dashboard.py``).

The browser is Debian's (``apt-get install -y chromium``), never one that Playwright
downloads: ``$CHROMIUM`` when set, else ``/usr/bin/chromium``, else ``chromium`` on the
PATH.
"""

import os
import shutil
from pathlib import Path

INSTALL = 'apt-get install -y chromium, and pip install -e ".[browser]" for Playwright'

#: Nothing of the browser's own reaches the network either (updates, sync, QUIC probes).
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

VIEWPORT = {"width": 1280, "height": 800}


def chromium_path():
    """The browser to drive, or None."""
    chosen = os.environ.get("CHROMIUM")
    if chosen:
        return chosen if Path(chosen).exists() else None
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def launch(playwright):
    """A headless Chromium of ``playwright`` (``sync_playwright()``'s), with a fresh,
    temporary user data dir; RuntimeError naming the install where there is none."""
    path = chromium_path()
    if path is None:
        raise RuntimeError(f"no Chromium found: {INSTALL}")
    return playwright.chromium.launch(executable_path=path, args=ARGS)
