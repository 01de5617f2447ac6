"""How long do the markers of every type take, and how much memory? The one-vs-rest Wilcoxon test
(``cplmix markers``, the app's Markers tab) ranks every gene over all cells; on sparse counts it ranks each
column from its non-zero entries, so its working memory stays far below a dense cells x genes matrix.

    python benchmarks/markers_speed.py                          # 50,000 simulated cells x 2,000 genes, 20 types
    python benchmarks/markers_speed.py --cells 200000 --scanpy  # also time scanpy's rank_genes_groups

Reported: seconds of ``wilcoxon_markers`` over the prepared data (types = the simulated types), its peak
memory above the data (tracemalloc: numpy and scipy allocations) against the size of the dense matrix,
and with ``--scanpy`` the time of scanpy's ``rank_genes_groups(method='wilcoxon')`` on the same
log-expression (a sparse matrix) and the largest score difference. Writes
benchmarks/results/markers_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from _common import RESULTS, machine, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=50_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--types", type=int, default=20)
    parser.add_argument("--scanpy", action="store_true", help="also time scanpy's rank_genes_groups")
    args = parser.parse_args()

    from cplmix_explorer import datasets
    from cplmix_explorer.analysis.markers import wilcoxon_markers
    from cplmix_explorer.config import CplMixConfig
    from cplmix_explorer.data.preprocess import prepare

    adata = datasets.simulate(n_cells=args.cells, n_genes=args.genes, n_types=args.types, n_classes=None, seed=0)
    prepared = prepare(adata, CplMixConfig(n_genes=args.genes))
    types = adata.obs["true_type"].cat.codes.to_numpy()
    tracemalloc.start()
    started = time.perf_counter()
    statistics = wilcoxon_markers(prepared, types, args.types)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    dense_mb = prepared.n_cells * prepared.n_genes * 4 / 2**20
    found = np.mean([
        len(set(statistics.top_genes(k, 10)) & set(adata.var_names[adata.var["marker_of"] == name])) / 10
        for k, name in enumerate(adata.obs["true_type"].cat.categories)
    ])
    data = {
        "machine": machine(), "cells": prepared.n_cells, "genes": prepared.n_genes, "types": args.types,
        "nonzero_fraction": round(prepared.matrix.nnz / (prepared.n_cells * prepared.n_genes), 3),
        "seconds": round(seconds, 2), "peak_mb": round(peak / 2**20, 1), "dense_matrix_mb": round(dense_mb, 1),
        "top10_simulated_markers": round(float(found), 3),
    }
    lines = [
        "# Markers per type: one-vs-rest Wilcoxon (benchmarks/markers_speed.py)", "",
        f"{data['cells']:,} simulated cells x {data['genes']:,} genes ({data['nonzero_fraction']:.0%} non-zero), "
        f"{args.types} types; {data['machine']['host_cpu']}, load {data['machine'].get('load_average_1min', '?')}", "",
        f"- cplmix: {seconds:.1f} s, peak memory {data['peak_mb']:.0f} MB (the dense matrix would be {dense_mb:.0f} MB)",
        f"- top 10 markers of a type that are its simulated markers: {found:.1%}",
    ]
    if args.scanpy:
        import anndata as ad
        import pandas as pd
        import scanpy as sc
        from importlib.metadata import version
        import scipy.sparse as sp

        reference = ad.AnnData(X=sp.csr_matrix(prepared.model_input()), obs=pd.DataFrame({"t": types.astype(str)}))
        reference.var_names = prepared.genes
        started = time.perf_counter()
        sc.tl.rank_genes_groups(reference, "t", method="wilcoxon")
        data["scanpy_seconds"] = round(time.perf_counter() - started, 2)
        names = reference.uns["rank_genes_groups"]["names"]
        scores = reference.uns["rank_genes_groups"]["scores"]
        position = {g: i for i, g in enumerate(prepared.genes)}
        difference = max(
            float(np.max(np.abs(statistics.score[k, [position[g] for g in names[str(k)]]] - scores[str(k)])))
            for k in range(args.types)
        )
        data["largest_score_difference"] = difference
        lines.append(f"- scanpy {version('scanpy')} rank_genes_groups(method='wilcoxon'): {data['scanpy_seconds']:.1f} s; "
                     f"largest |z| difference {difference:.1e}")
    write_report(RESULTS / "markers_speed", data, lines)


if __name__ == "__main__":
    main()
