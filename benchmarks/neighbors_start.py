"""Does the approximate neighbor graph change the Leiden start? The same cells' start partition from pynndescent's
graph and from the exact graph, each scored against the simulator's true types, and against each other.

    python benchmarks/neighbors_start.py --cells 100000        # about 5 minutes on 2 cores (the exact search dominates)

Simulated data as ``benchmarks/atlas.py`` makes it (2,000 genes, 40 types in 4 classes, seed 3); the engine's
own graph input (its training rows, genes standardised, top 50 principal components, 15 neighbors, UMAP
weights) and its Leiden search at K = 40. Writes benchmarks/results/neighbors_start_<cells>.{json,md}.
Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--types", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from cplmix_explorer import CplMixVAE
    from cplmix_explorer.analysis.metrics import compare_to_labels
    from cplmix_explorer.datasets import simulate
    from cplmix_explorer.config import neighbor_components
    from cplmix_explorer.model.neighbors import NEIGHBORS, find_neighbors
    from cplmix_explorer.model.type_init import LeidenGraph, leiden_partition

    adata = simulate(n_cells=args.cells, n_genes=2000, n_types=args.types, n_classes=4, state_dim=2, seed=3)
    model = CplMixVAE(adata, n_types=args.types, n_arms=2, seed=0, threads=args.threads, n_genes=2000)
    trainer = model.make_trainer()
    rows = trainer.train_rows
    truth = np.asarray(adata.obs["true_type"].astype("category").cat.codes)[rows.cpu().numpy()]
    results, starts = [], {}
    for method in ("pynndescent", "exact"):
        started = time.perf_counter()
        search = find_neighbors(trainer._graph_input(rows), len(rows), NEIGHBORS, neighbor_components(model.config),
                                seed=0, method=method)
        seconds = time.perf_counter() - started
        graph = LeidenGraph.from_neighbors(search.indices.cpu().numpy(), search.distances.cpu().numpy())
        starts[method] = leiden_partition(graph, args.types, seed=0).labels
        results.append({"search": method, "recall": round(search.recall, 4), "search_seconds": round(seconds, 1),
                        "start_ari": round(compare_to_labels(starts[method], truth)["ari"], 4)})
    between = round(compare_to_labels(starts["pynndescent"], starts["exact"])["ari"], 4)
    info = machine()
    lines = [f"# The Leiden start from approximate and exact neighbors ({len(rows):,} training cells, K = {args.types})", "",
             f"`{info['command']}`, {info['date']}, {info['host_cpu']}, load {info.get('load_average_1min', '-')}", "",
             "| search | recall | search s | start ARI vs the true types |", "|---|---|---|---|"]
    lines += [f"| {r['search']} | {r['recall']} | {r['search_seconds']} | {r['start_ari']} |" for r in results]
    lines += ["", f"ARI between the two starts: {between}"]
    write_report(RESULTS / f"neighbors_start_{args.cells}", {"machine": info, "cells": args.cells, "types": args.types,
                                                             "results": results, "ari_between_starts": between}, lines)


if __name__ == "__main__":
    main()
