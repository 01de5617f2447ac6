"""The explorer's cell map at scale: a run folder of N simulated cells, its map, and the browser's times.

    python benchmarks/app_map.py --cells 100000
    python benchmarks/app_map.py --cells 1000000
    python benchmarks/app_map.py --run RUN_DIR            # a run folder made elsewhere (e.g. atlas.py --keep)

Stages (each timed): simulate N cells (cplmix_explorer.datasets.simulate) into an .h5ad, a short training
(``type_init=random``, no augmentation: the map, not the model, is measured) that writes result.h5ad and the
map (UMAP on 50,000 cells, the rest placed), then ``panel serve apps/explorer.py --args --demo RUN`` (the run
loaded and its map read from map.npy at start) in headless Debian Chromium through Playwright: time from
opening the Cells tab to the map's image, and from a zoom (a mouse-wheel turn over the map's centre, in or
out) to the redrawn image, the median of five zooms in and out. Also: how faithfully the placed cells sit (the fraction of each cell's 15 nearest
cells on the map that share its consensus type, for fitted and placed cells). With ``--run`` the
first two stages are skipped and the explorer opens that folder (its map made by ``cplmix train``). Writes
benchmarks/results/app_map_<N>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _common import RESULTS, machine, write_report  # noqa: E402

#: Signature of the images on the page (size and a sum of pixels): changes when the map is redrawn.
JS_IMAGES = """() => { const out = []; for (const d of Bokeh.documents) for (const m of d.all_models) {
    const x = m.data; if (x && x.image !== undefined) for (const image of x.image) {
        let sum = 0; for (let i = 0; i < image.length; i++) { const v = image[i]; if (Number.isFinite(v)) sum += v % 9973 }
        out.push(image.length + ':' + sum) } } return out.sort().join(',') }"""
#: The cell map's x range (start, end), or null before it is drawn.
JS_MAP_RANGE = """() => { for (const d of Bokeh.documents) for (const m of d.all_models)
    if ((m.type == 'Plot' || m.type == 'Figure') && m.title && String(m.title.text).includes('cells ·'))
        return [m.x_range.start, m.x_range.end]; return null }"""
#: The zooms timed, one after the other, as mouse-wheel turns over the map's centre (Bokeh's wheel zoom: -300 halves
#: the shown range, 300 widens it by half): in, in, out, in, out. A wheel turn is what a user does; setting the ranges
#: from a script instead sometimes reaches the server as no change at all.
ZOOMS = (-300, -300, 300, -300, 300)


def build_run(work: Path, cells: int, genes: int, types: int, steps: int) -> tuple[Path, dict]:
    from cplmix_explorer.config import CplMixConfig
    from cplmix_explorer.datasets import simulate
    from cplmix_explorer.workflows.run import train_run

    times = {}
    data = work / f"sim_{cells}.h5ad"
    start = time.perf_counter()
    simulate(n_cells=cells, n_genes=genes, n_types=types, seed=3).write_h5ad(data)
    times["simulate_s"] = time.perf_counter() - start
    run_dir = work / "run"
    config = CplMixConfig(n_types=types, steps=steps, n_genes=genes, type_init="random", augment="none",
                          eval_every=steps, checkpoint_every=steps)
    start = time.perf_counter()
    train_run(str(data), run_dir, config, progress=True)
    times["train_and_outputs_s"] = time.perf_counter() - start
    info = json.loads((run_dir / "map.json").read_text())
    times["map_s"] = info["seconds"]
    return run_dir, times


def placement_quality(run_dir: Path) -> dict:
    import anndata
    import numpy as np
    from sklearn.neighbors import NearestNeighbors

    result = anndata.read_h5ad(run_dir / "result.h5ad", backed="r")
    types = result.obs["cplmix_type"].cat.codes.to_numpy()
    coordinates = np.load(run_dir / "map.npy")
    info = json.loads((run_dir / "map.json").read_text())
    n = len(types)
    sampled = np.zeros(n, bool)
    if info["sample"] < n:
        sampled[np.sort(np.random.default_rng(info["seed"]).choice(n, info["sample"], replace=False))] = True
    else:
        sampled[:] = True
    rng = np.random.default_rng(0)
    probe = rng.choice(n, min(n, 20_000), replace=False)
    _, neighbors = NearestNeighbors(n_neighbors=16).fit(coordinates).kneighbors(coordinates[probe])
    purity = (types[neighbors[:, 1:]] == types[probe, None]).mean(axis=1)
    out = {"purity_fitted": float(purity[sampled[probe]].mean())}
    if (~sampled[probe]).any():
        out["purity_placed"] = float(purity[~sampled[probe]].mean())
    return out


def browser_times(run_dir: Path, log: Path) -> dict:
    from app_server import JS_MAX_ROWS, AppServer, launch_browser, open_app, open_tab
    from playwright.sync_api import sync_playwright

    out = {}
    start = time.perf_counter()
    with AppServer(["--demo", str(run_dir)], log) as server:
        server.wait_ready(3600)  # --warm: the run is loaded, inferred and its map read before the first page
        out["server_ready_s"] = time.perf_counter() - start
        with sync_playwright() as playwright:
            context = launch_browser(playwright)
            try:
                page = open_app(context, server.url, 600_000)
                start = time.perf_counter()
                open_tab(page, "Cells")
                page.wait_for_function(f"() => ({JS_MAX_ROWS})('image') > 0", timeout=600_000, polling=50)
                out["first_map_s"] = time.perf_counter() - start
                redraws = []
                # the map is the largest canvas of the Cells tab
                boxes = [box for box in (canvas.bounding_box() for canvas in page.locator("canvas").all()) if box]
                box = max(boxes, key=lambda b: b["width"] * b["height"])
                page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                for delta in ZOOMS:
                    before, shown = page.evaluate(JS_IMAGES), page.evaluate(JS_MAP_RANGE)
                    zoomed_at = page.evaluate("() => performance.now()")
                    page.mouse.wheel(0, delta)
                    page.wait_for_function(f"(old) => ({JS_IMAGES})() != old", arg=before, timeout=600_000, polling=20)
                    redraws.append((page.evaluate("() => performance.now()") - zoomed_at) / 1000)
                    if page.evaluate(JS_MAP_RANGE) == shown:
                        raise RuntimeError("the wheel turn did not zoom the cell map")
                out["redraw_after_zoom_s"] = float(statistics.median(redraws))
                out["redraws_after_zoom_s"] = redraws
                out["server_rss_mb"] = server.rss_mb()
                page.screenshot(path=log.with_suffix(".png"))
            finally:
                context.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--genes", type=int, default=1000)
    parser.add_argument("--types", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--work", type=Path, default=None, help="folder for the data and the run (default: a temporary one)")
    parser.add_argument("--run", type=Path, default=None, help="an existing run folder to open instead of building one")
    args = parser.parse_args()
    if args.run:
        run_dir, times = args.run, {"simulate_s": float("nan"), "train_and_outputs_s": float("nan")}
        config = json.loads((run_dir / "run.json").read_text())["config"]
        args.genes, args.types, args.steps = config["n_genes"], config["n_types"], config["steps"]
        times["map_s"] = json.loads((run_dir / "map.json").read_text())["seconds"]
        args.cells = json.loads((run_dir / "map.json").read_text())["cells"]
    else:
        work = args.work or Path(tempfile.mkdtemp(prefix="cplmix-app-map-"))
        work.mkdir(parents=True, exist_ok=True)
        run_dir, times = build_run(work, args.cells, args.genes, args.types, args.steps)
    quality = placement_quality(run_dir)
    browser = browser_times(run_dir, RESULTS / f"app_map_{args.cells}_server.log")
    map_info = json.loads((run_dir / "map.json").read_text())
    data = {"machine": machine(), "cells": args.cells, "genes": args.genes, "types": args.types, "steps": args.steps,
            "map": {k: map_info[k] for k in ("method", "cells", "sample")}, **times, **quality, **browser}
    def seconds(value: float) -> str:
        return f"{value:.0f} s" if value == value else f"- (the run was made elsewhere: {args.run})"

    lines = [
        f"# The cell map with {args.cells:,} cells ({args.genes} genes, {args.types} types, {args.steps} training steps)",
        "",
        f"Machine: {data['machine']['host_cpu']}, load average {data['machine'].get('load_average_1min')} "
        f"(shared machine: other work ran at the same time). Command: `{data['machine']['command']}`",
        "",
        "| stage | figure |",
        "|---|---|",
        f"| simulate + write .h5ad | {seconds(times['simulate_s'])} |",
        f"| train + inference + result.h5ad + map | {seconds(times['train_and_outputs_s'])} |",
        f"| of which the map ({map_info['method']}, fitted on {map_info['sample']:,} cells) | {times['map_s']:.0f} s |",
        f"| map neighbors sharing the type: fitted cells / placed cells | {quality['purity_fitted']:.3f} / "
        f"{quality.get('purity_placed', float('nan')):.3f} |",
        f"| server start (run loaded, inferred, map read) | {browser['server_ready_s']:.0f} s |",
        f"| Cells tab opened -> map drawn | {browser['first_map_s']:.1f} s (target <= 15 s) |",
        f"| zoom -> map redrawn (median of {len(ZOOMS)} zooms) | {browser['redraw_after_zoom_s']:.2f} s (target <= 1 s; "
        f"each: {', '.join(f'{s:.2f}' for s in browser['redraws_after_zoom_s'])}) |",
        f"| server RSS with the map shown | {browser['server_rss_mb']:.0f} MB |",
    ]
    write_report(RESULTS / f"app_map_{args.cells}", data, lines)


if __name__ == "__main__":
    main()
