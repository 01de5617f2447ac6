"""How the start's neighbor graph should treat sequencing depth: the start partition's ARI on graphs found in
other transforms of the same counts.

    python benchmarks/start_depth.py --datasets zeisel_classes zeisel_subclasses han2018_bladder sim10 sim40 sim120

Per count dataset of the suite (config seed 0's training cells), the start (Leiden at 2K joined to K, first-arm
seeds 0, 1000, 2000, ... for --starts) against the labels both ways, on the 15-nearest-neighbor graph (UMAP
weights) in the top PCs of each transform (``--inputs``):

- ``log:T``: log1p(counts / the cell's total x T), genes standardised and clipped at 10, as the engine; T a number
  or ``median`` (the cells' median total, the engine's neighbor_target_sum unset) or ``NxMedian``;
- ``depth_out:T``: ``log:T`` with the cells' standardised log total counts regressed out of its PC scores (a
  linear fit per component);
- ``residuals``: analytic Pearson residuals (Lause, Berens & Kobak 2021; scanpy's normalize_pearson_residuals).

Writes benchmarks/results/start_depth.{json,md} (or --out). Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_results  # noqa: E402


def start_aris(scores, k: int, labels, seeds) -> list[float]:
    """The start's ARI with ``labels`` on the graph of ``scores`` (N, q), one per first-arm Leiden seed."""
    from cplmix_explorer.analysis.metrics import compare_to_labels
    from cplmix_explorer.model.neighbors import search_scores
    from cplmix_explorer.model.type_init import LeidenGraph, start_partition

    search = search_scores(scores, 15, seed=0)  # the engine's search, exact or pynndescent by size
    graph = LeidenGraph.from_neighbors(search.indices.numpy(), search.distances.numpy())
    return [float(compare_to_labels(start_partition(graph, k, seed=seed, overcluster=2.0).labels, labels)["ari"])
            for seed in seeds]


def log_rows_at(counts, library, target_sum: float):
    """A rows function (index -> (r, G) tensor) of log1p(counts / library x ``target_sum``) of a count matrix (N, G)
    and the cells' total counts ``library`` (N,) over all their genes (what the engine divides by)."""
    import scipy.sparse as sp
    import torch

    counts = sp.csr_matrix(counts, dtype=np.float32)
    scale = target_sum / np.maximum(np.asarray(library, np.float64), 1e-6)

    def rows_of(index):
        index = index.cpu().numpy()
        return torch.as_tensor(np.log1p(counts[index].toarray() * scale[index, None]), dtype=torch.float32)

    return rows_of


def pearson_residual_rows(counts, theta: float = 100.0):
    """A rows function of the analytic Pearson residuals of a count matrix (N, G): (x - mu) / sqrt(mu + mu^2 /
    theta) with mu = the cell's total x the gene's share of all counts, clipped to +- sqrt(N)."""
    import scipy.sparse as sp
    import torch

    counts = sp.csr_matrix(counts, dtype=np.float64)
    cell_totals = np.asarray(counts.sum(axis=1)).ravel()
    gene_share = np.asarray(counts.sum(axis=0)).ravel() / cell_totals.sum()
    clip = np.sqrt(counts.shape[0])

    def rows_of(index):
        index = index.cpu().numpy()
        mu = cell_totals[index, None] * gene_share[None, :]
        residual = (counts[index].toarray() - mu) / np.sqrt(mu + mu * mu / theta + 1e-12)
        return torch.as_tensor(np.clip(residual, -clip, clip), dtype=torch.float32)

    return rows_of


def target_of(text: str, library: np.ndarray) -> float:
    """The counts per cell of a ``log:`` input: a number, ``median`` or ``NxMedian``."""
    if text.endswith("median"):
        factor = text[: -len("median")].rstrip("x")
        return (float(factor) if factor else 1.0) * float(np.median(library))
    return float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["zeisel_classes", "zeisel_subclasses", "han2018_bladder",
                                                          "sim10", "sim40", "sim120"])
    parser.add_argument("--inputs", nargs="+", default=["log:1e4", "log:median", "depth_out:1e4", "residuals"],
                        help="transforms the graph is found in: log:T, depth_out:T (T a number, median or "
                        "Nxmedian) or residuals")
    parser.add_argument("--starts", type=int, default=3, help="first-arm Leiden seeds per input")
    parser.add_argument("--out", type=Path, default=RESULTS / "start_depth")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from quality_suite import DATASETS

    from cplmix_explorer import CplMixVAE
    from cplmix_explorer.config import neighbor_components
    from cplmix_explorer.model.neighbors import principal_scores, standardized

    seeds = [1000 * i for i in range(args.starts)]
    rows_out = []
    for name in args.datasets:
        dataset = DATASETS[name]
        adata, k = dataset.load(False), dataset.n_types(False)
        trainer = CplMixVAE(adata, n_types=k, labels=dataset.labels, seed=0, threads=1).make_trainer()
        rows = trainer.train_rows
        if trainer.data.library_of(rows) is None:
            print(f"{name}: not counts, skipped", flush=True)
            continue
        library = trainer.data.library_of(rows).cpu().numpy()
        counts = trainer.prepared.matrix[rows.cpu().numpy()]
        labels = np.asarray(adata.obs[dataset.labels]).astype(str)[rows.cpu().numpy()]
        components = neighbor_components(trainer.config)
        row = {"dataset": name, "median_total": float(np.median(library)), "starts": {}, "depth_share": {}}
        for spec in args.inputs:
            kind, _, target = spec.partition(":")
            if kind == "residuals":
                scores = principal_scores(pearson_residual_rows(counts), len(rows), components)
            else:
                log_rows = standardized(log_rows_at(counts, library, target_of(target, library)), len(rows))
                scores = principal_scores(log_rows, len(rows), components)
            if kind == "depth_out":
                depth = torch.log(torch.as_tensor(library, dtype=torch.float32))
                design = torch.stack([torch.ones_like(depth), (depth - depth.mean()) / depth.std()], 1)
                without = scores - design[:, 1:] @ torch.linalg.lstsq(design, scores).solution[1:]
                row["depth_share"][spec] = 1.0 - float((without - without.mean(0)).square().sum()
                                                       / (scores - scores.mean(0)).square().sum())
                scores = without
            row["starts"][spec] = start_aris(scores, k, labels, seeds)
        rows_out.append(row)
        print(row, flush=True)
    info = machine()
    lines = ["# How the start's graph should treat sequencing depth", "",
             f"`{info['command']}`, {info['date']}, {info['host_cpu']}. Start ARI with the labels, mean +- sd over the "
             f"first-arm Leiden seeds {', '.join(map(str, seeds))}; log:T is log1p(counts / total x T) (the engine: "
             "median; the model input: 1e4), depth_out:T the same with log depth regressed out of its PCs.", "",
             "| dataset | median total | " + " | ".join(args.inputs) + " |", "|---" * (len(args.inputs) + 2) + "|"]
    for r in rows_out:
        cells = [f"{np.mean(r['starts'][s]):.3f} +- {np.std(r['starts'][s]):.3f}" for s in args.inputs]
        lines.append(f"| {r['dataset']} | {r['median_total']:.0f} | " + " | ".join(cells) + " |")
    shares = [f"{r['dataset']} {s} {v:.3f}" for r in rows_out for s, v in r["depth_share"].items()]
    if shares:
        lines += ["", "Share of the PC scores' variance on depth: " + ", ".join(shares) + "."]
    write_results(args.out, {"machine": info, "rows": rows_out}, lines)


if __name__ == "__main__":
    main()
