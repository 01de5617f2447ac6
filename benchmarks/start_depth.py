"""Does the start improve when sequencing depth is taken out of its graph? The start partition's ARI on the
engine's graph as it is, and on the graph found after the cells' standardised log total counts are regressed out
of its principal component scores (a linear fit per component).

    python benchmarks/start_depth.py --datasets zeisel_classes zeisel_subclasses han2018_bladder sim10 sim40 sim120

Per count dataset of the suite: the start (Leiden at 2K joined to K, the first arm's seeds 0, 1000, 2000 on the
graph of config seed 0's training cells) against the labels both ways, and the share of the scores' variance the
fit took out. Writes benchmarks/results/start_depth.{json,md} (or --out). Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_results  # noqa: E402

SEEDS = (0, 1000, 2000)


def start_aris(scores, k: int, labels) -> list[float]:
    from cplmix_explorer.analysis.metrics import compare_to_labels
    from cplmix_explorer.model.neighbors import search_scores
    from cplmix_explorer.model.type_init import LeidenGraph

    search = search_scores(scores, 15, seed=0)  # the engine's search, exact or pynndescent by size
    graph = LeidenGraph.from_neighbors(search.indices.numpy(), search.distances.numpy())
    from cplmix_explorer.model.type_init import start_partition

    return [float(compare_to_labels(start_partition(graph, k, seed=seed, overcluster=2.0).labels, labels)["ari"])
            for seed in SEEDS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["zeisel_classes", "zeisel_subclasses", "han2018_bladder",
                                                          "sim10", "sim40", "sim120"])
    parser.add_argument("--out", type=Path, default=RESULTS / "start_depth")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from quality_suite import DATASETS

    from cplmix_explorer import CplMixVAE
    from cplmix_explorer.config import neighbor_components
    from cplmix_explorer.model.neighbors import principal_scores

    rows_out = []
    for name in args.datasets:
        dataset = DATASETS[name]
        adata, k = dataset.load(False), dataset.n_types(False)
        trainer = CplMixVAE(adata, n_types=k, labels=dataset.labels, seed=0, threads=1).make_trainer()
        rows = trainer.train_rows
        library = trainer.data.library_of(rows)
        if library is None:
            print(f"{name}: not counts, skipped", flush=True)
            continue
        scores = principal_scores(trainer._graph_input(rows), len(rows), neighbor_components(trainer.config))
        labels = np.asarray(adata.obs[dataset.labels]).astype(str)[rows.cpu().numpy()]
        depth = torch.log(library.float())
        design = torch.stack([torch.ones_like(depth), (depth - depth.mean()) / depth.std()], 1)
        fit = torch.linalg.lstsq(design, scores).solution
        without = scores - design[:, 1:] @ fit[1:]
        share = 1.0 - float((without - without.mean(0)).square().sum() / (scores - scores.mean(0)).square().sum())
        rows_out.append({"dataset": name, "as_is": start_aris(scores, k, labels),
                         "depth_out": start_aris(without, k, labels), "depth_share": share})
        print(rows_out[-1], flush=True)
    info = machine()
    lines = ["# The start with and without sequencing depth in its graph", "",
             f"`{info['command']}`, {info['date']}, {info['host_cpu']}. Start ARI, first-arm seeds 0 / 1000 / 2000.", "",
             "| dataset | as is | depth regressed out | share of the scores' variance on depth |", "|---|---|---|---|"]
    for r in rows_out:
        lines.append(f"| {r['dataset']} | {np.mean(r['as_is']):.3f} ({' / '.join(f'{v:.3f}' for v in r['as_is'])}) | "
                     f"{np.mean(r['depth_out']):.3f} ({' / '.join(f'{v:.3f}' for v in r['depth_out'])}) | {r['depth_share']:.3f} |")
    write_results(args.out, {"machine": info, "rows": rows_out}, lines)


if __name__ == "__main__":
    main()
