"""Scale on one machine: train on N cells x G genes stored sparse (CSR) and assign every cell in chunks,
reporting memory (peak RSS, per 10^6 cells, per non-zero) and step time.

    python benchmarks/scale.py                          # 10^6 cells x 5,000 genes, 300 steps
    python benchmarks/scale.py --cells 200000 --steps 100   # when the machine's memory is short
    python benchmarks/scale.py --quick                  # tiny sizes, a smoke test

Memory is bounded when it grows with the non-zeros (CSR) and never with cells x genes: the report gives the
peak per non-zero and, for comparison, the dense float32 size of the matrix. On a GPU (--device cuda) the device peak is reported too.
Writes scale.json and scale.md to benchmarks/results/ (or --out).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine, write_atomic, write_json  # noqa: E402

from cplmix_explorer.workflows.bench import generated_counts, peak_memory_mb, time_inference  # noqa: E402
from cplmix_explorer.config import CplMixConfig  # noqa: E402
from cplmix_explorer.data.preprocess import prepare  # noqa: E402
from cplmix_explorer.device import resolve_device  # noqa: E402
from cplmix_explorer.train.engine import Trainer, build_module  # noqa: E402


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=5000)
    parser.add_argument("--types", type=int, default=115)
    parser.add_argument("--arms", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--distinct-cells", type=int, default=50_000, help="cells drawn; the rest are copies")
    parser.add_argument("--chunk", type=int, default=8192, help="cells per inference chunk")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="2,000 cells x 32 genes, 3 steps")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.cells, args.genes, args.types, args.steps, args.distinct_cells = 2000, 32, 4, 3, 500
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    memory = {"start_rss_mb": rss_mb()}
    phases = {}

    start = time.perf_counter()
    adata = generated_counts(args.cells, args.genes, seed=0, distinct_cells=args.distinct_cells)
    phases["generate_seconds"] = time.perf_counter() - start
    nnz = adata.X.nnz
    memory["after_data_rss_mb"] = rss_mb()

    config = CplMixConfig().update(n_types=args.types, n_genes=args.genes, n_arms=args.arms, batch_size=args.batch_size,
                                   device=str(device), validation_fraction=0.0, eval_every=10**9, log_every=50)
    start = time.perf_counter()
    prepared = prepare(adata, config)
    del adata  # the prepared copy is what training uses
    phases["prepare_seconds"] = time.perf_counter() - start
    memory["after_prepare_rss_mb"] = rss_mb()

    start = time.perf_counter()
    trainer = Trainer(build_module(config, prepared.n_genes, prepared.library_size), prepared, config)
    trainer.evaluate_at_end = False
    phases["to_device_seconds"] = time.perf_counter() - start
    memory["after_device_data_rss_mb"] = rss_mb()
    memory["device_data_mb"] = trainer.data.nbytes / 2**20

    warmup = min(20, args.steps)
    trainer.fit(warmup)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    trainer.fit(warmup + args.steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    training = {"steps": args.steps, "seconds": seconds, "step_ms": 1000 * seconds / args.steps,
                "it_per_s": args.steps / seconds, "fast_path": trainer.fast_path,
                "peak_memory_mb": peak_memory_mb(device)}
    memory["after_training_rss_mb"] = rss_mb()

    inference = time_inference(trainer, args.chunk)
    inference = {"cells": inference["inference_cells"], "chunk": args.chunk, "seconds": inference["inference_seconds"],
                 "cells_per_s": inference["inference_cells_per_s"], "peak_memory_mb": inference["inference_peak_memory_mb"]}
    memory["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    memory["dense_equivalent_mb"] = args.cells * args.genes * 4 / 2**20
    memory["device_data_per_million_cells_mb"] = memory["device_data_mb"] * 1e6 / args.cells
    memory["host_per_million_cells_mb"] = (memory["after_device_data_rss_mb"] - memory["start_rss_mb"]) * 1e6 / args.cells
    memory["device_data_bytes_per_non_zero"] = trainer.data.nbytes / nnz
    # bounded: the peak grows with the non-zeros (about 3 CSR copies while the data is prepared), not cells x genes
    memory["peak_rss_bytes_per_non_zero"] = (memory["peak_rss_mb"] - memory["start_rss_mb"]) * 2**20 / nnz
    report = {"machine": machine(), "device": str(device), "threads": torch.get_num_threads(), "cells": args.cells,
              "genes": args.genes, "types": args.types, "arms": args.arms, "batch_size": args.batch_size,
              "non_zeros": nnz, "non_zeros_per_cell": nnz / args.cells, "phases": phases, "training": training,
              "inference": inference, "memory": memory}
    stem = "scale_quick" if args.quick else f"scale_{device.type}"
    write_json(args.out / f"{stem}.json", report)
    write_atomic(args.out / f"{stem}.md", markdown(report))
    print(f"wrote {args.out / stem}.json and .md")
    return report


def markdown(report: dict) -> str:
    m, t, i = report["memory"], report["training"], report["inference"]
    return "\n".join([
        "# Scale: sparse training and chunked inference",
        "",
        f"{report['machine']['date']}, {report['device']} ({report['threads']} threads), torch {report['machine']['torch']}; "
        f"`{report['machine']['command']}`",
        "",
        f"- data: {report['cells']:,} cells x {report['genes']:,} genes, {report['non_zeros_per_cell']:.0f} non-zeros per cell (CSR)",
        f"- training: {t['step_ms']:.1f} ms per step ({t['it_per_s']:.1f} it/s), batch {report['batch_size']}, "
        f"{report['arms']} arms, {report['types']} types",
        f"- inference of all cells in chunks of {i['chunk']}: {i['seconds']:.1f} s ({i['cells_per_s']:,.0f} cells/s)",
        f"- data on the training device: {m['device_data_mb']:,.0f} MiB ({m['device_data_per_million_cells_mb']:,.0f} MiB "
        f"per 10^6 cells, {m['device_data_bytes_per_non_zero']:.1f} bytes per non-zero)",
        f"- host memory after set-up: {m['host_per_million_cells_mb']:,.0f} MiB per 10^6 cells; peak RSS "
        f"{m['peak_rss_mb']:,.0f} MiB ({m['peak_rss_bytes_per_non_zero']:.0f} bytes per non-zero); dense float32 would be "
        f"{m['dense_equivalent_mb']:,.0f} MiB",
        f"- training peak memory ({report['device']}): {t['peak_memory_mb']:,.0f} MiB",
        "",
    ])


if __name__ == "__main__":
    main()
