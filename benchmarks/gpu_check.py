"""One-GPU check of issue 7's targets, in under 5 minutes; prints one JSON summary (and writes it to $OUT).

    python benchmarks/gpu_check.py                 # on a CUDA GPU
    python benchmarks/gpu_check.py --quick --device cpu   # tiny sizes: checks the script itself anywhere

Measures, on the Smart-seq shape (5,000 genes, 115 types, 2 state dims):
  graph_vs_eager          the CUDA-graph step against the eager step: same losses (max relative difference)
  arms2_batch256          it/s, 2 arms, batch 256 (target >= 800 on an H100/H200)
  arms5_batch256          it/s, 5 arms, batch 256 (target >= 600)
  batch5000               cells/s at batch 5,000 (target >= 1e6)
  smartseq_40k_schedule   the paper's 40K-iteration schedule on 22k cells, run in full (projected with --quick)
                          (target < 60 s of training)
  sparse_training         10^6 cells x 5,000 genes stored CSR on the device: peak memory and step time, and the
                          step time relative to 2x10^4 cells (the cost of a step must not grow with the cells)
  chunked_inference       assignments and states of all 10^6 cells in chunks: time and peak memory
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, write_json  # noqa: E402

from cplmix_explorer.workflows.bench import generated_counts, run_benchmark  # noqa: E402
from cplmix_explorer.config import CplMixConfig  # noqa: E402
from cplmix_explorer.data.preprocess import prepare  # noqa: E402
from cplmix_explorer.device import resolve_device  # noqa: E402
from cplmix_explorer.train.engine import Trainer, build_module  # noqa: E402

FULL = dict(genes=5000, types=115, batch=256, cells=20_000, steps=1000, warmup=50, big_batch=5000, big_steps=200,
            scale_cells=1_000_000, scale_steps=300, schedule_cells=22_000, schedule_steps=40_000, equivalence_steps=200)
QUICK = dict(genes=32, types=4, batch=32, cells=500, steps=3, warmup=1, big_batch=64, big_steps=2, scale_cells=2000,
             scale_steps=3, schedule_cells=500, schedule_steps=20, equivalence_steps=10)
TARGETS = {"arms2_batch256": ("it_per_s", 800), "arms5_batch256": ("it_per_s", 600), "batch5000": ("cells_per_s", 1e6)}


def graph_vs_eager(sizes: dict, device: torch.device) -> dict:
    """Train the same seed with the eager and the CUDA-graph step; compare every logged loss term."""
    if device.type != "cuda":
        return {"skipped": "the CUDA-graph fast path needs a CUDA GPU"}
    adata = generated_counts(sizes["cells"], sizes["genes"], seed=1)
    histories, paths = {}, {}
    for fast_path in ("eager", "graph"):
        config = CplMixConfig().update(n_types=sizes["types"], n_genes=sizes["genes"], device=str(device), seed=1,
                                       fast_path=fast_path, eval_every=10**9, validation_fraction=0.0)
        prepared = prepare(adata, config)
        trainer = Trainer(build_module(config, prepared.n_genes, prepared.library_size), prepared, config)
        trainer.evaluate_at_end = False
        histories[fast_path] = trainer.fit(sizes["equivalence_steps"]).history_values
        paths[fast_path] = trainer.fast_path
    eager, graph = histories["eager"], histories["graph"]
    relative = np.abs(graph - eager) / np.maximum(np.abs(eager), 1e-3)
    return {"steps": sizes["equivalence_steps"], "graph_captured": paths["graph"] == "graph",
            "max_relative_difference": float(relative.max()), "first_step_relative_difference": float(relative[0].max()),
            "agree": bool(paths["graph"] == "graph" and relative[0].max() < 1e-4 and relative.max() < 1e-2)}


def smartseq_schedule(sizes: dict, device: torch.device, arms2_it_per_s: float, quick: bool) -> dict:
    """The paper's Smart-seq schedule (40K iterations, batch 256, 2 arms) with the default evaluations."""
    projected = 40_000 / arms2_it_per_s
    if quick:
        return {"projected_seconds": projected, "run": False}
    adata = generated_counts(sizes["schedule_cells"], sizes["genes"], seed=2)
    config = CplMixConfig().update(n_types=sizes["types"], n_genes=sizes["genes"], device=str(device), seed=2)
    trainer = Trainer(build_module(config, sizes["genes"]), prepare(adata, config), config)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result = trainer.fit(sizes["schedule_steps"])
    return {"projected_seconds": projected, "run": True, "steps": result.step, "seconds": result.elapsed_seconds,
            "it_per_s": result.steps_per_second, "evaluations": len(result.evaluations),
            "meets_target": result.elapsed_seconds < 60}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of this script")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    device = resolve_device(args.device)
    started = time.perf_counter()
    common = dict(genes=sizes["genes"], types=sizes["types"], device=str(device))
    summary: dict = {"device": str(device), "quick": args.quick, "machine": machine(), "targets": {}}

    def timed(name: str, **options) -> dict:
        result = run_benchmark(**common, **options)
        keep = ("it_per_s", "cells_per_s", "batch_size", "arms", "cells", "non_zeros", "peak_memory_mb",
                "data_on_device_mb", "fast_path", "device_name", "inference_seconds", "inference_cells_per_s",
                "inference_peak_memory_mb", "inference_cells")
        row = {k: result[k] for k in keep if k in result}
        row["step_ms"] = 1000 / result["it_per_s"]
        if name in TARGETS:
            key, target = TARGETS[name]
            summary["targets"][name] = {"value": result[key], "target": target, "met": result[key] >= target}
        print(f"{name}: {json.dumps(row, default=str)}", file=sys.stderr, flush=True)
        return row

    summary["graph_vs_eager"] = graph_vs_eager(sizes, device)
    batch, cells = sizes["batch"], sizes["cells"]
    summary["arms2_batch256"] = timed("arms2_batch256", arms=2, batch_size=batch, cells=cells, steps=sizes["steps"],
                                      warmup=sizes["warmup"])
    summary["arms5_batch256"] = timed("arms5_batch256", arms=5, batch_size=batch, cells=cells, steps=sizes["steps"],
                                      warmup=sizes["warmup"])
    summary["batch5000"] = timed("batch5000", arms=2, batch_size=sizes["big_batch"], cells=max(cells, 4 * sizes["big_batch"]),
                                 steps=sizes["big_steps"], warmup=sizes["warmup"])
    summary["smartseq_40k_schedule"] = smartseq_schedule(sizes, device, summary["arms2_batch256"]["it_per_s"], args.quick)
    if summary["smartseq_40k_schedule"].get("run"):
        summary["targets"]["smartseq_40k_schedule"] = {"value": summary["smartseq_40k_schedule"]["seconds"],
                                                       "target": 60, "met": summary["smartseq_40k_schedule"]["meets_target"]}
    scale = timed("sparse_training", arms=2, batch_size=batch, cells=sizes["scale_cells"], distinct_cells=50_000,
                  steps=sizes["scale_steps"], warmup=sizes["warmup"], inference=True)
    scale["step_time_vs_small_data"] = summary["arms2_batch256"]["it_per_s"] / scale["it_per_s"]
    scale["peak_memory_per_million_cells_mb"] = scale["peak_memory_mb"] * 1e6 / scale["cells"]
    summary["chunked_inference"] = {"cells": scale.pop("inference_cells"), "seconds": scale.pop("inference_seconds"),
                                    "cells_per_s": scale.pop("inference_cells_per_s"),
                                    "peak_memory_mb": scale.pop("inference_peak_memory_mb")}
    summary["sparse_training"] = scale
    summary["seconds"] = time.perf_counter() - started
    text = json.dumps(summary, default=str)
    print(text)
    if os.environ.get("OUT"):
        write_json(Path(os.environ["OUT"]) / "gpu_check.json", json.loads(text))
    return summary


if __name__ == "__main__":
    main()
