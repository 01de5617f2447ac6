"""The standard single-cell pipeline as a baseline: scanpy + Leiden on PCA, at a number of clusters
comparable to the published labels of the bundled Zeisel 2015 data.

Needs scanpy (in the ``test`` extra: ``pip install -e .[test]``; Leiden runs on igraph, a dependency), or a
separate environment:
    python -m venv /tmp/scanpy-env && /tmp/scanpy-env/bin/pip install scanpy leidenalg igraph
    /tmp/scanpy-env/bin/python benchmarks/leiden_baseline.py
benchmarks/quality_suite.py uses the same pipeline (``standard_pipeline``, ``leiden_scores``) on every dataset.
Writes benchmarks/results/leiden_zeisel2015.json (read by benchmarks/zeisel_quality.py). Metrics are
computed with scikit-learn (installed with scanpy) and agree with cplmix_explorer.analysis.metrics.

The same pipeline on the simulator (written to a file first, by the project's environment):
    python -c "from cplmix_explorer import datasets; datasets.load('synthetic').write_h5ad('/tmp/synthetic.h5ad')"
    /tmp/scanpy-env/bin/python benchmarks/leiden_baseline.py --data /tmp/synthetic.h5ad --labels true_type \
        --out benchmarks/results/leiden_synthetic.json

On the digits (pixel intensities, not counts: ``--as-is`` skips normalisation, log1p and the gene selection):
    python -c "from cplmix_explorer import datasets; a = datasets.load('mnist5k'); \
        a.uns['image_shape'] = list(a.uns['image_shape']); a.write_h5ad('/tmp/mnist5k.h5ad')"
    /tmp/scanpy-env/bin/python benchmarks/leiden_baseline.py --data /tmp/mnist5k.h5ad --labels digit --as-is \
        --out benchmarks/results/leiden_mnist5k.json

The deskewed digits the model sees by default (the project's data path writes them):
    python -c "import anndata; from cplmix_explorer import datasets; from cplmix_explorer.config import CplMixConfig; \
        from cplmix_explorer.data.preprocess import prepare; a = datasets.load('mnist5k'); \
        p = prepare(a, CplMixConfig(n_types=10)); anndata.AnnData(X=p.matrix, obs=a.obs[['digit']]) \
        .write_h5ad('/tmp/mnist5k_deskewed.h5ad')"
    /tmp/scanpy-env/bin/python benchmarks/leiden_baseline.py --data /tmp/mnist5k_deskewed.h5ad --labels digit \
        --as-is --out benchmarks/results/leiden_mnist5k_deskewed.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import anndata
import numpy as np
import scanpy as sc
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "cplmix_explorer" / "data" / "files" / "zeisel2015_mouse_cortex.h5ad"
OUT = ROOT / "benchmarks" / "results" / "leiden_zeisel2015.json"


def hungarian_accuracy(predicted, truth) -> float:
    p_levels, p = np.unique(predicted, return_inverse=True)
    t_levels, t = np.unique(truth, return_inverse=True)
    table = np.zeros((len(p_levels), len(t_levels)))
    np.add.at(table, (p, t), 1)
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / len(truth))


def leiden_at(adata, n_target: int, seed: int) -> tuple[np.ndarray, float]:
    """Leiden clusters whose count is closest to n_target (bisection on the resolution)."""
    low, high, best = 0.01, 10.0, None
    for _ in range(25):
        resolution = np.sqrt(low * high)
        sc.tl.leiden(adata, resolution=resolution, random_state=seed, key_added="leiden", flavor="igraph", n_iterations=2)
        labels = adata.obs["leiden"].to_numpy()
        n = len(np.unique(labels))
        if best is None or abs(n - n_target) < abs(best[2] - n_target):
            best = (labels, resolution, n)
        if n == n_target:
            break
        if n < n_target:
            low = resolution
        else:
            high = resolution
    return best[0], best[1]


N_TOP_GENES = 2000


def standard_pipeline(adata, as_is: bool = False):
    """scanpy's standard pipeline up to the neighbor graph, on a copy: normalize_total 1e4, log1p, the
    N_TOP_GENES highly variable genes (seurat flavour; all genes when there are no more), scale (max 10), PCA
    50, 15 nearest neighbors. ``as_is`` (pixels, not counts) skips normalisation, log1p and gene selection.
    Returns the AnnData with the graph and a one-line description of the pipeline."""
    adata = adata.copy()
    pipeline = "scale (max 10), PCA 50, exact kNN 15, Leiden (igraph, resolution bisected to K)"
    if not as_is:
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
        genes = f"all {adata.n_vars} genes"
        if adata.n_vars > N_TOP_GENES:
            sc.pp.highly_variable_genes(adata, n_top_genes=N_TOP_GENES, flavor="seurat")
            adata = adata[:, adata.var["highly_variable"]].copy()
            genes = f"{N_TOP_GENES} HVG (seurat)"
        pipeline = f"normalize_total 1e4, log1p, {genes}, " + pipeline
    sc.pp.scale(adata, max_value=10)
    sc.tl.pca(adata, n_comps=min(50, adata.n_vars - 1, adata.n_obs - 1), random_state=0)
    # exact neighbors (scikit-learn): scanpy 1.11's approximate path for 8,192 cells and more fails with scipy 1.17
    # (csr_array has no getnnz); below that size scanpy computes exact neighbors too
    sc.pp.neighbors(adata, n_neighbors=15, random_state=0, transformer="sklearn")
    return adata, pipeline


def leiden_scores(graph, truth, seeds) -> list[dict]:
    """Leiden at K = the number of distinct ``truth`` labels on a graph from :func:`standard_pipeline`, per
    seed: resolution, communities found, ACC, ARI, NMI."""
    truth = np.asarray(truth).astype(str)
    n_target = len(np.unique(truth))
    runs = []
    for seed in seeds:
        labels, resolution = leiden_at(graph, n_target, seed)
        runs.append({
            "seed": int(seed), "resolution": float(resolution), "k": int(len(np.unique(labels))),
            "acc": hungarian_accuracy(labels, truth),
            "ari": float(adjusted_rand_score(truth, labels)),
            "nmi": float(normalized_mutual_info_score(truth, labels)),
        })
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help=".h5ad of raw counts (default: Zeisel 2015)")
    parser.add_argument("--labels", nargs="+", default=["class", "subclass"], help="obs columns to compare with")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--as-is", action="store_true",
                        help="X is not counts (e.g. pixels): no normalize_total, log1p or HVG selection")
    args = parser.parse_args()
    adata, pipeline = standard_pipeline(anndata.read_h5ad(args.data), as_is=args.as_is)
    results = {"pipeline": pipeline,
               "scanpy": sc.__version__, "date": time.strftime("%Y-%m-%d"), "levels": {}}
    results["data"] = str(args.data.name)
    results["genes_used"] = int(adata.n_vars)  # 2000 HVG requested; fewer when the data has fewer genes
    for column in args.labels:
        truth = adata.obs[column].astype(str).to_numpy()
        runs = leiden_scores(adata, truth, range(3))
        summary = {key: [float(np.mean([r[key] for r in runs])), float(np.std([r[key] for r in runs]))]
                   for key in ("acc", "ari", "nmi", "k")}
        results["levels"][column] = {"n_labels": len(np.unique(truth)), "runs": runs, "mean_sd": summary}
        print(column, json.dumps(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
