"""The traversal test's simulation (tests/test_traversal.py) with and without the decoder's depth covariate: the
immediate-early-gene response a traversal shows in the types that respond to the activity state (median over them
of the IEG group's median amplitude along the dimension that tracks the activity), and in the type that does not
respond (the larger of its two dimensions), against the same figures computed from the data and the true states
(per IEG gene, the within-type slope of log-expression on the true state over the swept range, divided by the
gene's sd across all cells).

    python benchmarks/traversal_depth.py

Trains the test's run twice (TRAINING of tests/test_traversal.py, depth_covariate on and off), one torch thread.
Writes benchmarks/results/traversal_depth.{json,md}. Measures; asserts nothing.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _common import RESULTS, machine, write_report  # noqa: E402


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
    import torch
    from scipy.optimize import linear_sum_assignment
    from test_traversal import SIMULATION, TRAINING, activity_dimension

    from cplmix_explorer import CplMixConfig, datasets
    from cplmix_explorer.analysis.metrics import contingency_table
    from cplmix_explorer.analysis.traversal import traverse
    from cplmix_explorer.workflows.run import load_run, train_run

    adata = datasets.simulate(**SIMULATION)
    gains = adata.uns["simulation"]["gains"]
    truth = data_amplitudes(adata)
    responding = [name for name in truth if gains[name][0] != 0]
    silent = [name for name in truth if gains[name][0] == 0]
    rows = [{"model": "data (true states)", "responding": float(np.median([truth[n][0] for n in responding])),
             "not_responding": float(max(truth[silent[0]]))}]
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "simulated.h5ad"
        adata.write_h5ad(data)
        for covariate in (False, True):
            torch.set_num_threads(1)
            torch.manual_seed(TRAINING["seed"])
            run = Path(folder) / f"run_{covariate}"
            train_run(str(data), run, CplMixConfig().update(**TRAINING, depth_covariate=covariate), progress=False)
            model = load_run(run)
            table, levels, names = contingency_table(model.predict().consensus_type, adata.obs["true_type"].to_numpy())
            matched_rows, matched_cols = linear_sum_assignment(-table)
            mapping = {str(names[c]): int(levels[r]) for r, c in zip(matched_rows, matched_cols)}
            amplitudes = [traverse(model, mapping[n], activity_dimension(model, adata, mapping[n])[0])
                          .group_summary.loc["IEG", "median_amplitude"] for n in responding]
            flat = [traverse(model, mapping[silent[0]], d).group_summary.loc["IEG", "median_amplitude"]
                    for d in range(model.module.state_dim)]
            rows.append({"model": f"depth covariate {'on' if covariate else 'off'}",
                         "responding": float(np.median(amplitudes)), "not_responding": float(max(flat))})
            print(rows[-1], flush=True)
    lines = ["# Traversals with and without the depth covariate (the traversal test's simulation)", "",
             f"Command: `{machine()['command']}`  ", f"{machine()['date']}, {machine()['host_cpu']}, 1 torch thread.", "",
             "Median amplitude of the IEG group (range along the sweep / the gene's sd across all cells): median over "
             "the types that respond to the activity state, and the larger over the two dimensions of the type that "
             "does not.", "", "| | responding types | type that does not respond | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['responding']:.2f} | {r['not_responding']:.2f} | "
              f"{r['not_responding'] / r['responding']:.3f} |" for r in rows]
    write_report(RESULTS / "traversal_depth", {"machine": machine(), "rows": rows}, lines)


if __name__ == "__main__":
    main()
