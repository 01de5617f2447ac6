"""How large can the simulator go? Time and peak memory of ``cplmix_explorer.datasets.simulate`` at scale
(issue 3: hundreds to a million cells, generated in chunks, sparse output).

    python benchmarks/simulator_scale.py                           # 1,000,000 cells x 2,000 genes
    python benchmarks/simulator_scale.py --cells 100000 --genes 2000 --chunk-size 16384

Runs in a fresh process per size (peak resident memory is per process). Reports seconds, peak RSS, the
size of X (CSR: float32 values + indices + row pointers), non-zeros and density. Writes
benchmarks/results/simulator_scale.json (appends one entry per size) and prints the entry. Measures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--chunk-size", type=int, default=None, help="cells per dense chunk (default: simulate's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "simulator_scale.json")
    args = parser.parse_args()

    import numpy as np

    from cplmix_explorer.datasets import simulate

    options = {"chunk_size": args.chunk_size} if args.chunk_size else {}
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    adata = simulate(n_cells=args.cells, n_genes=args.genes, seed=args.seed, **options)
    seconds = time.perf_counter() - started
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    matrix = adata.X
    x_bytes = matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes
    entry = {
        "cells": args.cells,
        "genes": args.genes,
        "chunk_size": args.chunk_size or "default",
        "seconds": round(seconds, 1),
        "cells_per_second": round(args.cells / seconds),
        "peak_rss_gib": round(peak_rss / 2**30, 2),
        "rss_before_gib": round(baseline_rss / 2**30, 2),
        "x_gib": round(x_bytes / 2**30, 2),
        "nnz": int(matrix.nnz),
        "density": round(matrix.nnz / (args.cells * args.genes), 3),
        "median_counts_per_cell": float(np.median(np.asarray(matrix.sum(axis=1)).ravel())),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    entries = json.loads(args.out.read_text()) if args.out.exists() else []
    entries.append(entry)
    temporary = args.out.with_name(f".{args.out.name}.tmp")
    temporary.write_text(json.dumps(entries, indent=2) + "\n")
    os.replace(temporary, args.out)
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    main()
