"""Does the objective prefer the right typing, and does the start decide whether training finds it? On the
simulator (`synthetic`, 10 types), trains 2-arm models that differ only in where the categories start and in the
coupling weight, then reports the objective they end at and the types they find:

- random start: the random network (the paper's start, ``type_init='random'``);
- true start: the type heads fitted during the first ``--start-steps`` steps to the *true* types, through the
  engine's own warm-up (the cross-entropy the Leiden start uses, fed the simulator's labels instead), then the
  objective alone; a start no user has, to ask what the objective does from the right answer;
- Leiden start: the default (``type_init='leiden'``).

For each run: type ACC and ARI against the truth, categories in use, the arms' agreement, the mean of the
objective over the last 250 training steps (nats per cell; comparable only between runs with the same lambda)
and the objective on the held-out cells (eval mode).

    python benchmarks/start_study.py                       # seeds 0 1, 3,000 steps (about 15 CPU minutes)
    python benchmarks/start_study.py --seeds 0 --steps 600 --tag quick     # seconds: checks the script runs

Writes benchmarks/results/start_study.{json,md}. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_report  # noqa: E402

#: name -> (CplMixVAE options, start from the true types)
SETTINGS = {
    "random start, lambda 1 (the paper)": ({"type_init": "random", "lam": 1.0}, False),
    "true start, lambda 1": ({"type_init": "random", "lam": 1.0}, True),
    "random start, lambda 0.1": ({"type_init": "random", "lam": 0.1}, False),
    "true start, lambda 0.1": ({"type_init": "random", "lam": 0.1}, True),
    "Leiden start, lambda 0.1 (the default)": ({}, False),
}


def run(adata, name: str, seed: int, steps: int, start_steps: int) -> dict:
    import cplmix_explorer as cx

    options, true_start = SETTINGS[name]
    info = adata.uns["simulation"]
    model = cx.CplMixVAE(adata, n_types=info["n_types"], n_arms=2, state_dim=info["state_dim"], seed=seed,
                         labels="true_type", **options)
    started = time.perf_counter()
    trainer = model.make_trainer()
    if true_start:  # the engine's warm-up, fed the true types of the training cells
        truth = torch.as_tensor(adata.obs["true_type"].cat.codes.to_numpy().astype(np.int64), device=trainer.device)
        targets = torch.full((2, adata.n_obs), -1, dtype=torch.long, device=trainer.device)
        targets[:, trainer.train_rows] = truth[trainer.train_rows]
        trainer.type_targets, trainer.type_init_end = targets, start_steps
    result = trainer.fit(steps)
    model.step, model.history = trainer.step, result
    model._invalidate()
    metrics = model.evaluate()
    names = result.metric_names
    last = result.history_values[-250:].mean(axis=0)
    return {
        "setting": name, "seed": seed, "steps": steps, "acc": metrics["acc"], "ari": metrics["ari"],
        "categories_used": metrics["k_used"], "agreement": metrics["consensus"],
        "objective": float(last[names.index("loss")]),
        "validation_objective": result.evaluations[-1].validation_loss if result.evaluations else None,
        "seconds": time.perf_counter() - started,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--start-steps", type=int, default=300, help="warm-up steps of the true start")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), metavar="SETTING")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from cplmix_explorer import datasets

    adata = datasets.load("synthetic")
    runs = []
    for name in args.settings:
        for seed in args.seeds:
            runs.append(run(adata, name, seed, args.steps, args.start_steps))
            print(json.dumps(runs[-1]), flush=True)
    info = machine()
    lines = ["# Where the categories start", "",
             f"{info['date']}, {info['host_cpu']}, torch {info['torch']}, {args.threads} thread(s); `{info['command']}`", "",
             "| start | seed | type ACC | ARI | categories used | agreement | objective (last 250 steps) | held-out objective |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        held_out = "" if r["validation_objective"] is None else f"{r['validation_objective']:.1f}"
        lines.append(f"| {r['setting']} | {r['seed']} | {r['acc']:.3f} | {r['ari']:.3f} | {r['categories_used']} | "
                     f"{r['agreement']:.3f} | {r['objective']:.1f} | {held_out} |")
    report = {"machine": info, "steps": args.steps, "start_steps": args.start_steps, "runs": runs}
    write_report(RESULTS / f"start_study{'_' + args.tag if args.tag else ''}", report, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
