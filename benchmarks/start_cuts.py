"""Where the start partition cuts a true type in pieces, and whether the cut follows the type's continuous state;
where it gathers cells of many types.

    python benchmarks/start_cuts.py --datasets sim40 sim120 --seeds 0

On the simulator's suite sets (true types and true states known), the engine's own start (the first arm's Leiden
run, as training computes it, with the defaults) against the true types: its ARI; the ARI a partition could reach
that only lumps the types the start graph cannot see (true types of fewer than 100 training cells, each joined to
the type most of its cells' graph neighbors belong to); the types it cuts (no category holds 90 % of them), and
for each cut type how much of the variance of each true state within the type the pieces explain (eta^2, the
between-piece share; a cut along the state explains much of it, a cut at random none); the categories that gather
at least 100 cells of types other than their own (their majority type's), with those cells' median total counts
against all cells'; and the ARI with those gathered cells given back to their types' categories, then also with
every category joined to its majority type (the cuts undone). Writes
benchmarks/results/start_cuts.{json,md} (or --out). Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_results  # noqa: E402

SMALL_TYPE = 100  # training cells: a type below this counts as one the start graph cannot see
HELD = 0.9  # a type is cut when no category holds this share of its training cells
GATHERED = 100  # a category gathers other types when it holds this many cells not of its majority type


def explained_variance(values: np.ndarray, pieces: np.ndarray) -> float:
    """eta^2: the share of the variance of ``values`` that the means of ``pieces`` explain."""
    total = values.var()
    if total == 0:
        return 0.0
    _, inverse, counts = np.unique(pieces, return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=values) / counts
    return float((counts * (means - values.mean()) ** 2).sum() / (counts.sum() * total))


def study(name: str, seed: int) -> dict:
    from quality_suite import DATASETS

    from cplmix_explorer import CplMixVAE
    from cplmix_explorer.analysis.metrics import compare_to_labels

    dataset = DATASETS[name]
    adata, k = dataset.load(False), dataset.n_types(False)
    model = CplMixVAE(adata, n_types=k, labels=dataset.labels, seed=seed, threads=1)
    trainer = model.make_trainer()
    trainer.prepare_type_init()  # the start as training computes it (_common.initial_partition)
    rows = trainer.train_rows.cpu().numpy()
    start = trainer.start_runs[0]
    names, codes = np.unique(np.asarray(adata.obs[dataset.labels]).astype(str)[rows], return_inverse=True)
    states = [c for c in adata.obs.columns if c.startswith("true_state_")]
    state_values = adata.obs[states].to_numpy()[rows]
    sizes = np.bincount(codes)
    adjacency = trainer.start_graph().adjacency  # the graph the start was found in (training rows)
    lumped = codes.copy()
    small = np.flatnonzero(sizes < SMALL_TYPE)
    for t in small:  # each small type joined to the type its cells send most edge weight to
        cells = np.flatnonzero(codes == t)
        weight = np.bincount(codes[adjacency[cells].indices], weights=adjacency[cells].data, minlength=len(sizes))
        weight[t] = 0
        if weight.max() > 0:
            lumped[cells] = int(weight.argmax())
    counts = np.zeros((len(sizes), int(start.max()) + 1))
    np.add.at(counts, (codes, start), 1)
    cut = []
    for t in np.flatnonzero(counts.max(axis=1) < HELD * sizes):
        cells = codes == t
        pieces = start[cells]
        big = np.isin(pieces, np.flatnonzero(counts[t] >= 0.1 * sizes[t]))
        cut.append({"type": str(names[t]), "cells": int(sizes[t]), "small": bool(sizes[t] < SMALL_TYPE),
                    "pieces": int((counts[t] >= 0.1 * sizes[t]).sum()), "largest_share": float(counts[t].max() / sizes[t]),
                    "state_eta2": [explained_variance(state_values[cells][big, j], pieces[big]) for j in range(len(states))]})
    major = counts.argmax(axis=0)  # each category's majority type
    foreign = codes != major[start]
    totals = np.asarray(adata.X[rows].sum(axis=1)).ravel()
    gathering = [int(c) for c in np.flatnonzero(np.bincount(start[foreign], minlength=len(major)) >= GATHERED)]
    returned = start.copy()
    back = foreign & np.isin(start, gathering)
    returned[back] = counts[codes[back]].argmax(axis=1)  # the category holding most of the cell's type
    return {"dataset": name, "seed": seed, "k": k, "cells": int(len(rows)),
            "gathering": [{"category": c, "cells": int((start == c).sum()), "foreign": int((foreign & (start == c)).sum()),
                           "foreign_median_counts": float(np.median(totals[foreign & (start == c)])),
                           "own_median_counts": float(np.median(totals[~foreign & (start == c)]))} for c in gathering],
            "median_counts": float(np.median(totals)),
            "returned_ari": float(compare_to_labels(returned, names[codes])["ari"]),
            "returned_and_joined_ari": float(compare_to_labels(major[returned], names[codes])["ari"]),
            "start_ari": float(compare_to_labels(start, names[codes])["ari"]),
            "small_types": int(len(small)), "small_type_cells": int(sizes[small].sum()),
            "lumped_ari": float(compare_to_labels(lumped, names[codes])["ari"]),
            "cut": cut}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["sim40", "sim120"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "start_cuts")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    results = [study(name, seed) for name in args.datasets for seed in args.seeds]
    info = machine()
    lines = ["# Where the start cuts a true type, and whether along its state", "",
             f"`{info['command']}`, {info['date']}, {info['host_cpu']}. eta^2: the share of a state's variance "
             "within the type that its pieces explain (per state; a random cut explains none).", "",
             "| dataset | seed | start ARI | small types (cells) | ARI with only the small types lumped | cut types: small / larger "
             "| categories gathering other types: cells (others; their median counts / own / all) | ARI, gathered cells returned | ... and cuts joined |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        small = sum(c["small"] for c in r["cut"])
        lines.append(f"| {r['dataset']} | {r['seed']} | {r['start_ari']:.3f} | {r['small_types']} ({r['small_type_cells']}) | "
                     f"{r['lumped_ari']:.3f} | {small} / {len(r['cut']) - small} | "
                     + (", ".join(f"{g['cells']} ({g['foreign']}; {g['foreign_median_counts']:.0f} / {g['own_median_counts']:.0f} / "
                                  f"{r['median_counts']:.0f})" for g in r["gathering"]) or "none")
                     + f" | {r['returned_ari']:.3f} | {r['returned_and_joined_ari']:.3f} |")
    lines += ["", "The larger types no start category holds 90 % of (pieces: the categories holding at least 10 % of the type):", "",
              "| dataset | seed | type | cells | pieces | largest piece | state eta^2 |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for c in r["cut"]:
            if not c["small"]:
                lines.append(f"| {r['dataset']} | {r['seed']} | {c['type']} | {c['cells']} | {c['pieces']} | "
                             f"{c['largest_share']:.2f} | {', '.join(f'{v:.2f}' for v in c['state_eta2'])} |")
    write_results(args.out, {"machine": info, "results": results}, lines)


if __name__ == "__main__":
    main()
