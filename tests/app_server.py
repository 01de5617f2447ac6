"""Serving ``apps/explorer.py`` with ``panel serve`` and driving it with Debian's Chromium through Playwright:
shared by the browser tests and the app benchmarks (``benchmarks/app_*.py``)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
#: Screenshots and server consoles of the browser tests, for review.
ARTIFACTS = REPOSITORY / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
#: Largest number of rows any Bokeh data source holds in a column named ``column``.
JS_MAX_ROWS = """(column) => { let n = 0; for (const doc of Bokeh.documents) for (const m of doc.all_models) {
    const d = m.data; if (d && d[column] !== undefined) n = Math.max(n, d[column].length) } return n }"""
#: Rows of every data source with a column named ``column``, by model id (a plot that gains points grows).
JS_ROWS_BY_SOURCE = """(column) => { const out = {}; for (const doc of Bokeh.documents) for (const m of doc.all_models) {
    const d = m.data; if (d && d[column] !== undefined) out[m.id] = d[column].length } return out }"""
#: The values of the first data source with a column named ``column`` (null when none).
JS_COLUMN = """(column) => { for (const doc of Bokeh.documents) for (const m of doc.all_models) {
    const d = m.data; if (d && d[column] !== undefined) return Array.from(d[column]) } return null }"""
#: The pruning chart: its K axis (start, end: start > end, K falls to the right) and the K of its points.
JS_PRUNING_CHART = """() => { for (const doc of Bokeh.documents) for (const m of doc.all_models) {
    if (!m.title || !String(m.title.text ?? "").includes("agreement against K")) continue
    let ks = []; for (const r of m.renderers) { const s = r.data_source; if (s && s.data && s.data.removed !== undefined) ks = Array.from(s.data.k) }
    return {start: m.x_range.start, end: m.x_range.end, ks: ks} } return null }"""
#: The texts of the plot titles on the page.
JS_TITLES = """() => { const out = []; for (const doc of Bokeh.documents) for (const m of doc.all_models)
    if (m.type == "Title") out.push(String(m.text)); return out }"""
#: The labels of the plots' axes on the page.
JS_AXIS_LABELS = """() => { const out = []; for (const doc of Bokeh.documents) for (const m of doc.all_models)
    if (m.axis_label !== undefined && m.axis_label !== null) out.push(String(m.axis_label)); return out }"""
#: Locations of the horizontal marker lines (Bokeh Spans along the width) on the page.
JS_MARKERS = """() => { const out = []; for (const doc of Bokeh.documents) for (const m of doc.all_models) {
    if (m.type == "Span" && m.dimension == "width") out.push(m.location) } return out }"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppServer:
    """``panel serve apps/explorer.py`` on a free loopback port, its console in ``log_path``."""

    def __init__(self, app_args: list[str], log_path: Path, *, warm: bool = True, session_lifetime_ms: int = 5000,
                 threads: int = 1, extra_env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/explorer"
        self.log_path = Path(log_path)
        command = [
            sys.executable, "-m", "panel", "serve", str(REPOSITORY / "apps" / "explorer.py"),
            "--port", str(self.port), "--address", "127.0.0.1", "--num-procs", "1",
            "--check-unused-sessions", "1000", "--unused-session-lifetime", str(session_lifetime_ms),
        ]
        if warm:
            command.append("--warm")
        command += ["--args", *app_args]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": _python_path(), **(extra_env or {})}
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPOSITORY)

    def wait_ready(self, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"panel serve exited ({self.process.returncode}):\n{self.log()}")
            if "Bokeh app running at" in self.log():
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            time.sleep(0.5)
        raise RuntimeError(f"panel serve did not start in {timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive_counts(self) -> list[int]:
        """The app's 'explorer sessions alive' count at each session open / close, in order."""
        return [int(n) for n in re.findall(r"explorer sessions alive: (\d+)", self.log())]

    def errors(self) -> list[str]:
        """Problems in the server console: error log lines, failed callbacks and tracebacks, except a client
        that went away while the server was writing to it (tornado's WebSocketClosedError), and Bokeh's own
        race when that write was its keep-alive ping: the ping's handler detaches the connection's session, and
        Bokeh's ``WSHandler.on_close`` for the same socket then asserts that it still has one."""
        problems = []
        for block in re.split(r"\n(?=\d{4}-\d\d-\d\d )", self.log()):
            if "WebSocketClosedError" in block or "StreamClosedError" in block:
                continue
            if ("bokeh/server/views/ws.py" in block and "in on_close" in block and "assert self._session is not None"
                    in block and block.rstrip().endswith("AssertionError") and "cplmix_explorer" not in block):
                continue
            if "Traceback" in block or " ERROR " in block or "failed with following error" in block:
                problems.append(block[:2000])
        return problems

    def alive_models(self) -> list[int]:
        """The app's 'models alive' count at each session open / close, in order."""
        return [int(n) for n in re.findall(r"models alive: (\d+)", self.log())]

    def count(self, text: str) -> int:
        return self.log().count(text)

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()

    def __enter__(self) -> AppServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _python_path() -> str:
    parts = [str(REPOSITORY)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(parts))


def launch_browser(playwright, profile_dir: str | None = None):
    """Debian's Chromium, headless, with a fresh profile folder; returns a persistent context."""
    profile_dir = profile_dir or tempfile.mkdtemp(prefix="cplmix-chromium-")
    return playwright.chromium.launch_persistent_context(
        profile_dir, executable_path=CHROMIUM, headless=True, accept_downloads=True, args=CHROMIUM_ARGS,
        viewport={"width": 1500, "height": 1000},
    )


def open_app(context, url: str, timeout_ms: int | None = None):
    """A new tab with the explorer, once its sidebar and the Training tab are drawn."""
    timeout_ms = EVENT_TIMEOUT_MS if timeout_ms is None else timeout_ms
    page = context.new_page()
    page.set_default_timeout(EVENT_TIMEOUT_MS)
    page.goto(url, timeout=timeout_ms)
    page.wait_for_selector("text=Training options", timeout=timeout_ms)
    page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=timeout_ms)
    return page


def fill_option(page, label: str, value) -> None:
    """Type a value into a form field (a Bokeh input group whose label contains ``label``) and commit it."""
    field = page.locator(".bk-input-group", has_text=label).locator("input").first
    field.fill(str(value))
    field.press("Enter")


def open_tab(page, name: str) -> None:
    page.locator(".bk-tab", has_text=name).first.click()


#: How long a browser test waits for something to show on the page: generous, so that a busy machine (other
#: processes on every core) makes the tests slower, never wrong.
EVENT_TIMEOUT_MS = 600_000


def wait_for_text(page, text: str, timeout_ms: int = EVENT_TIMEOUT_MS) -> None:
    page.wait_for_selector(f"text={text}", timeout=timeout_ms)
