"""Atlas scale: each stage's wall time and peak resident memory of the whole path at 10^4, 10^5 and 10^6 cells.

    python benchmarks/atlas.py --cells 1000000            # 10^4, 10^5 and 10^6 cells x 2,000 genes
    python benchmarks/atlas.py --quick                    # 10^4 cells only (CI size), short training
    python benchmarks/atlas.py --sizes 10000 100000       # the sizes given

Per size, in fresh processes: the simulator writes a sparse ``.h5ad`` (10x-like depth, about 10 % non-zeros
at 2,000 genes; ``--panel-fraction 1`` for deep data); then ``train_run`` (what ``cplmix train`` runs) reads it
(backed above 1 GiB), checks and prepares it in row chunks, holds the training data, finds the neighbors,
computes the Leiden start, trains ``--steps`` steps, runs the chunked inference and writes ``result.h5ad``;
then ``cplmix traverse`` reads the run folder, and the explorer opens it in headless Chromium (the time to the
first map and to the map redrawn after a zoom, as ``benchmarks/app_map.py`` measures them; ``--no-browser``
skips it). A sampling thread records the peak resident memory (RSS) of each stage (and CUDA's peak allocation
on a GPU); the process's own peak (``ru_maxrss``) is the total. The memory estimate that ``cplmix train``
checks before it starts (data.memory) is written next to the measured figures. Results go to
benchmarks/results/atlas[_quick].{json,md}. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_report  # noqa: E402

GIB = 2**30


class StageMeter:
    """Wall time and peak RSS of named stages of this process, from a thread sampling RSS every 20 ms."""

    def __init__(self):
        import psutil

        self.process = psutil.Process()
        self.current = None
        self.peak = 0
        self.stages: dict[str, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def wrap(self, name: str, function):
        """``function`` timed as stage ``name`` (repeated calls add up)."""

        def timed(*args, **kwargs):
            import torch

            outer, outer_peak = self.current, self.peak
            self.current = name
            self.peak = self.process.memory_info().rss
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - started
                self.peak = max(self.peak, self.process.memory_info().rss)
                entry = self.stages.setdefault(name, {"seconds": 0.0, "peak_rss_gib": 0.0})
                entry["seconds"] = round(entry["seconds"] + seconds, 2)
                entry["peak_rss_gib"] = round(max(entry["peak_rss_gib"], self.peak / GIB), 3)
                if torch.cuda.is_available():
                    entry["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
                self.current, self.peak = outer, max(self.peak, outer_peak)

        return timed

    def close(self) -> None:
        self._stop.set()


def child_simulate(args) -> dict:
    """Write the simulated atlas file; returns its shape, non-zeros and file size."""
    import numpy as np

    from cplmix_explorer.datasets import simulate

    started = time.perf_counter()
    adata = simulate(n_cells=args.n, n_genes=args.genes, n_types=args.types, n_classes=4, state_dim=2, seed=3,
                     panel_fraction=args.panel_fraction)
    adata.write_h5ad(args.path)
    nnz = int(adata.X.nnz)
    return {"seconds": round(time.perf_counter() - started, 2), "nnz": nnz,
            "density": round(nnz / (args.n * args.genes), 4),
            "median_counts": float(np.median(np.asarray(adata.X.sum(axis=1)).ravel())),
            "file_gib": round(os.path.getsize(args.path) / GIB, 3)}


def child_train(args) -> dict:
    """train_run on the file with each stage timed; returns the stages, the estimate and what the run recorded."""
    import torch

    import cplmix_explorer.api as api
    import cplmix_explorer.model.neighbors as neighbors
    import cplmix_explorer.train.engine as engine
    import cplmix_explorer.workflows.run as run
    from cplmix_explorer.config import CplMixConfig
    from cplmix_explorer.data.memory import estimate_for_file

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    meter = StageMeter()
    run.open_training_data = meter.wrap("read", run.open_training_data)
    api.prepare = meter.wrap("check + prepare", api.prepare)
    engine.DeviceData = meter.wrap("training data", engine.DeviceData)
    neighbors.find_neighbors = meter.wrap("neighbours", neighbors.find_neighbors)
    engine.start_partition = meter.wrap("leiden start", engine.start_partition)
    engine.Trainer.fit = meter.wrap("training", engine.Trainer.fit)
    api.infer = meter.wrap("inference", api.infer)
    run.write_result_file = meter.wrap("result.h5ad", run.write_result_file)
    config = CplMixConfig(n_types=args.types, n_arms=2, steps=args.steps, type_init_steps=min(300, args.steps),
                          n_genes=args.genes, device=args.device, seed=0, eval_every=10**9, labels="true_type")
    on_gpu = engine.resolve_device(args.device).type == "cuda"
    estimate = estimate_for_file(args.path, config.n_genes, on_gpu=on_gpu)
    started = time.perf_counter()
    outcome = run.train_run(args.path, args.run_dir, config, progress=False)
    total = time.perf_counter() - started
    meter.close()
    stages = meter.stages
    # training's own time excludes the Leiden start and the end-of-run inference that fit runs inside it
    inner = sum(stages.get(name, {}).get("seconds", 0.0) for name in ("leiden start",))
    if "training" in stages:
        stages["training"]["seconds"] = round(stages["training"]["seconds"] - inner, 2)
    metrics = outcome.metrics
    return {
        "stages": stages, "total_seconds": round(total, 1),
        "estimate_gib": {k: round(v / GIB, 2) for k, v in estimate.stages.items()},
        "estimate_peak_gib": round(estimate.peak / GIB, 2), "backed": estimate.backed,
        "steps_per_second": round(metrics["steps_per_second"], 2), "neighbours": metrics.get("neighbours"),
        "acc": metrics.get("acc"), "ari": metrics.get("ari"),
    }


def run_child(kind: str, extra: list[str], args) -> tuple[dict, dict]:
    """Run this script as a child for one stage group; returns its JSON report and its peak RSS (wait4)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        report = Path(handle.name)
    command = [sys.executable, __file__, "--child", kind, "--report", str(report), *extra]
    started = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"atlas: the {kind} stage failed (exit {process.returncode}): {' '.join(command)}")
    data = json.loads(report.read_text()) if report.stat().st_size else {}
    report.unlink()
    return data, {"seconds": round(seconds, 1), "peak_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 3)}


def measure_size(n: int, args, work: Path) -> dict:
    path, run_dir = work / f"atlas_{n}.h5ad", work / f"run_{n}"
    common = ["--n", str(n), "--genes", str(args.genes), "--types", str(args.types), "--path", str(path)]
    simulated, simulate_process = run_child("simulate", [*common, "--panel-fraction", str(args.panel_fraction)], args)
    trained, train_process = run_child(
        "train", [*common, "--run-dir", str(run_dir), "--steps", str(args.steps), "--device", args.device], args)
    started = time.perf_counter()
    first_cell = f"sim-cell-{0:0{len(str(n))}d}"  # the simulator's first cell: traverse its own type
    traverse = subprocess.Popen([sys.executable, "-m", "cplmix_explorer.cli", "traverse", str(run_dir), "--cell", first_cell,
                                 "--out", str(work / f"traverse_{n}.csv"), "--quiet"])
    _, status, usage = os.wait4(traverse.pid, 0)
    traverse_entry = {"seconds": round(time.perf_counter() - started, 1),
                      "peak_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 3), "exit": os.waitstatus_to_exitcode(status)}
    browser = None
    if args.browser:  # the explorer opened on the run folder, in headless Chromium (as benchmarks/app_map.py)
        from app_map import browser_times

        browser = browser_times(run_dir, work / f"explorer_{n}.log")
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
        path.unlink(missing_ok=True)
    return {"cells": n, "genes": args.genes, "simulate": {**simulated, "process_peak_rss_gib": simulate_process["peak_rss_gib"]},
            "train": {**trained, "process_seconds": train_process["seconds"],
                      "process_peak_rss_gib": train_process["peak_rss_gib"]},
            "traverse": traverse_entry, "explorer": browser}


def markdown(results: list[dict], info: dict) -> list[str]:
    stages = ["read", "check + prepare", "training data", "neighbours", "leiden start", "training", "inference",
              "result.h5ad"]
    lines = [f"# Atlas scale: stage times and peak memory ({info['host_cpu']}, load {info.get('load_average_1min')})",
             "", f"`{info['command']}`, {info['date']}", "",
             "| cells | non-zeros | simulate s | " + " | ".join(f"{s} s / GiB" for s in stages)
             + " | train peak GiB (estimate) | steps/s | traverse s / GiB | neighbor search (recall)"
             + " | explorer: start s / map drawn s / zoom redrawn s / RSS GiB |",
             "|" + "---|" * (len(stages) + 8)]
    for entry in results:
        train = entry["train"]
        cells = []
        for stage in stages:
            values = train["stages"].get(stage)
            cells.append(f"{values['seconds']:.1f} / {values['peak_rss_gib']:.2f}" if values else "-")
        search = train.get("neighbours") or {}
        lines.append(
            f"| {entry['cells']:,} | {entry['simulate']['nnz']:,} ({entry['simulate']['density']:.0%}) | "
            f"{entry['simulate']['seconds']:.0f} | " + " | ".join(cells)
            + f" | {train['process_peak_rss_gib']:.2f} ({train['estimate_peak_gib']:.2f}) | {train['steps_per_second']}"
            f" | {entry['traverse']['seconds']:.0f} / {entry['traverse']['peak_rss_gib']:.2f}"
            f" | {search.get('method', '-')} ({search.get('recall', '-')})"
            + (f" | {browser['server_ready_s']:.0f} / {browser['first_map_s']:.1f} / {browser['redraw_after_zoom_s']:.2f}"
               f" / {browser['server_rss_mb'] / 1024:.2f} |" if (browser := entry.get("explorer")) else " | - |")
        )
    lines += ["", "Each stage's peak RSS includes what earlier stages still hold (the process's resident set while "
              "the stage ran). 'train peak' is the whole training process's ru_maxrss; the estimate is what "
              "`cplmix train` checks against the available memory before it starts. The explorer: `panel serve "
              "apps/explorer.py --args --demo RUN` until it serves (the run loaded and its map read), then in headless "
              "Chromium the time from opening the Cells tab to the map's image and from a zoom to the redrawn image, "
              "and the server's RSS then."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=None, help="largest size (adds 10^4 and 10^5 below it)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="exact sizes to run")
    parser.add_argument("--quick", action="store_true", help="CI size: 10^4 cells, 50 steps")
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--types", type=int, default=40)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 300, --quick 50)")
    parser.add_argument("--panel-fraction", type=float, default=0.2, help="simulator depth (1.0: deep, dense data)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-browser", dest="browser", action="store_false",
                        help="skip the explorer's times in headless Chromium")
    parser.add_argument("--work", type=Path, default=None, help="folder for the files (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the data and run folders")
    parser.add_argument("--out", type=Path, default=None)
    # child mode (internal)
    parser.add_argument("--child", choices=["simulate", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        data = child_simulate(args) if args.child == "simulate" else child_train(args)
        args.report.write_text(json.dumps(data, default=str))
        return
    if args.sizes:
        sizes = sorted(args.sizes)
    elif args.quick:
        sizes = [args.cells or 10_000]
    else:
        largest = args.cells or 1_000_000
        sizes = sorted({s for s in (10_000, 100_000) if s < largest} | {largest})
    args.steps = args.steps or (50 if args.quick else 300)
    work = args.work or Path(tempfile.mkdtemp(prefix="cplmix-atlas-"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine()
    results = []
    out = args.out or RESULTS / ("atlas_quick" if args.quick else "atlas")
    try:
        for n in sizes:
            results.append(measure_size(n, args, work))
            print(json.dumps(results[-1]), flush=True)
            info["load_average_1min_end"] = round(os.getloadavg()[0], 2)
            # after every size, so that the sizes done are kept when a larger one is stopped
            write_report(out, {"machine": info, "steps": args.steps, "panel_fraction": args.panel_fraction,
                               "results": results}, markdown(results, info))
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
