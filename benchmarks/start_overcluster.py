"""Which start partition matches the types best: Leiden at K, or Leiden at f x K joined back down to K? Scores
the start alone (no training) against the labels on every development dataset, for several seeds, over-clustering
factors and ways of choosing which two groups to join.

    python benchmarks/start_overcluster.py                                   # every dataset, seeds 0 1 2
    python benchmarks/start_overcluster.py --datasets sim10 mnist5k --seeds 0

The graph is the engine's own (``Trainer.start_graph``: its training cells, the walks' 15-nearest-neighbor
graph, UMAP weights) for each dataset of ``benchmarks/quality_suite.py``, made as the suite makes it. Join rules:
``shared`` (the library's :func:`merge_by_shared_edges`: the pair where the smaller group sends the largest share
of its edge weight to the other), ``geometric`` (between-weight over the geometric mean of the two volumes) and
``modularity`` (the pair whose join gains the most modularity at resolution 1) and ``weight`` (the pair with the
most edge weight between them, whatever their sizes: the pieces of a large type cut along a long border first,
small groups last). Writes
benchmarks/results/start_overcluster.{json,md} (or --out). Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402

FACTORS = (1.5, 2.0, 3.0)
RULES = ("shared", "geometric", "modularity", "weight")


def join_pairs(membership: np.ndarray, adjacency: sp.csr_matrix, n_groups: int, rule: str) -> np.ndarray:
    """Join two groups at a time by ``rule`` until ``n_groups`` remain (the experiment's rules; 'shared' is the
    library's)."""
    from cplmix_explorer.model.type_init import group_edge_weights, merge_by_shared_edges

    if rule == "shared":
        return merge_by_shared_edges(membership, adjacency, n_groups)
    present, labels = np.unique(membership, return_inverse=True)
    size = len(present)
    between = group_edge_weights(labels, adjacency, size)
    volume = between.sum(axis=1)
    total = volume.sum()
    alive, joined_to = np.ones(size, dtype=bool), np.arange(size)
    while alive.sum() > n_groups:
        index = np.flatnonzero(alive)
        pair = between[np.ix_(index, index)].copy()
        np.fill_diagonal(pair, -np.inf)
        first, second = volume[index][:, None], volume[index][None, :]
        if rule == "geometric":
            score = pair / np.sqrt(first * second)
        elif rule == "weight":
            score = pair
        else:
            score = 2 * pair / total - 2 * first * second / total**2
        i, j = np.unravel_index(int(np.argmax(score)), score.shape)
        keep, gone = index[i], index[j]
        between[keep] += between[gone]
        between[:, keep] += between[:, gone]
        volume[keep] += volume[gone]
        alive[gone] = False
        joined_to[joined_to == gone] = keep
    return np.unique(joined_to[labels], return_inverse=True)[1]


def dataset_graph(name: str):
    """The engine's start graph of a suite dataset, its training cells' labels and K."""
    from quality_suite import DATASETS

    from cplmix_explorer import CplMixVAE

    dataset = DATASETS[name]
    adata, k = dataset.load(False), dataset.n_types(False)
    trainer = CplMixVAE(adata, n_types=k, labels=dataset.labels, seed=0, threads=1).make_trainer()
    graph = trainer.start_graph()  # the engine's own graph, weighted as the defaults ask
    rows = trainer.train_rows
    labels = np.asarray(adata.obs[dataset.labels]).astype(str)[rows.cpu().numpy()]
    return graph, labels, k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["zeisel_classes", "zeisel_subclasses", "han2018_bladder",
                                                          "mnist5k", "sim10", "sim40", "sim120"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--factors", nargs="+", type=float, default=list(FACTORS))
    parser.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    parser.add_argument("--out", type=Path, default=RESULTS / "start_overcluster")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from cplmix_explorer.analysis.metrics import compare_to_labels
    from cplmix_explorer.model.type_init import leiden_partition

    columns = ["at K"] + [f"x{f:g} {rule}" for f in args.factors for rule in args.rules]
    table = {}
    for name in args.datasets:
        graph, labels, k = dataset_graph(name)
        scores = {column: [] for column in columns}
        for seed in args.seeds:  # the engine's first arm's seed for config seed s is 1000 s
            at_k = leiden_partition(graph, k, seed=seed * 1000)
            scores["at K"].append(compare_to_labels(at_k.labels, labels)["ari"])
            for factor in args.factors:
                over = leiden_partition(graph, int(math.ceil(factor * k)), seed=seed * 1000,
                                        first_resolution=at_k.resolution)
                for rule in args.rules:
                    joined = join_pairs(over.labels, graph.adjacency, k, rule)
                    scores[f"x{factor:g} {rule}"].append(compare_to_labels(joined, labels)["ari"])
        table[name] = {column: [round(float(v), 4) for v in values] for column, values in scores.items()}
        print(name, {column: round(float(np.mean(values)), 3) for column, values in table[name].items()}, flush=True)
    info = machine()
    args.out.with_suffix(".json").write_text(json.dumps({"machine": info, "seeds": args.seeds, "ari": table}, indent=1))
    lines = ["# The start partition alone: ARI against the labels, Leiden at K against Leiden at f x K joined to K", "",
             f"`{info['command']}`, {info['date']}, {info['host_cpu']}; seeds {' '.join(map(str, args.seeds))} "
             "(mean; per seed in the JSON). Join rules: shared (the default's), geometric, modularity, weight (see the script).", "",
             "| dataset | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, scores in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{np.mean(values):.3f}" for values in scores.values()) + " |")
    means = {column: np.mean([np.mean(table[name][column]) for name in table]) for column in columns}
    lines.append("| **mean over datasets** | " + " | ".join(f"**{means[c]:.3f}**" for c in columns) + " |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
