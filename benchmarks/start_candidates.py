"""Which Leiden runs the arms should start from: the first seeds, or the runs that the other runs reproduce best?
Scores the start alone (no training) against the labels on every development dataset.

    python benchmarks/start_candidates.py                                   # every dataset, seeds 0 1 2
    python benchmarks/start_candidates.py --datasets han2018_bladder --seeds 0

For each dataset and seed, makes 8 start partitions of the engine's own start graph (``Trainer.start_graph``, as
``benchmarks/start_overcluster.py`` makes it) with the engine's seeds (seed x 1000 + run) and over-clustering, and
reports the ARI against the labels of: the first two runs (the default, ``start_candidates`` 1),
and the two runs that the others reproduce best (:func:`most_reproduced`) among the first 3, 4, 6 and 8 runs (the
arms' starts with ``start_candidates`` 3, 4, 6, 8); each the mean of the two arms' starts. Writes
benchmarks/results/start_candidates.{json,md} (or --out). Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_report  # noqa: E402
from start_overcluster import dataset_graph  # noqa: E402

CANDIDATES = (3, 4, 6, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["zeisel_classes", "zeisel_subclasses", "han2018_bladder",
                                                          "mnist5k", "sim10", "sim40", "sim120"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS / "start_candidates")
    args = parser.parse_args()

    import torch

    from cplmix_explorer.analysis.metrics import compare_to_labels
    from cplmix_explorer.config import CplMixConfig
    from cplmix_explorer.model.type_init import most_reproduced, start_partition

    torch.set_num_threads(1)
    overcluster, runs = CplMixConfig().start_overcluster, max(CANDIDATES)
    rows = []
    for name in args.datasets:
        graph, labels, k = dataset_graph(name)
        for seed in args.seeds:
            started = time.process_time()
            partitions = [start_partition(graph, k, seed=seed * 1000, overcluster=overcluster)]
            partitions += [start_partition(graph, k, seed=seed * 1000 + run, overcluster=overcluster,
                                           first_resolution=partitions[0].resolution) for run in range(1, runs)]
            seconds = time.process_time() - started
            scores = [compare_to_labels(p.labels, labels)["ari"] for p in partitions]
            row = {"dataset": name, "k": k, "seed": seed, "run_ari": scores, "leiden_cpu_seconds_per_run": seconds / runs,
                   "first_two": float(np.mean(scores[:2]))}
            for count in CANDIDATES:
                order, reproduced = most_reproduced([p.labels for p in partitions[:count]], k)
                row[f"best_reproduced_of_{count}"] = float(np.mean([scores[i] for i in order[:2]]))
                if count == runs:
                    row["reproduced"] = reproduced.tolist()
            rows.append(row)
            print({key: (round(v, 3) if isinstance(v, float) else v) for key, v in row.items()
                   if key not in ("run_ari", "reproduced")}, flush=True)

    columns = ["first_two"] + [f"best_reproduced_of_{count}" for count in CANDIDATES]
    lines = ["# The arms' start: the first Leiden runs, or the runs the others reproduce best", "",
             f"Command: `{machine()['command']}`  ", f"{machine()['date']}, {machine()['host_cpu']}, 1 torch thread.", "",
             "ARI against the labels of the arms' two start partitions (their mean), mean over seeds "
             f"{', '.join(map(str, args.seeds))}; the engine's start graph and over-clustering ({overcluster:g} x K). "
             "First two: the runs of seeds 0 and 1 (start_candidates 1); of N: the two runs with the highest mean "
             "ARI against the other runs among the first N (start_candidates N). Leiden s: CPU seconds per run.", "",
             "| dataset | K | first two | of 3 | of 4 | of 6 | of 8 | Leiden s |", "|---|---|---|---|---|---|---|---|"]
    means = {column: [] for column in columns}
    for name in args.datasets:
        group = [row for row in rows if row["dataset"] == name]
        cells = []
        for column in columns:
            value = float(np.mean([row[column] for row in group]))
            means[column].append(value)
            cells.append(f"{value:.3f}")
        seconds = np.mean([row["leiden_cpu_seconds_per_run"] for row in group])
        lines.append(f"| {name} | {group[0]['k']} | " + " | ".join(cells) + f" | {seconds:.1f} |")
    lines.append("| **mean** | | " + " | ".join(f"**{np.mean(means[c]):.3f}**" for c in columns) + " | |")
    lines += ["", "Per seed, every run's ARI (seeds x 1000 + 0..7) and how well the others reproduce it (mean ARI):", ""]
    for row in rows:
        lines.append(f"- {row['dataset']} seed {row['seed']}: ARI {' '.join(f'{v:.3f}' for v in row['run_ari'])}; "
                     f"reproduced {' '.join(f'{v:.2f}' for v in row['reproduced'])}")
    write_report(args.out, {"machine": machine(), "rows": rows}, lines)


if __name__ == "__main__":
    main()
