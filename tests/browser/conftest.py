"""Headless Chromium for the dashboard's browser tests, through Playwright.

The browser is Debian's (see :mod:`browser.chromium`). Without Playwright or Chromium the tests skip
and say how to install them. One browser serves a module; each test gets a
fresh page that records what would show a fault: console errors, uncaught
exceptions, dialogs (an ``alert`` a hostile string ran) and every request.
"""

import os
from pathlib import Path

import pytest
from browser.chromium import INSTALL, VIEWPORT, chromium_path, launch

from sklearn_lib._drawing.dashboard_page import render_page

#: A PNG file's first bytes.
PNG = b"\x89PNG\r\n\x1a\n"


def _missing(reason):
    """Skip, or fail where ``SKLEARN_LIB_REQUIRE_BROWSER`` is set (CI: the tests must run)."""
    if os.environ.get("SKLEARN_LIB_REQUIRE_BROWSER"):
        pytest.fail(f"{reason} (SKLEARN_LIB_REQUIRE_BROWSER is set): {INSTALL}")
    pytest.skip(f"{reason}: {INSTALL}")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright is not installed")
    path = chromium_path()
    if path is None:
        where = os.environ.get("CHROMIUM") or "/usr/bin/chromium or chromium on the PATH"
        _missing(f"no Chromium at {where}")
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


class Dashboard:
    """A page of the browser, the dashboard file it opened and what it recorded."""

    def __init__(self, page, folder):
        self.page, self.folder, self.url = page, folder, None
        self.requests, self.errors, self.dialogs = [], [], []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on("dialog", self._dialog)

    def _console(self, message):
        if message.type == "error":
            self.errors.append(f"console error: {message.text}")

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, payload, name="dashboard.html"):
        """Write the page of ``payload`` and open it from disk; returns its path."""
        path = self.folder / name
        path.write_text(render_page(payload), encoding="utf-8")
        self.url = path.as_uri()
        self.page.goto(self.url)
        self.page.wait_for_function("() => window.LIBDashboard && LIBDashboard.ready === true")
        self.settle()
        return path

    def api(self, expression, arg=None):
        """``window.LIBDashboard.<expression>`` evaluated in the page (``arg`` as ``a``)."""
        return self.page.evaluate(f"(a) => window.LIBDashboard.{expression}", arg)

    def settle(self):
        """Wait two animation frames: a redraw the last event asked for is done."""
        self.page.evaluate(
            "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
        )

    def click_dot(self, node, index):
        """A real mouse click at a feature's dot; returns where it clicked."""
        at = self.api("nodeScreenPosition(a[0], a[1])", [node, index])
        assert at is not None, (node, index)
        self.page.mouse.click(at["x"], at["y"])
        self.settle()
        return at

    def card(self, view, node, index):
        selector = f'.feature-card[data-view="{view}"][data-node="{node}"][data-index="{index}"]'
        return self.page.locator(selector)

    def problems(self):
        """Console errors, page errors, dialogs and requests for anything but the page."""
        foreign = [url for url in self.requests if url != self.url]
        return self.errors + [f"dialog: {d}" for d in self.dialogs] + foreign

    def screenshot(self, name, **options):
        """A PNG of the page, also saved to ``$SKLEARN_LIB_SCREENSHOT_DIR/<name>`` when set."""
        data = self.page.screenshot(**options)
        assert data.startswith(PNG), data[:8]
        folder = os.environ.get("SKLEARN_LIB_SCREENSHOT_DIR")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / name).write_bytes(data)
        return data


@pytest.fixture
def dashboard(browser, tmp_path):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield Dashboard(page, tmp_path)
    context.close()
