"""The explorer's screenshots in docs/img/ (and the README's picture, docs/img/explorer.png):
``apps/explorer.py`` served on a free loopback port and driven by Debian's headless Chromium through Playwright
(as the browser tests do, tests/app_server.py).

    python docs/make_screenshots.py            # a few minutes on a CPU

The runs folder is a temporary copy of the shipped demo run (with its result.h5ad written), so the runs list
has a run to open; the Consensus shots prune the demo from K = 10 to the "Stop at K" floor of 8. Each image is
saved with a palette of 256 colours (PNG), a third of the size of the full-colour screenshot.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY / "tests"))

from app_server import (  # noqa: E402
    EVENT_TIMEOUT_MS, JS_COLUMN, JS_MAX_ROWS, JS_TITLES, AppServer, fill_option, launch_browser, open_app, open_tab,
    wait_for_text,
)

IMAGES = REPOSITORY / "docs" / "img"
DEMO = REPOSITORY / "models" / "zeisel2015_demo"
#: The gene the Cells tab is coloured by (an oligodendrocyte marker of the bundled Zeisel data).
GENE = "Plp1"
#: Time for the browser to finish drawing what the page's models already hold (canvas paint, fonts).
SETTLE_MS = 2_000


def runs_folder(root: Path) -> Path:
    """A runs folder holding a copy of the demo run, with the result.h5ad a finished run has."""
    from cplmix_explorer.workflows.run import load_run, write_result_file

    runs = root / "runs"
    run = runs / "zeisel2015_demo"
    shutil.copytree(DEMO, run)
    model = load_run(run)
    write_result_file(model, run, model.evaluate("class"))
    return runs


def save(page, name: str, full_page: bool = False) -> None:
    """A screenshot of the page as docs/img/NAME, in 256 colours."""
    import io

    from PIL import Image

    page.wait_for_timeout(SETTLE_MS)
    image = Image.open(io.BytesIO(page.screenshot(full_page=full_page))).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(IMAGES / name, optimize=True)


def wait_for_title(page, text: str) -> None:
    page.wait_for_function(f"(text) => ({JS_TITLES})().some(t => t.includes(text))", arg=text, timeout=EVENT_TIMEOUT_MS)


def main() -> None:
    from playwright.sync_api import sync_playwright

    IMAGES.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="cplmix-screenshots-"))
    runs = runs_folder(root)
    with AppServer(["--data-dir", str(root), "--runs-dir", str(runs)], root / "server.log") as server, sync_playwright() as playwright:
        server.wait_ready()
        context = launch_browser(playwright)
        page = open_app(context, server.url)
        page.set_viewport_size({"width": 1400, "height": 950})
        wait_for_text(page, "demo model zeisel2015_demo")

        # the runs list: open the run folder, its files can be downloaded
        page.locator(".bk-input-group", has_text="Run folder").locator("select").first.select_option("zeisel2015_demo")
        page.get_by_role("button", name="Open run", exact=True).first.click()
        wait_for_text(page, "Shown: run folder")
        wait_for_text(page, "step 4,000 / 4,000")
        page.wait_for_function(f"() => ({JS_MAX_ROWS})('loss') > 0", timeout=EVENT_TIMEOUT_MS)
        save(page, "training_and_runs.png")

        # the Cells tab by type, the types by name in the legend: the README's picture
        open_tab(page, "Cells")
        page.wait_for_function(f"() => ({JS_MAX_ROWS})('image') > 0", timeout=EVENT_TIMEOUT_MS)
        wait_for_title(page, "colour: type")
        save(page, "explorer.png")

        # coloured by a gene typed into the gene box
        field = page.locator(".bk-input-group", has_text="Colour by gene").locator("input").first
        field.click()
        field.press_sequentially(GENE.lower())
        page.get_by_text(GENE, exact=True).first.wait_for()
        field.press("Enter")
        wait_for_title(page, f"colour: gene {GENE}")
        save(page, "cells.png")

        page.set_viewport_size({"width": 1400, "height": 1400})  # the dot plot and the table below it
        open_tab(page, "Markers")
        wait_for_text(page, "Wilcoxon rank-sum test")
        page.locator("img").first.wait_for()
        save(page, "markers.png")

        page.set_viewport_size({"width": 1400, "height": 1400})  # the pruning controls and chart below the matrices
        open_tab(page, "Consensus")
        wait_for_text(page, "types used")
        threshold = page.locator(".bk-input-group", has=page.locator(".bk-slider-title", has_text="Keep types with agreement"))
        threshold.locator(".noUi-handle").first.focus()
        threshold.locator(".noUi-handle").first.press("End")
        page.locator(".bk-slider-title", has_text="at least: 1.00").first.wait_for()
        fill_option(page, "Stop at K =", 8)
        fill_option(page, "Fine-tuning steps per round", 100)
        page.get_by_role("button", name="Prune categories").first.click()
        wait_for_text(page, "round 1 of at most 2")
        save(page, "consensus_pruning.png", full_page=True)
        wait_for_text(page, "Stopped at K = 8")
        wait_for_text(page, "types used")
        save(page, "consensus_stopped.png", full_page=True)

        page.set_viewport_size({"width": 1400, "height": 2200})  # the whole tab: the main area scrolls on its own
        open_tab(page, "Traversal")
        page.wait_for_function(f"() => ({JS_COLUMN})('expression') !== null", timeout=EVENT_TIMEOUT_MS)
        save(page, "traversal.png", full_page=True)
        context.close()
        problems = server.errors()
    shutil.rmtree(root, ignore_errors=True)
    if problems:
        raise SystemExit("the server logged errors:\n" + "\n".join(problems))
    print(f"screenshots in {IMAGES}")


if __name__ == "__main__":
    main()
