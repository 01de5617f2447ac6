"""What do the categories capture? Trains on the simulator (`synthetic`, K = the true number of types) and
shows, for the arms' first arm, the cross-table of true types against inferred categories and, for the
largest true type, the mean true state, library size and cell count of each category it was spread over (a
type split by its state shows categories with different mean states).

    python benchmarks/simulator_categories.py                                  # config defaults, 3000 steps
    python benchmarks/simulator_categories.py --set augment=neighbors --set straight_through=true
    python benchmarks/simulator_categories.py --genes 500 --seed 1

Prints the tables and one JSON line (ACC, ARI, median best |rho|, categories used); writes nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import single_run_parser  # noqa: E402


def main(argv=None) -> int:
    parser = single_run_parser(__doc__.splitlines()[0])
    parser.add_argument("--arms", type=int, default=2)
    parser.add_argument("--genes", type=int, default=None)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import cplmix_explorer as cx
    from cplmix_explorer import datasets
    from cplmix_explorer.data.simulate import state_recovery

    adata = datasets.load("synthetic")
    info = adata.uns["simulation"]
    options = dict(args.set, device=args.device, seed=args.seed)
    if args.genes:
        options["n_genes"] = args.genes
    model = cx.CplMixVAE(adata, n_types=info["n_types"], n_arms=args.arms, state_dim=info["state_dim"], **options)
    model.train(steps=args.steps, progress=False)
    metrics = model.evaluate("true_type")
    prediction = model.predict()
    category = prediction.type_per_arm[0]
    true_type = adata.obs["true_type"].to_numpy()
    pd.set_option("display.width", 200)
    print("true type x category (arm 0):")
    print(pd.crosstab(pd.Series(true_type, name="true type"), pd.Series(category, name="category")))
    largest = pd.Series(true_type).value_counts().index[0]
    inside = true_type == largest
    table = pd.DataFrame({"category": category[inside],
                          "library": np.asarray(adata.X[inside].sum(axis=1)).ravel()})
    for column in [c for c in adata.obs.columns if c.startswith("true_state")]:
        table[column] = adata.obs[column].to_numpy()[inside]
    summary = table.groupby("category").agg(["mean"]).round(2)
    summary.columns = [name for name, _ in summary.columns]
    summary["cells"] = table.groupby("category").size()
    print(f"\ncategories of the largest true type {largest} ({inside.sum()} cells): mean true state and library")
    print(summary)
    recovery = state_recovery(adata, prediction.state_mean)
    print(json.dumps({
        "options": {**dict(args.set), "genes": args.genes, "steps": args.steps, "seed": args.seed, "arms": args.arms},
        "acc": round(metrics["acc"], 3), "ari": round(metrics["ari"], 3),
        "median_abs_rho": round(float(recovery["best_abs_rho"].median()), 3),
        "categories_used": int(len(np.unique(category))),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
