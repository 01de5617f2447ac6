"""The Leiden start's search on the development suite: for each dataset, its time, the Leiden runs it made and
each arm's start ARI against the labels, with today's search (bracketing K from resolution 1, 2 Leiden
iterations per run, later arms from the first arm's resolution) against a reference: the same search with
runs to convergence (``--iterations -1``) or another revision's ``leiden_partition`` (``--reference REV``, e.g.
the geometric bisection before it, ``--reference 6778d31``).

    python benchmarks/leiden_search.py --datasets zeisel_classes sim120 --reference 6778d31
    python benchmarks/leiden_search.py --h5ad big.h5ad --labels true_type --types 40

The neighbor graph is found once per dataset (what ``Trainer.prepare_type_init`` finds) and both searches run
on it. Writes one JSON line per dataset and search to ``--out``. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import types
from pathlib import Path

import igraph
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from quality_suite import DATASETS  # noqa: E402

from cplmix_explorer import CplMixVAE  # noqa: E402
from cplmix_explorer.analysis.metrics import compare_to_labels  # noqa: E402
from cplmix_explorer.config import neighbor_components  # noqa: E402
from cplmix_explorer.model import type_init  # noqa: E402
from cplmix_explorer.model.neighbors import find_neighbors  # noqa: E402


def reference_search(revision: str):
    """``leiden_partition`` as it was at a git revision (loaded from ``git show``, beside today's module)."""
    source = subprocess.run(["git", "show", f"{revision}:cplmix_explorer/model/type_init.py"], check=True,
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]).stdout
    module = types.ModuleType(f"type_init_{revision}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"type_init@{revision}", "exec"), module.__dict__)

    def search(graph, *args, **kwargs):  # the revision's own LeidenGraph class around today's graph
        return module.leiden_partition(module.LeidenGraph(graph.adjacency, graph.graph), *args, **kwargs)

    return search


class RunCounter:
    """Counts igraph's Leiden runs and their seconds while active."""

    def __enter__(self):
        self.runs, self.original = [], igraph.Graph.community_leiden
        counter = self

        def counted(graph, *args, **kwargs):
            started = time.perf_counter()
            result = counter.original(graph, *args, **kwargs)
            counter.runs.append(round(time.perf_counter() - started, 2))
            return result

        igraph.Graph.community_leiden = counted
        return self

    def __exit__(self, *exc):
        igraph.Graph.community_leiden = self.original


def start_partitions(search, graph, k: int, seed: int, arms: int, chained: bool) -> list:
    """Each arm's start partition as the engine computes it (later arms from the first's resolution when
    ``chained``, today's engine; independently otherwise, the reference)."""
    first = search(graph, k, seed=seed * 1000)
    later = [search(graph, k, seed=seed * 1000 + arm, **({"first_resolution": first.resolution} if chained else {}))
             for arm in range(1, arms)]
    return [first, *later]


def measure(name: str, adata, labels: str, k: int, searches: dict, seed: int, out: Path) -> None:
    keep = adata.obs[labels].notna().to_numpy()
    model = CplMixVAE(adata, n_types=k, seed=seed)
    started = time.perf_counter()  # the neighbor search's time, with the trainer's set-up around it
    trainer = model.make_trainer()  # finds the walks' neighbors when the run has walks
    rows = trainer.train_rows
    if trainer.augmenter.chooses_rows:  # the graph prepare_type_init uses: the walks' when the run has walks
        found = trainer.augmenter.search
    else:
        found = find_neighbors(trainer._graph_input(rows), len(rows), neighbor_components(trainer.config), seed=seed)
    neighbor_seconds = time.perf_counter() - started
    started = time.perf_counter()
    graph = type_init.LeidenGraph.from_neighbors(found.indices.numpy(), found.distances.numpy())
    graph_seconds = time.perf_counter() - started
    truth = adata.obs[labels].astype(str).to_numpy()[rows.numpy()]
    known = keep[rows.numpy()]
    for label, (search, chained) in searches.items():
        with RunCounter() as counter:
            started = time.perf_counter()
            partitions = start_partitions(search, graph, k, seed, 2, chained)
            seconds = time.perf_counter() - started
        record = {
            "data": name, "cells": int(len(rows)), "k": k, "seed": seed, "search": label,
            "trainer_and_neighbour_seconds": round(neighbor_seconds, 1), "graph_seconds": round(graph_seconds, 1),
            "seconds": round(seconds, 1), "leiden_runs": len(counter.runs), "run_seconds": counter.runs,
            "communities": [p.communities for p in partitions],
            "start_ari_per_arm": [round(compare_to_labels(p.labels[known], truth[known])["ari"], 4) for p in partitions],
            "machine": machine(), "command": "python benchmarks/leiden_search.py " + " ".join(sys.argv[1:]),
        }
        print(json.dumps({key: value for key, value in record.items() if key != "machine"}), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="*", default=[], choices=sorted(DATASETS))
    parser.add_argument("--h5ad", type=Path, help="an .h5ad file instead of (or besides) suite datasets")
    parser.add_argument("--labels", default="true_type", help="--h5ad's obs column of labels")
    parser.add_argument("--types", type=int, help="K for --h5ad (default: its number of labels)")
    parser.add_argument("--reference", help="git revision whose leiden_partition is the reference search")
    parser.add_argument("--iterations", type=int, default=-1, help="Leiden iterations of the reference (no --reference)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "leiden_search.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(1)
    today = type_init.leiden_partition
    if args.reference:
        searches = {"today": (today, True), f"reference {args.reference}": (reference_search(args.reference), False)}
    else:
        def converged(*a, **kw):
            return today(*a, iterations=args.iterations, **kw)
        searches = {"today": (today, True), f"today, {args.iterations} iterations": (converged, True)}
    for name in args.datasets:
        dataset = DATASETS[name]
        measure(name, dataset.load(False), dataset.labels, dataset.n_types(False), searches, args.seed, args.out)
    if args.h5ad:
        import anndata

        adata = anndata.read_h5ad(args.h5ad)
        k = args.types or int(adata.obs[args.labels].nunique())
        measure(args.h5ad.name, adata, args.labels, k, searches, args.seed, args.out)


if __name__ == "__main__":
    main()
