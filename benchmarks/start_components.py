"""The Leiden start's ARI against the labels for several numbers of principal components of the neighbor graph
(``neighbor_components``), on a development dataset: how many components K types with markers of their own
need before the start merges them.

    python benchmarks/start_components.py --data sim120 --components auto 50
    python benchmarks/start_components.py --data zeisel_subclasses --components auto 30

Writes one JSON line per setting to ``--out`` (default benchmarks/results/start_components.jsonl).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_suite import DATASETS  # noqa: E402

from cplmix_explorer import CplMixVAE  # noqa: E402
from cplmix_explorer.analysis.metrics import compare_to_labels  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="sim120", choices=sorted(DATASETS))
    parser.add_argument("--components", nargs="+", default=["auto", "50"], help="'auto' (the default rule) or a number")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "start_components.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = DATASETS[args.data]
    adata = dataset.load(False)
    truth = adata.obs[dataset.labels].astype(str).to_numpy()
    k = dataset.n_types(False)
    for components in args.components:
        options = {} if components == "auto" else {"neighbor_components": int(components)}
        started = time.process_time()
        model = CplMixVAE(adata, n_types=k, seed=args.seed, **options)
        trainer = model.make_trainer()
        trainer.prepare_type_init()
        rows = trainer.train_rows.numpy()
        record = {
            "data": args.data, "cells": int(adata.n_obs), "k": k, "components": components, "seed": args.seed,
            "search": trainer.neighbor_search,
            "start_ari_per_arm": [round(compare_to_labels(trainer.type_targets[a, rows].numpy(), truth[rows])["ari"], 4)
                                  for a in range(trainer.type_targets.shape[0])],
            "communities": trainer.type_init_summary["communities"],
            "cpu_seconds": round(time.process_time() - started, 1),
            "machine": f"{platform.machine()}, torch {torch.__version__}",
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": "python benchmarks/start_components.py " + " ".join(sys.argv[1:]),
        }
        print(json.dumps(record), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
