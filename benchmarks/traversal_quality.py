"""Does the traversal show the simulated biology? (issue 4's test, over several seeds, with the figures.)

    python benchmarks/traversal_quality.py                         # the test's settings, 3 weight seeds
    python benchmarks/traversal_quality.py --seeds 0 1 2 3 4 --steps 2000 --data-seed 4

For each seed: train on the simulation of ``tests/test_traversal.py`` (4 types, a type-dependent activity
state driving IEG-named genes, one type with zero gain), match inferred to true types, and for every type
traverse the inferred state dimension that best tracks the true activity state. Printed per type: the true
gain, that dimension's |Pearson r| with the true state, IEG and MG median amplitude and IEG median |rho|;
and the checks of the test: ACC >= 0.9; responsive types IEG |rho| >= 0.9 and IEG amplitude >= 2 x MG;
the zero-gain type's IEG amplitude <= 0.25 x the responsive types' median, along every dimension.
The model quality behind these figures is the engine's; the traversal only reads it out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def run(seed: int, data_seed: int, steps: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_traversal import SIMULATION, TRAINING

    import cplmix_explorer as cx
    from cplmix_explorer.analysis.metrics import contingency_table
    from cplmix_explorer.analysis.traversal import context_for, traverse

    adata = cx.datasets.simulate(**{**SIMULATION, "seed": data_seed})
    options = {**TRAINING, "seed": seed}
    options.pop("steps")
    torch.manual_seed(seed)
    started = time.perf_counter()
    model = cx.CplMixVAE(adata, **options)
    model.train(steps=steps, progress=False)
    seconds = time.perf_counter() - started
    context = context_for(model)
    table, levels, names = contingency_table(model.predict().consensus_type, adata.obs["true_type"].to_numpy())
    rows, cols = linear_sum_assignment(-table)
    accuracy = float(table[rows, cols].sum() / table.sum())
    gains = adata.uns["simulation"]["gains"]
    types, responsive, silent = {}, [], []
    for row, col in zip(rows, cols):
        type_index, name = int(levels[row]), str(names[col])
        states = context.type_states(type_index)
        truth = adata.obs["true_state_0"].to_numpy()[states.cells]
        correlation = [abs(np.corrcoef(states.state_mean[0, :, d], truth)[0, 1]) for d in range(model.module.state_dim)]
        dim = int(np.argmax(correlation))
        summary = traverse(model, type_index, dim).group_summary
        entry = {
            "gain": round(gains[name][0], 2), "dim": dim, "state_r": round(float(max(correlation)), 2),
            "ieg_amplitude": round(float(summary.loc["IEG", "median_amplitude"]), 3),
            "mg_amplitude": round(float(summary.loc["MG", "median_amplitude"]), 3),
            "ieg_abs_rho": round(float(summary.loc["IEG", "median_abs_rho"]), 3),
        }
        if gains[name][0] == 0:
            entry["ieg_amplitude_every_dim"] = [
                round(float(traverse(model, type_index, d).group_summary.loc["IEG", "median_amplitude"]), 3)
                for d in range(model.module.state_dim)
            ]
            silent.append(entry)
        else:
            responsive.append(entry)
        types[name] = entry
    typical = float(np.median([e["ieg_amplitude"] for e in responsive])) if responsive else 0.0
    checks = {
        "acc>=0.9": accuracy >= 0.9,
        "ieg_rho>=0.9": all(e["ieg_abs_rho"] >= 0.9 for e in responsive),
        "ieg>=2xMG": all(e["ieg_amplitude"] >= 2 * e["mg_amplitude"] for e in responsive),
        "silent_flat": all(max(e["ieg_amplitude_every_dim"]) <= 0.25 * typical for e in silent),
    }
    return {"seed": seed, "data_seed": data_seed, "steps": steps, "acc": round(accuracy, 3),
            "train_seconds": round(seconds, 1), "checks": checks, "types": types}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model seeds (weights and batches)")
    parser.add_argument("--data-seed", type=int, default=None, help="simulation seed (default: the test's)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the test's)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_traversal import SIMULATION, TRAINING

    data_seed = SIMULATION["seed"] if args.data_seed is None else args.data_seed
    steps = TRAINING["steps"] if args.steps is None else args.steps
    results = [run(seed, data_seed, steps) for seed in args.seeds]
    for result in results:
        print(json.dumps(result), flush=True)
    passed = sum(all(r["checks"].values()) for r in results)
    print(json.dumps({"runs": len(results), "all_checks_pass": passed}))


if __name__ == "__main__":
    main()
