"""The traversal test's simulation (tests/test_traversal.py) with and without the decoder's depth covariate: the
immediate-early-gene response a traversal shows in the types that respond to the activity state (median over them
of the IEG group's median amplitude along the dimension that tracks the activity), and in the type that does not
respond (the larger of its two dimensions), against the same figures computed from the data and the true states
(per IEG gene, the within-type slope of log-expression on the true state over the swept range, divided by the
gene's sd across all cells).

    python benchmarks/traversal_depth.py [--seeds 0 1 2 3 4] [--steps 1000 3000] [--set OPTION=VALUE ...] [--out NAME]

Trains the test's run (TRAINING of tests/test_traversal.py) with depth_covariate on and off, for every training
seed and step count given (the test's own: seed 0, 1,000 steps), ``--set`` options on top in both, one torch
thread; one run per seed cannot tell a difference from the draw. Writes benchmarks/results/NAME.{json,md} (default
traversal_depth). Measures; asserts nothing.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _common import RESULTS, config_option, machine, write_report  # noqa: E402


def data_amplitudes(adata) -> dict:
    """Per true type, the IEG response the data hold along the activity (state 0) and metabolic (state 1) states."""
    counts = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    log_expression = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    ieg = np.flatnonzero(adata.var["state_dimension"].to_numpy() == 0)
    spread = log_expression[:, ieg].std(axis=0) + 1e-9
    types, truth = adata.obs["true_type"].astype(str).to_numpy(), adata.obsm["true_state"]
    out = {}
    for name in np.unique(types):
        inside = types == name
        state = truth[inside]
        swept = np.percentile(state, 98, axis=0) - np.percentile(state, 2, axis=0)
        out[name] = [float(np.median(np.abs([np.polyfit(state[:, j], log_expression[inside][:, g], 1)[0] for g in ieg])
                                     * swept[j] / spread)) for j in range(2)]
    return out


def main() -> None:
    import argparse

    import torch
    from scipy.optimize import linear_sum_assignment
    from test_traversal import SIMULATION, TRAINING, activity_dimension, context_for

    from cplmix_explorer import CplMixConfig, datasets
    from cplmix_explorer.analysis.metrics import contingency_table
    from cplmix_explorer.analysis.traversal import traverse
    from cplmix_explorer.workflows.run import load_run, train_run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[TRAINING["seed"]])
    parser.add_argument("--steps", type=int, nargs="+", default=[TRAINING["steps"]])
    parser.add_argument("--set", type=config_option, action="append", default=[], metavar="OPTION=VALUE")
    parser.add_argument("--out", default="traversal_depth")
    args = parser.parse_args()

    adata = datasets.simulate(**SIMULATION)
    log_library = np.log(np.asarray(adata.X.sum(axis=1)).ravel())
    gains = adata.uns["simulation"]["gains"]
    truth = data_amplitudes(adata)
    responding = [name for name in truth if gains[name][0] != 0]
    silent = [name for name in truth if gains[name][0] == 0]
    data_row = {"model": "data (true states)", "responding": float(np.median([truth[n][0] for n in responding])),
                "not_responding": float(max(truth[silent[0]]))}
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "simulated.h5ad"
        adata.write_h5ad(data)
        for steps in args.steps:
            for seed in args.seeds:
                for covariate in (False, True):
                    torch.set_num_threads(1)
                    torch.manual_seed(seed)
                    run = Path(folder) / f"run_{steps}_{seed}_{covariate}"
                    options = {**TRAINING, **dict(args.set), "seed": seed, "steps": steps, "depth_covariate": covariate}
                    train_run(str(data), run, CplMixConfig().update(**options), progress=False)
                    model = load_run(run)
                    table, levels, names = contingency_table(model.predict().consensus_type, adata.obs["true_type"].to_numpy())
                    matched_rows, matched_cols = linear_sum_assignment(-table)
                    mapping = {str(names[c]): int(levels[r]) for r, c in zip(matched_rows, matched_cols)}
                    found = [activity_dimension(model, adata, mapping[n]) for n in responding]
                    amplitudes = [traverse(model, mapping[n], dim).group_summary.loc["IEG", "median_amplitude"]
                                  for n, (dim, _) in zip(responding, found)]
                    flat = [traverse(model, mapping[silent[0]], d).group_summary.loc["IEG", "median_amplitude"]
                            for d in range(model.module.state_dim)]
                    states = context_for(model).type_states(mapping[silent[0]])  # does that dimension follow depth?
                    along = states.state_mean[0, :, int(np.argmax(flat))]
                    runs.append({"steps": steps, "seed": seed, "depth_covariate": covariate,
                                 "responding": float(np.median(amplitudes)), "not_responding": float(max(flat)),
                                 "not_responding_depth_abs_r": float(abs(np.corrcoef(along, log_library[states.cells])[0, 1])),
                                 "activity_abs_r": float(np.median([abs(rho) for _, rho in found]))})
                    print(runs[-1], flush=True)
    lines = ["# Traversals with and without the depth covariate (the traversal test's simulation)", "",
             f"Command: `{machine()['command']}`  ", f"{machine()['date']}, {machine()['host_cpu']}, 1 torch thread"
             + (f", the test's training with {dict(args.set)}" if args.set else "") + ".", "",
             "Median amplitude of the IEG group (range along the sweep / the gene's sd across all cells): median over "
             "the types that respond to the activity state, and the larger over the two dimensions of the type that "
             "does not; depth |r|: |Pearson r| between that type's dimension with the larger false response and its cells' log "
             "library size; activity |r|: median over the responding types of the |Pearson r| between the true "
             "activity and the state dimension that tracks it best. Mean +- sd over the training seeds "
             f"{', '.join(map(str, args.seeds))}.", "",
             "| | steps | responding types | type that does not respond | ratio | depth abs r | activity abs r |",
             "|---|---|---|---|---|---|---|",
             f"| {data_row['model']} | | {data_row['responding']:.2f} | {data_row['not_responding']:.2f} | "
             f"{data_row['not_responding'] / data_row['responding']:.3f} | | |"]

    def mean_sd(values):
        values = np.asarray(values, dtype=float)
        return f"{values.mean():.2f} +- {values.std(ddof=1):.2f}" if len(values) > 1 else f"{values[0]:.2f}"

    for steps in args.steps:
        for covariate in (False, True):
            group = [r for r in runs if r["steps"] == steps and r["depth_covariate"] == covariate]
            lines.append(f"| depth covariate {'on' if covariate else 'off'} | {steps} | "
                         f"{mean_sd([r['responding'] for r in group])} | {mean_sd([r['not_responding'] for r in group])} | "
                         f"{np.mean([r['not_responding'] / r['responding'] for r in group]):.3f} | "
                         f"{mean_sd([r['not_responding_depth_abs_r'] for r in group])} | "
                         f"{mean_sd([r['activity_abs_r'] for r in group])} |")
    lines += ["", "Per run:", "", "| steps | seed | depth covariate | responding | not responding | depth abs r | activity abs r |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['steps']} | {r['seed']} | {'on' if r['depth_covariate'] else 'off'} | {r['responding']:.2f} | "
              f"{r['not_responding']:.2f} | {r['not_responding_depth_abs_r']:.2f} | {r['activity_abs_r']:.2f} |" for r in runs]
    write_report(RESULTS / args.out, {"machine": machine(), "data": data_row, "runs": runs}, lines)


if __name__ == "__main__":
    main()
