"""Type recovery on the bundled Zeisel 2015 cortex data against its published labels: ACC, ARI and NMI for
1 arm and 2 arms (mean +- sd over seeds), next to scanpy + Leiden at a comparable number of clusters.

    python benchmarks/zeisel_quality.py                      # classes (7) and subclasses (48), seeds 0-2
    python benchmarks/zeisel_quality.py --levels class --seeds 0 1 2 --steps 3000 --genes 1000 --prune-factor 2

With ``--prune-factor F`` the multi-arm models follow the paper's recipe for the number of types: train with
F times as many categories as labels, then prune the least-agreed categories (fine-tuning between rounds)
down to the number of labels; 1-arm models (which cannot prune) train with that number directly.
Writes benchmarks/results/zeisel_quality[_LEVELS].{json,md}. The Leiden figures come from
benchmarks/results/leiden_zeisel2015.json (benchmarks/leiden_baseline.py, which needs scanpy).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cplmix_explorer import CplMixVAE, datasets
from cplmix_explorer.workflows.pruning import prune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import config_option, initial_partition_scores  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def run_one(adata, labels: str, n_types: int, n_arms: int, seed: int, options: dict, prune_factor: float = 1.0,
            fine_tune_steps: int = 200) -> dict:
    started = time.perf_counter()
    start_types = int(round(n_types * prune_factor)) if n_arms > 1 else n_types
    model = CplMixVAE(adata, n_types=start_types, n_arms=n_arms, labels=labels, seed=seed, **options)
    model.train(progress=False)
    scoring = time.perf_counter()
    start = initial_partition_scores(model, labels)  # before pruning changes K
    started += time.perf_counter() - scoring  # the timing leaves the scoring out
    if start_types > n_types:
        prune(model, min_consensus=1.0, min_types=n_types, fine_tune_steps=fine_tune_steps)
    seconds = time.perf_counter() - started
    metrics = model.evaluate()
    return {
        "seed": seed, "arms": n_arms, "k_start": start_types, "k": int(metrics.get("k", n_types)), "acc": metrics["acc"], "ari": metrics["ari"], "nmi": metrics["nmi"],
        "kl": metrics["kl"], "consensus": metrics["consensus"], "seconds": seconds,
        "device": str(model.device), **start,
    }


def summarize(runs: list[dict]) -> dict:
    return {key: [float(np.mean([r[key] for r in runs])), float(np.std([r[key] for r in runs]))]
            for key in ("acc", "ari", "nmi", "kl", "init_ari")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", nargs="+", default=["class", "subclass"])
    parser.add_argument("--arms", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the config default)")
    parser.add_argument("--genes", type=int, default=None, help="most variable genes kept (default: the config default)")
    parser.add_argument("--prune-factor", type=float, default=1.0, help="multi-arm: start with this many times the labels, prune down")
    parser.add_argument("--fine-tune-steps", type=int, default=200, help="steps between pruning rounds")
    parser.add_argument("--set", nargs="+", type=config_option, default=[], metavar="OPTION=VALUE",
                        help="other CplMixVAE options for every run, e.g. entropy_weight=0 state_encoder=separate "
                        "(values parsed as JSON when they can be, else text)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tag", default="", help="suffix of the result files (e.g. arms35), so that runs do not overwrite")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    options = {} if args.steps is None else {"steps": args.steps}
    if args.genes is not None:
        options["n_genes"] = args.genes
    options.update(args.set)
    adata = datasets.load("zeisel2015")
    leiden_path = RESULTS / "leiden_zeisel2015.json"
    leiden = json.loads(leiden_path.read_text()) if leiden_path.exists() else None
    command = "python benchmarks/zeisel_quality.py " + " ".join(sys.argv[1:])
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads", "torch": torch.__version__, "options": options,
              "prune_factor": args.prune_factor, "command": command, "levels": {}}
    lines = ["# Zeisel 2015 type recovery", "",
             f"{report['date']}, {report['machine']}, torch {torch.__version__}; command: `{command}`", "",
             "| labels | method | K | ACC | ARI | NMI | ARI of the initial partition |", "|---|---|---|---|---|---|---|"]
    for level in args.levels:
        n_types = int(adata.obs[level].nunique())
        level_report = {"n_labels": n_types, "methods": {}}
        for n_arms in args.arms:
            runs = [run_one(adata, level, n_types, n_arms, seed, options, args.prune_factor, args.fine_tune_steps)
                    for seed in args.seeds]
            for run in runs:
                print(json.dumps({"labels": level, **run}), flush=True)
            summary = summarize(runs)
            level_report["methods"][f"cplmix {n_arms} arm{'s' if n_arms > 1 else ''}"] = {"runs": runs, "mean_sd": summary}
            pruned = f", {runs[0]['k_start']} pruned to {n_types}" if runs[0]["k_start"] > n_types else ""
            lines.append(f"| {level} | cpl-mixVAE, {n_arms} arm{'s' if n_arms > 1 else ''}{pruned} | {n_types} | "
                         + " | ".join(f"{summary[k][0]:.3f} ± {summary[k][1]:.3f}" for k in ("acc", "ari", "nmi", "init_ari")) + " |")
        if leiden is not None and level in leiden["levels"]:
            baseline = leiden["levels"][level]["mean_sd"]
            level_report["methods"]["scanpy + Leiden"] = baseline
            lines.append(f"| {level} | scanpy + Leiden | {baseline['k'][0]:.0f} | "
                         + " | ".join(f"{baseline[k][0]:.3f} ± {baseline[k][1]:.3f}" for k in ("acc", "ari", "nmi")) + " | |")
        report["levels"][level] = level_report
    RESULTS.mkdir(exist_ok=True)
    stem = "zeisel_quality" + ("" if set(args.levels) == {"class", "subclass"} else "_" + "_".join(args.levels))
    stem += "".join("_" + re.sub(r"[^A-Za-z0-9_.-]", "", f"{key}{value}") for key, value in args.set)  # augment x -> augmentx
    stem += f"_{args.tag}" if args.tag else ""
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
