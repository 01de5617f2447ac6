"""How well the start's neighbor graph keeps each type together, and what the start partition scores on it, for
variants of the graph's space: the clip of the standardised genes and the number of principal components.

    python benchmarks/start_graph.py --dataset sim120 --variants 10:120 1e9:120 10:200

Per variant (CLIP:COMPONENTS): the share of each training cell's 15 nearest neighbors that share its label (mean
over cells, and mean over the types of fewer than 100 training cells), and the ARI against the labels of Leiden at
K and of the default start (Leiden at 2K joined to K), on the graph found in that space with UMAP weights, as the
engine's start graph (seed 0). The engine's own graph is the variant 10:K (K components when K > 50, else 50).
Writes benchmarks/results/start_graph_<dataset>.{json,md} (or --out). Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_atomic  # noqa: E402

SMALL_TYPE = 100  # training cells: a type below this counts as small


def variant(text: str) -> tuple[float, int]:
    clip, _, components = text.partition(":")
    return float(clip), int(components)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="sim120")
    parser.add_argument("--variants", nargs="+", type=variant, default=[(10.0, 120), (1e9, 120), (10.0, 200)],
                        metavar="CLIP:COMPONENTS")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from quality_suite import DATASETS

    from cplmix_explorer import CplMixVAE
    from cplmix_explorer.analysis.metrics import compare_to_labels
    from cplmix_explorer.model.neighbors import find_neighbors, standardized
    from cplmix_explorer.model.type_init import LeidenGraph, leiden_partition, start_partition

    dataset = DATASETS[args.dataset]
    adata, k = dataset.load(False), dataset.n_types(False)
    trainer = CplMixVAE(adata, n_types=k, labels=dataset.labels, seed=0, threads=args.threads).make_trainer()
    rows = trainer.train_rows
    n = len(rows)
    labels = np.asarray(adata.obs[dataset.labels]).astype(str)[rows.cpu().numpy()]
    codes, names = np.unique(labels, return_inverse=True)[1], np.unique(labels)
    sizes = np.bincount(codes)
    results = []
    for clip, components in args.variants:
        started = time.perf_counter()
        search = find_neighbors(standardized(trainer._rows_input(rows), n, clip=clip), n, 15, components, seed=0)
        indices = search.indices.cpu().numpy()
        same = (codes[indices] == codes[:, None]).mean(axis=1)
        per_type = np.bincount(codes, weights=same) / sizes
        graph = LeidenGraph.from_neighbors(indices, search.distances.cpu().numpy())
        at_k = leiden_partition(graph, k, seed=0)
        joined = start_partition(graph, k, seed=0, overcluster=2.0)
        results.append({"clip": clip, "components": components, "purity": float(same.mean()),
                        "purity_small_types": float(per_type[sizes < SMALL_TYPE].mean()) if (sizes < SMALL_TYPE).any() else None,
                        "ari_at_k": float(compare_to_labels(at_k.labels, labels)["ari"]),
                        "ari_start": float(compare_to_labels(joined.labels, labels)["ari"]),
                        "seconds": time.perf_counter() - started})
        print(results[-1], flush=True)
    out = args.out or RESULTS / f"start_graph_{args.dataset}"
    info = machine()
    write_atomic(out.with_suffix(".json"), json.dumps({"machine": info, "dataset": args.dataset, "k": k,
                                                       "small_types": int((sizes < SMALL_TYPE).sum()),
                                                       "types": len(names), "variants": results}, indent=1))
    lines = [f"# The start graph of {args.dataset} (K = {k}): neighbors of the same type, and the start's ARI", "",
             f"`{info['command']}`, {info['date']}, {info['host_cpu']}; {int((sizes < SMALL_TYPE).sum())} of "
             f"{len(names)} types have fewer than {SMALL_TYPE} training cells.", "",
             "| clip | components | same-type neighbors | same-type neighbors, small types | ARI, Leiden at K | ARI, start (2K joined) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        small = "-" if r["purity_small_types"] is None else f"{r['purity_small_types']:.3f}"
        lines.append(f"| {r['clip']:g} | {r['components']} | {r['purity']:.3f} | {small} | {r['ari_at_k']:.3f} | {r['ari_start']:.3f} |")
    write_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
