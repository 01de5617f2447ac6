"""The Cells tab's map in headless Chromium (``panel serve apps/explorer.py`` with the demo model): colouring
by an obs column and by a gene typed into the gene box redraws it, a highlighted type keeps its colours over
the grey of the others, the legend lists each entry once. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import contextlib

import pytest

from app_server import ARTIFACTS, JS_MAX_ROWS, open_app, open_tab, wait_for_text

pytestmark = pytest.mark.browser

#: A signature of every image the page draws (size and sum of its pixels): it changes when the map is redrawn
#: in other colours or over another range.
JS_IMAGES = """() => { const out = []; for (const d of Bokeh.documents) for (const m of d.all_models) {
    const x = m.data; if (x && x.image !== undefined) for (const image of x.image) {
        let sum = 0; for (let i = 0; i < image.length; i++) { const v = image[i]; if (Number.isFinite(v)) sum += v % 9973 }
        out.push(image.length + ':' + sum) } } return out.sort().join(',') }"""
#: The cell map: the newest plot titled "N cells · ..." (Bokeh numbers its models in order; a replaced map can
#: linger in the page's documents).
JS_MAP = """(() => { let map = null, newest = -1; for (const d of Bokeh.documents) for (const m of d.all_models) {
    if (!m.title || !String(m.title.text ?? '').includes(' cells · ')) continue
    const number = parseInt(String(m.id).replace(/[^0-9]/g, '')); if (number > newest) { newest = number; map = m } }
    return map })()"""
#: The cell map's legend entries as [label, colour]: explicit items, or one item per value of a field (the map's
#: legend is one element coloured by category; Bokeh lists each value of its field once, in the data's order).
JS_LEGEND_ENTRIES = f"""(() => {{ const map = {JS_MAP}; const out = []; if (map) for (const side of ['center', 'right', 'left', 'above', 'below'])
    for (const a of (map[side] ?? [])) if (a.type == 'Legend') for (const item of a.items) {{
        const glyph = item.renderers[0].glyph, colour = glyph.fill_color
        if (item.label.field === undefined) {{ out.push([String(item.label.value ?? item.label), String(colour.value ?? colour)]); continue }}
        const values = item.renderers[0].data_source.data[item.label.field], mapper = colour.transform
        for (const value of new Set(values)) out.push([String(value), mapper ? mapper.palette[mapper.factors.indexOf(value)] : String(colour.value ?? colour)]) }}
    return out }})()"""
#: The labels of the cell map's legend.
JS_LEGEND = f"""() => {JS_LEGEND_ENTRIES}.map(entry => entry[0])"""
#: How many images the cell map draws (two when a type is highlighted: the other cells in grey beneath it).
JS_IMAGE_COUNT = f"""() => {{ const map = {JS_MAP}; let n = 0; if (map) for (const r of map.renderers) {{
    const d = r.data_source && r.data_source.data; if (d && d.image !== undefined) n += d.image.length }} return n }}"""
#: The cell map's pixels: for each image it draws, how many pixels are drawn (alpha > 0), how many of them are
#: near black, light grey (the other cells under a highlight), the colour of the legend's first entry, or faint
#: (alpha below the 160 of 255 the map gives its least dense pixel: cells a short run spreads thin stay visible).
JS_PIXELS = f"""() => {{ const map = {JS_MAP}; const out = []; if (!map) return out
    const entries = {JS_LEGEND_ENTRIES}; const entry = entries.length ? entries[0][1].toLowerCase() : null
    const hex = (v) => '#' + [v & 255, (v >>> 8) & 255, (v >>> 16) & 255].map(x => x.toString(16).padStart(2, '0')).join('')
    for (const r of map.renderers) {{ const d = r.data_source && r.data_source.data; if (!d || d.image === undefined) continue
        for (const image of d.image) {{ let drawn = 0, black = 0, grey = 0, legend = 0, faint = 0
            for (const v of image) {{ if ((v >>> 24) == 0) continue; drawn++; if ((v >>> 24) < 160) faint++
                const red = v & 255, green = (v >>> 8) & 255, blue = (v >>> 16) & 255
                if (red < 60 && green < 60 && blue < 60) black++
                if (red == green && green == blue && red > 150) grey++
                if (entry && hex(v) == entry) legend++ }}
            out.push({{drawn, black, grey, legend, faint}}) }} }}
    return out }}"""
#: The cell map's x and y ranges against the cells' positions (the hover layer holds them): the margins left
#: on each side as a fraction of the span.
JS_MARGINS = f"""() => {{ const map = {JS_MAP}; let xs = [], ys = []
    for (const r of map.renderers) {{ const d = r.data_source && r.data_source.data
        if (d && d.x !== undefined && d.image === undefined && d.x.length > xs.length) {{ xs = Array.from(d.x); ys = Array.from(d.y) }} }}
    const margins = (range, values) => {{ const low = Math.min(...values), high = Math.max(...values), span = high - low
        return [(low - range.start) / span, (range.end - high) / span] }}
    return xs.length ? [...margins(map.x_range, xs), ...margins(map.y_range, ys)] : null }}"""
#: Whether the cell map's title contains the text.
JS_TITLE = f"""(text) => {{ const map = {JS_MAP}; return map !== null && String(map.title.text).includes(text) }}"""
#: The titles of the colour bars (numeric colour scales) on the page.
JS_COLORBARS = """() => { const out = []; for (const d of Bokeh.documents) for (const m of d.all_models)
    if (m.type == 'ColorBar') out.push(String(m.title)); return out }"""
#: How long the test waits for the map to be redrawn: generous, for a busy machine.
REDRAW_TIMEOUT_MS = 300_000


def choose(page, label: str, value: str) -> None:
    page.locator(".bk-input-group", has_text=label).locator("select").first.select_option(value)


def wait_for_title(page, text: str) -> None:
    page.wait_for_function(JS_TITLE, arg=text, timeout=REDRAW_TIMEOUT_MS)


def redrawn(page, before: str) -> str:
    page.wait_for_function(f"(old) => {{ const now = ({JS_IMAGES})(); return now != '' && now != old }}", arg=before,
                           timeout=REDRAW_TIMEOUT_MS)
    return page.evaluate(JS_IMAGES)


def test_the_cell_map_colours_by_an_obs_column_and_a_typed_gene_and_highlights_a_type(server, browser):
    page = open_app(browser, server.url)
    try:
        cell_map(page)
    except BaseException:
        with contextlib.suppress(Exception):
            page.screenshot(path=ARTIFACTS / "failed_cell_map.png", full_page=True)
        raise
    finally:
        page.close()
    assert server.errors() == []


def cell_map(page):
    wait_for_text(page, "demo model zeisel2015_demo")
    open_tab(page, "Cells")
    page.wait_for_function(f"() => ({JS_MAX_ROWS})('image') > 0", timeout=REDRAW_TIMEOUT_MS)
    wait_for_title(page, "UMAP of types and states · colour: type")
    legend = page.evaluate(JS_LEGEND)
    assert legend and len(legend) == len(set(legend)), f"each type once in the legend: {legend}"
    images = page.evaluate(JS_IMAGES)
    margins = page.evaluate(JS_MARGINS)
    assert margins and min(margins) > 0.01, f"no cell on the frame of the map: margins {margins}"
    [by_type] = page.evaluate(JS_PIXELS)
    assert by_type["drawn"] > 0 and by_type["faint"] == 0, f"every cell drawn opaque enough to see: {by_type}"
    page.screenshot(path=ARTIFACTS / "cell_map_types.png")

    choose(page, "Colour by", "subclass")  # an obs column of categories
    wait_for_title(page, "colour: subclass")
    images = redrawn(page, images)
    page.wait_for_function(f"() => ({JS_LEGEND})().length > 10")  # the 48 subclasses, not the 10 types
    legend = page.evaluate(JS_LEGEND)
    assert len(legend) == len(set(legend)), legend
    page.screenshot(path=ARTIFACTS / "cell_map_subclass.png")

    # a gene typed as a user would, in lower case: the box suggests the gene, Enter takes the suggestion
    field = page.locator(".bk-input-group", has_text="Colour by gene").locator("input").first
    field.click()
    field.press_sequentially("plp1")
    page.get_by_text("Plp1", exact=True).first.wait_for()  # the suggestion
    field.press("Enter")
    wait_for_title(page, "colour: gene Plp1")
    images = redrawn(page, images)
    page.wait_for_function(f"() => ({JS_COLORBARS})().includes('gene Plp1')")  # a colour scale titled by the gene
    assert page.evaluate(JS_LEGEND) == [], "a gene's expression has a colour scale, not a legend"
    assert page.locator(".bk-input-group", has_text="Colour by").locator("select").first.input_value() == "gene Plp1"
    page.screenshot(path=ARTIFACTS / "cell_map_gene.png")

    field.fill("NotAGene")  # no such gene: said under the box, the map keeps its colour
    field.press("Enter")
    wait_for_text(page, "No gene named NotAGene in this data.")
    assert page.evaluate(JS_TITLE, "colour: gene Plp1")

    choose(page, "Colour by", "type")
    wait_for_title(page, "colour: type")
    images = redrawn(page, images)
    assert page.evaluate(JS_IMAGE_COUNT) == 1
    highlight = page.locator(".bk-input-group", has_text="Highlight type").locator("select").first
    highlight.select_option(index=2)
    name = highlight.evaluate("select => select.options[select.selectedIndex].text")
    wait_for_title(page, f"colour: type · highlighted: {name}")
    redrawn(page, images)
    page.wait_for_function(f"() => ({JS_IMAGE_COUNT})() == 2", timeout=REDRAW_TIMEOUT_MS)  # the others in grey beneath
    assert page.evaluate(JS_LEGEND) == [name], "the legend lists the highlighted type only"
    grey, highlighted = page.evaluate(JS_PIXELS)  # the others beneath, then the type
    assert grey["drawn"] > 0 and grey["grey"] == grey["drawn"], f"the other cells in light grey: {grey}"
    assert highlighted["drawn"] > 0 and highlighted["black"] == 0, f"the highlighted type is not drawn in black: {highlighted}"
    assert highlighted["legend"] > highlighted["drawn"] / 2, f"the highlighted type in its legend colour: {highlighted}"
    page.screenshot(path=ARTIFACTS / "cell_map_highlight.png")
