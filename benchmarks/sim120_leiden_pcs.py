"""Is the suite's 120-type simulation separable? scanpy + Leiden at K = 120 on it, with the standard pipeline's
50 principal components or more (normalize_total 1e4, log1p, scale, PCA N, exact kNN 15, resolution bisected).

    python benchmarks/sim120_leiden_pcs.py --pcs 150     # all 2,000 genes, 150 components

The suite's own Leiden row (benchmarks/leiden_baseline.py: 2,000 HVG, PCA 50) is in quality_suite_leiden.json.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import scanpy as sc
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from leiden_baseline import leiden_at  # noqa: E402
from quality_suite import DATASETS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pcs", type=int, default=150)
    args = parser.parse_args()
    dataset = DATASETS["sim120"]
    adata = dataset.load(False)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.scale(adata, max_value=10)
    sc.tl.pca(adata, n_comps=args.pcs, random_state=0)
    sc.pp.neighbors(adata, n_neighbors=15, random_state=0, transformer="sklearn")
    labels, resolution = leiden_at(adata, 120, 0)
    print(json.dumps({"pcs": args.pcs, "groups": int(len(np.unique(labels))), "resolution": resolution,
                      "ari": adjusted_rand_score(adata.obs["true_type"], labels)}))


if __name__ == "__main__":
    main()
