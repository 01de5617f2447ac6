"""Takes docs/img/explorer.png: the served explorer with the demo model, on the Traversal tab, in Debian's
Chromium (headless, through Playwright, as the browser tests drive it).

    python docs/img/screenshot.py [TAB]          # TAB: Training, Consensus, Cells, Traversal (default)
"""

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY / "tests"))
from app_server import JS_COLUMN, JS_MAX_ROWS, AppServer, launch_browser, open_app, open_tab, wait_for_text  # noqa: E402

READY = {
    "Training": f"() => ({JS_MAX_ROWS})('loss') > 0",
    "Consensus": f"() => ({JS_MAX_ROWS})('agreement') >= 0",
    "Cells": f"() => ({JS_MAX_ROWS})('image') > 0",
    "Traversal": f"() => ({JS_COLUMN})('expression') !== null",
}


def main(tab: str = "Traversal") -> None:
    out = REPOSITORY / "docs" / "img" / "explorer.png"
    with tempfile.TemporaryDirectory() as tmp, AppServer([], Path(tmp) / "server.log") as server:
        server.wait_ready()
        with sync_playwright() as playwright:
            context = launch_browser(playwright)
            page = open_app(context, server.url)
            page.set_viewport_size({"width": 1400, "height": 1000})
            wait_for_text(page, "demo model zeisel2015_demo")
            open_tab(page, tab)
            page.wait_for_function(READY[tab], timeout=180_000)
            page.wait_for_timeout(2_000)  # let the last redraw land
            page.screenshot(path=out)
            context.close()
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:])
