"""What the continuous state learns on the suite's simulated sets, with and without the decoder's depth covariate:
per program, the median over the types that respond to it of the best within-type |Spearman rho| of an inferred
state dimension with the true state (activity: the IEG state; metabolic: the HKG state), the same with the
best linear combination of the inferred dimensions (R, so a rotated state counts), and the state's tie to
sequencing depth (the state dimension most tied to it: median over types of its within-type |rho| with the
library size). Also, from the data alone, what a per-type PCA of the program's genes reaches (the oracle).

    python benchmarks/state_depth.py --datasets sim10 sim40 --steps 800 3000 [--seed 0] [--set OPTION=VALUE ...]

Each (dataset, steps) trains twice, ``depth_covariate`` on and off, 2 arms, the defaults otherwise, one torch
thread. Writes benchmarks/results/state_depth.{json,md} (``--out`` for another name). Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, config_option, machine, write_report  # noqa: E402
from simulator_quality import PROGRAMS, program_rho_medians  # noqa: E402


def oracle(adata) -> dict:
    """Per program, the median over responsive types of |rho| between the first principal component of the
    program's log-normalised genes within the type and the true state: what the data hold for it."""
    from scipy.stats import spearmanr

    counts = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    log_expression = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    program_of_gene = adata.var["state_dimension"].to_numpy()
    types = adata.obs["true_type"].astype(str).to_numpy()
    truth, responsive = adata.obsm["true_state"], adata.uns["simulation"]["responsive"]
    out = {}
    for j, program in PROGRAMS.items():
        values = []
        for name in np.unique(types):
            if not responsive[name][j]:
                continue
            inside = types == name
            block = log_expression[np.ix_(inside, program_of_gene == j)]
            block = block - block.mean(axis=0)
            first = np.linalg.svd(block, full_matrices=False)[0][:, 0]
            values.append(abs(spearmanr(first, truth[inside, j])[0]))
        out[f"oracle_{program}"] = float(np.median(values))
    return out


def state_scores(adata, state_mean: np.ndarray) -> dict:
    """Per program: best single inferred dimension (``state_recovery``, mean over arms) and best linear
    combination (arm 0); the state's tie to depth (arm 0)."""
    from scipy.stats import spearmanr

    from cplmix_explorer.data.simulate import state_recovery

    recovery = state_recovery(adata, state_mean)
    types = adata.obs["true_type"].astype(str).to_numpy()
    truth, responsive = adata.obsm["true_state"], adata.uns["simulation"]["responsive"]
    library = adata.obs["true_library_size"].to_numpy()
    arm = state_mean[0]
    out = {f"rho_{program}": value for program, value in program_rho_medians(recovery).items()}
    for j, program in PROGRAMS.items():
        combined = []
        for name in np.unique(types):
            inside = types == name
            if not responsive[name][j] or inside.sum() < 3:
                continue
            design = np.c_[arm[inside], np.ones(inside.sum())]
            fit = design @ np.linalg.lstsq(design, truth[inside, j], rcond=None)[0]
            combined.append(np.corrcoef(fit, truth[inside, j])[0, 1])
        out[f"r_{program}"] = float(np.median(combined))
    out["rho_best"] = float(recovery["best_abs_rho"].median())  # the quality suite's 'state |rho|'
    out["depth_tie"] = max(
        float(np.median([abs(spearmanr(arm[types == name, d], library[types == name])[0]) for name in np.unique(types)]))
        for d in range(arm.shape[1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["sim10", "sim40"])
    parser.add_argument("--steps", type=int, nargs="+", default=[800, 3000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", type=config_option, action="append", default=[], metavar="OPTION=VALUE")
    parser.add_argument("--out", type=Path, default=RESULTS / "state_depth")
    args = parser.parse_args()
    import torch

    import cplmix_explorer as cx
    from quality_suite import DATASETS

    torch.set_num_threads(1)
    rows = []
    for name in args.datasets:
        dataset = DATASETS[name]
        adata = dataset.load(False)
        data_oracle = oracle(adata)
        n_train = adata.n_obs * 0.9
        for steps in args.steps:
            for covariate in (True, False):
                started = time.perf_counter()
                model = cx.CplMixVAE(adata, n_types=dataset.n_types(False), seed=args.seed, depth_covariate=covariate,
                                     **dict(args.set))
                model.train(steps=steps, progress=False)
                row = {"dataset": name, "steps": steps, "epochs": steps * 256 / n_train, "depth_covariate": covariate,
                       "ari": float(model.evaluate("true_type")["ari"]), **state_scores(adata, model.predict().state_mean),
                       **data_oracle, "seconds": time.perf_counter() - started}
                rows.append(row)
                print(row, flush=True)
    lines = [
        "# The continuous state with and without the decoder's depth covariate",
        "",
        f"Command: `{machine()['command']}`  ",
        f"{machine()['date']}, {machine()['host_cpu']}, 1 torch thread, seed {args.seed}, 2 arms, the defaults"
        + (f" with {dict(args.set)}" if args.set else "") + ".",
        "",
        "Per program, median over the types that respond to it: rho = best single inferred dimension's |Spearman "
        "rho| with the true state (mean over arms); R = best linear combination of the inferred dimensions "
        "(arm 0); oracle = first principal component of the program's genes within the type. Depth tie: the state "
        "dimension most tied to the library size (median within-type |rho|).",
        "",
        "| dataset | steps (epochs) | depth covariate | ARI | activity rho / R (oracle) | metabolic rho / R (oracle) "
        "| state abs rho (suite) | depth tie |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['steps']:,} ({r['epochs']:.0f}) | {'on' if r['depth_covariate'] else 'off'} | "
            f"{r['ari']:.3f} | {r['rho_activity']:.2f} / {r['r_activity']:.2f} ({r['oracle_activity']:.2f}) | "
            f"{r['rho_metabolic']:.2f} / {r['r_metabolic']:.2f} ({r['oracle_metabolic']:.2f}) | {r['rho_best']:.2f} | "
            f"{r['depth_tie']:.2f} |")
    write_report(args.out, {"machine": machine(), "seed": args.seed, "options": dict(args.set), "rows": rows}, lines)


if __name__ == "__main__":
    main()
