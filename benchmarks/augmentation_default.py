"""The augmentation default for expression data: type recovery with no copies, count noise and neighbor walks.

Four well-separated simulated types (the test suite's mixture: 600 cells x 200 genes), 2 arms, 300 steps,
seeds 0-5, for each augmentation; reports Hungarian-matched ACC per seed. ``neighbors, full walks`` gives the
walks their full 6 hops from the first step (``neighbor_ramp_steps=0``); ``auto`` is the default (for two arms
on expression data: walks grown from one hop over the first 300 steps); ``neighbors, full walks, 8 pruned to 4``
adds the paper's recipe for the number of types (train 8 categories, prune the least-agreed down to 4, 100
fine-tuning steps per round).

    python benchmarks/augmentation_default.py [--steps 300] [--seeds 0 1 2 3 4 5] [--augment none auto]

Writes benchmarks/results/augmentation_default.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cplmix_explorer import CplMixVAE
from cplmix_explorer.workflows.pruning import prune

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "tests"))
from conftest import mixture_counts  # noqa: E402  (the same data the tests use)


#: what each row trains with
VARIANTS = {
    "none": {"augment": "none"},
    "noise": {"augment": "noise"},
    "neighbors, full walks": {"augment": "neighbors", "neighbor_ramp_steps": 0},
    "auto": {"augment": "auto"},
    # the paper's recipe for the number of types on top of full walks: 8 categories pruned to the 4 types
    "neighbors, full walks, 8 pruned to 4": {"augment": "neighbors", "neighbor_ramp_steps": 0, "prune_factor": 2},
}
N_TYPES = 4  # the mixture's types


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(6)))
    parser.add_argument("--fine-tune-steps", type=int, default=100, help="fine-tuning steps per pruning round")
    parser.add_argument("--augment", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    adata = mixture_counts()
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "steps": args.steps, "command": "python " + " ".join(sys.argv), "acc": {}}
    for augment in args.augment:
        accs = []
        for seed in args.seeds:
            options = dict(VARIANTS[augment])
            start_types = N_TYPES * options.pop("prune_factor", 1)
            model = CplMixVAE(adata, n_types=start_types, n_arms=2, labels="type", seed=seed, device="cpu", **options)
            model.train(steps=args.steps, progress=False)
            if start_types > N_TYPES:
                prune(model, min_consensus=1.0, min_types=N_TYPES, fine_tune_steps=args.fine_tune_steps)
            accs.append(round(float(model.evaluate()["acc"]), 3))
            report.setdefault("used", {})[augment] = model.augment_used
            print(augment, seed, accs[-1], flush=True)
        report["acc"][augment] = accs
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "augmentation_default.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Augmentation default: 4 simulated types, 2 arms", "", f"{report['date']}, {report['machine']}, "
             f"torch {report['torch']}, {args.steps} steps; `{report['command']}`", "",
             "| augment | ACC per seed | mean | seeds with ACC >= 0.9 |", "|---|---|---|---|"]
    for augment, accs in report["acc"].items():
        lines.append(f"| {augment} | {' '.join(f'{a:.3f}' for a in accs)} | {np.mean(accs):.3f} | "
                     f"{sum(a >= 0.9 for a in accs)}/{len(accs)} |")
    (RESULTS / "augmentation_default.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
