"""End to end in Chromium: the Markers tab shows each type's markers under the types' names, and a type renamed
there is shown by that name in the other tabs' dropdowns and in the downloaded table."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest

from app_server import ARTIFACTS, fill_option, open_app, open_tab, wait_for_text

from cplmix_explorer.workflows.run import load_run

pytestmark = pytest.mark.browser
DEMO = Path(__file__).resolve().parent.parent / "models" / "zeisel2015_demo"
#: The option texts of the Select whose title is ``title`` (null when none is on the page).
JS_SELECT_OPTIONS = """(title) => { for (const d of Bokeh.documents) for (const m of d.all_models)
    if (m.title == title && m.options !== undefined) return JSON.stringify(m.options); return null }"""


def test_markers_tab_shows_named_types_and_a_rename_reaches_the_other_tabs(server, browser, tmp_path):
    demo = load_run(DEMO)
    names = demo.type_names()
    counts = np.bincount(demo.predict().consensus_type, minlength=len(names))
    chosen = int(np.flatnonzero(counts)[0])
    page = open_app(browser, server.url)
    try:
        wait_for_text(page, "demo model zeisel2015_demo")
        open_tab(page, "Markers")
        wait_for_text(page, "Wilcoxon rank-sum test")
        for t in np.flatnonzero(counts):  # every type with cells is in the table under its name
            page.locator("td", has_text=names[t]).first.wait_for(timeout=120_000)
        assert page.locator("img").count() >= 1, "the dot plot is drawn"
        page.screenshot(path=ARTIFACTS / "09_markers.png", full_page=True)

        page.locator(".bk-input-group", has_text="Type to rename").locator("select").first.select_option(
            label=f"{names[chosen]} ({counts[chosen]:,} cells)"
        )
        fill_option(page, "New name", "My favourite type")
        page.get_by_role("button", name="Rename", exact=True).first.click()
        page.locator("td", has_text="My favourite type").first.wait_for(timeout=60_000)

        with page.expect_download(timeout=120_000) as download:
            page.get_by_role("button", name="Download table (CSV)").click()
        saved = tmp_path / "markers.csv"
        download.value.save_as(saved)
        assert "My favourite type" in saved.read_text()

        open_tab(page, "Traversal")
        page.wait_for_function(f"() => String(({JS_SELECT_OPTIONS})('Type')).includes('My favourite type')", timeout=120_000)
        open_tab(page, "Cells")
        page.wait_for_function(f"() => String(({JS_SELECT_OPTIONS})('Highlight type')).includes('My favourite type')",
                               timeout=120_000)
        page.screenshot(path=ARTIFACTS / "10_renamed_type_in_cells.png")
    except BaseException:
        with contextlib.suppress(Exception):
            page.screenshot(path=ARTIFACTS / "failed_markers.png", full_page=True)
        raise
    finally:
        page.close()
    assert server.errors() == []
