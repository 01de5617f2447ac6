"""Time until the explorer page is populated in Chromium (issue 5's bar: < 5 s after the first start).

    python benchmarks/app_load_time.py --loads 5

Starts ``panel serve apps/explorer.py`` on a free loopback port (without ``--warm``, as users start it),
then opens the page ``--loads`` times in headless Chromium, one after another. Each load is timed from
navigation until the sidebar, the demo's training curves (a Bokeh data source with the loss) and the
status line are drawn. The first load includes the server's start-up work (imports, reading the demo);
the bar applies to the later ones. Prints one JSON object. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from app_server import JS_MAX_ROWS, AppServer, launch_browser  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--warm", action="store_true", help="start the server with panel's --warm")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="cplmix-bench-"))
    started = time.perf_counter()
    with AppServer(["--runs-dir", str(folder / "runs"), "--data-dir", str(folder)], folder / "server.log", warm=args.warm) as server:
        server.wait_ready()
        server_start = time.perf_counter() - started
        seconds = []
        with sync_playwright() as playwright:
            browser = launch_browser(playwright)
            for _ in range(args.loads):
                page = browser.new_page()
                begin = time.perf_counter()
                page.goto(server.url, timeout=300_000)
                page.wait_for_selector("text=Training options", timeout=300_000)
                page.wait_for_function(f"() => window.Bokeh && ({JS_MAX_ROWS})('loss') > 0", timeout=300_000)
                page.wait_for_selector("text=demo model", timeout=300_000)
                seconds.append(time.perf_counter() - begin)
                page.close()
                time.sleep(1.0)
            browser.close()
    later = seconds[1:] or seconds
    print(json.dumps({
        "benchmark": "app_load_time",
        "server_start_seconds": round(server_start, 2),
        "first_load_seconds": round(seconds[0], 2),
        "later_loads_seconds": [round(s, 2) for s in seconds[1:]],
        "later_loads_median_seconds": round(statistics.median(later), 2),
        "bar_seconds": 5.0,
        "meets_bar": statistics.median(later) < 5.0,
        "warm": args.warm,
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "date": time.strftime("%Y-%m-%d"),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
