"""The atlas path's stages up to the Leiden start on their own (no training), for sizes where a whole
``atlas.py`` run takes too long: simulate, prepare + training data, neighbors (with the recorded search and
recall), the Leiden graph, one arm's Leiden run at K and one arm's start as the engine makes it (Leiden at
``start_overcluster`` x K joined down to K). Prints the figures after each stage (seconds and the
process's peak RSS so far) and writes benchmarks/results/atlas_stages_<cells>.json at the end.

    python benchmarks/atlas_stages_probe.py 100000

Measures; asserts nothing.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_json  # noqa: E402

from cplmix_explorer.config import CplMixConfig  # noqa: E402
from cplmix_explorer.data.preprocess import prepare  # noqa: E402
from cplmix_explorer.datasets import simulate  # noqa: E402
from cplmix_explorer.model.neighbors import find_neighbors  # noqa: E402
from cplmix_explorer.model.type_init import LeidenGraph, leiden_partition, start_partition  # noqa: E402
from cplmix_explorer.train.device_data import DeviceData  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    torch.set_num_threads(1)
    out: dict = {"machine": machine(), "cells": n, "genes": 2000, "stages": {}}

    def mark(name: str, started: float) -> None:
        out["stages"][name] = {"seconds": round(time.perf_counter() - started, 1),
                               "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
        print(json.dumps(out["stages"]), flush=True)

    started = time.perf_counter()
    adata = simulate(n_cells=n, n_genes=2000, n_types=40, n_classes=4, seed=3)
    out["nnz"] = int(adata.X.nnz)
    mark("simulate", started)
    started = time.perf_counter()
    prepared = prepare(adata, CplMixConfig(n_genes=2000))
    del adata
    data = DeviceData(prepared, torch.device("cpu"))
    mark("prepare + training data", started)
    started = time.perf_counter()
    search = find_neighbors(lambda index: data.model_input(index), n, seed=0)
    mark("neighbours", started)
    out["search"] = search.summary()
    started = time.perf_counter()
    graph = LeidenGraph.from_neighbors(search.indices.numpy())
    mark("leiden graph", started)
    started = time.perf_counter()
    partition = leiden_partition(graph, 40, seed=0)
    mark("leiden arm 0", started)
    out["leiden"] = {k: v for k, v in partition.summary().items() if k != "group_sizes"}
    started = time.perf_counter()  # the engine's start: Leiden at start_overcluster x K, joined down to K
    start = start_partition(graph, 40, seed=0, overcluster=CplMixConfig().start_overcluster)
    mark("start arm 0 (Leiden at 2K joined to K)", started)
    out["start"] = {k: v for k, v in start.summary().items() if k != "group_sizes"}
    write_json(RESULTS / f"atlas_stages_{n}.json", out)


if __name__ == "__main__":
    main()
