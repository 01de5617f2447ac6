"""A Table-1-style comparison (paper Section 4) through the same engine: ACC (mean +- sd over seeds), ARI,
KL(q(c)||p(c)) and training it/s for 1, 2, 3 and 5 arms and the ablations, on the bundled data.

    python benchmarks/table1.py                                   # every dataset, method and seed (long on CPU)
    python benchmarks/table1.py --datasets synthetic --methods "2 arms" "1 arm" --seeds 0 1 2 --steps 1500
    python benchmarks/table1.py --list                            # the datasets and methods

Datasets: mnist5k (10 digits, deskewed by the data path unless the method says not; auto gives coupled arms
2-hop neighbor walks, one arm affine warps),
zeisel2015 classes and subclasses, and the simulator's bundled set (10 imbalanced types). K is the number of
labels. Every method starts from the configuration's default (the Leiden start, type_init='leiden') unless
its name says 'random start' (the paper's); JointVAE is the published baseline and starts at random. The
'start ARI' column is the ARI of the partition the first arm's type head was fitted to (empty for a random
start). Writes benchmarks/results/table1.{json,md} (the machine, torch, date and the command are in the report).
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

from cplmix_explorer import CplMixVAE, datasets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import config_option, initial_partition_scores  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

#: name -> (bundled dataset, label column, options for every method on it)
DATASETS = {
    "mnist5k": ("mnist5k", "digit", {"state_dim": 10}),
    "zeisel2015 classes": ("zeisel2015", "class", {"n_genes": 1000}),
    "zeisel2015 subclasses": ("zeisel2015", "subclass", {"n_genes": 1000}),
    "synthetic": ("synthetic", "true_type", {}),
}

#: name -> CplMixVAE options that define the method (every ablation goes through the same engine)
METHODS = {
    "1 arm": {"n_arms": 1},
    "2 arms": {"n_arms": 2},
    "3 arms": {"n_arms": 3},
    "5 arms": {"n_arms": 5},
    "1 arm, random start": {"n_arms": 1, "type_init": "random"},
    "2 arms, random start": {"n_arms": 2, "type_init": "random"},
    "3 arms, random start": {"n_arms": 3, "type_init": "random"},
    "5 arms, random start": {"n_arms": 5, "type_init": "random"},
    "2 arms, random start, lambda 1 (the paper's objective and start)": {"n_arms": 2, "type_init": "random", "lam": 1.0},
    "2 arms, no entropy term": {"n_arms": 2, "entropy_weight": 0.0},
    "2 arms, shared parameters": {"n_arms": 2, "share_arm_parameters": True},
    "2 arms, state independent of type": {"n_arms": 2, "state_depends_on_type": False},
    "2 arms, augmentation without coupling": {"n_arms": 2, "coupled": False, "augment": "noise"},
    "1 arm, augmented": {"n_arms": 1, "augment": "noise"},
    "2 arms, images not deskewed": {"n_arms": 2, "deskew_images": False},
    "JointVAE (1 arm, capacity schedule)": {"n_arms": 1, "objective": "jointvae", "type_init": "random"},
}


def run_one(dataset: str, method: str, seed: int, steps: int, overrides: dict | None = None) -> dict:
    name, labels, data_options = DATASETS[dataset]
    adata = datasets.load(name)
    n_types = int(adata.obs[labels].nunique())
    model = CplMixVAE(adata, n_types=n_types, labels=labels, seed=seed, steps=steps,
                      **{**data_options, **METHODS[method], **(overrides or {})})
    started = time.perf_counter()
    model.train(progress=False)
    seconds = time.perf_counter() - started
    metrics = model.evaluate()
    return {"dataset": dataset, "method": method, "seed": seed, "k": n_types, "steps": steps,
            "acc": float(metrics["acc"]), "ari": float(metrics["ari"]), "nmi": float(metrics["nmi"]),
            "kl": float(metrics["kl"]), "it_per_s": steps / seconds, "augment": model.augment_used,
            **initial_partition_scores(model, labels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS), metavar="DATASET")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", nargs="+", type=config_option, default=[], metavar="OPTION=VALUE",
                        help="CplMixConfig options for every run, on top of the dataset's and the method's")
    parser.add_argument("--out", default=str(RESULTS / "table1"), help="report path without suffix")
    parser.add_argument("--list", action="store_true", help="print the datasets and methods and exit")
    args = parser.parse_args()
    if args.list:
        print("datasets:", ", ".join(DATASETS)); print("methods:", ", ".join(METHODS)); return
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = dict(args.set)  # CplMixConfig options for every run
    command = "python benchmarks/table1.py " + " ".join(f'"{a}"' if " " in a else a for a in sys.argv[1:])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    machine = torch.cuda.get_device_name() if device == "cuda" else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine, "torch": torch.__version__,
              "command": command, "steps": args.steps, "options": overrides, "runs": []}
    lines = ["# Table 1 through the same engine", "", f"{report['date']}, {machine}, torch {torch.__version__}, "
             f"{args.steps} steps per run (the paper trains 40K-300K); command: `{command}`", "",
             "| dataset | method | K | ACC (mean ± sd) | ARI | KL | it/s | start ARI |", "|---|---|---|---|---|---|---|---|"]
    for dataset in args.datasets:
        for method in args.methods:
            runs = []
            for seed in args.seeds:
                runs.append(run_one(dataset, method, seed, args.steps, overrides))
                print(json.dumps(runs[-1]), flush=True)
            report["runs"].extend(runs)
            mean = {key: float(np.mean([r[key] for r in runs])) for key in ("acc", "ari", "kl", "it_per_s", "init_ari")}
            sd = float(np.std([r["acc"] for r in runs]))
            lines.append(f"| {dataset} | {method} | {runs[0]['k']} | {100 * mean['acc']:.1f} ± {100 * sd:.1f} | "
                         f"{mean['ari']:.3f} | {mean['kl']:.3f} | {mean['it_per_s']:.1f} | "
                         + ("" if np.isnan(mean["init_ari"]) else f"{mean['init_ari']:.3f}") + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
