"""What the cell map is made from, and whether it keeps a run's types together: for a run folder, the share of
each cell's 15 nearest cells that carry its consensus type (and its label), in the encoder bottleneck (arm 0's
latent, what the "UMAP of the latent" map is made from), in the arms' mean type posterior q(c|x), in [q, state]
(what the default map, "UMAP of types and states", is made from), and on both UMAP maps (2-D).

    python benchmarks/map_basis.py RUN --labels true_type [--name NAME]

5,000 seeded random probe cells. Writes benchmarks/results/map_basis_<name>.{json,md}. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_report  # noqa: E402

PROBE_CELLS = 5000
NEIGHBORS = 15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--labels", default=None, help="an obs column of the run's data to score as well")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    from sklearn.neighbors import NearestNeighbors

    from cplmix_explorer.model.inference import types_and_states
    from cplmix_explorer.workflows.run import load_run

    model = load_run(args.run)
    features = types_and_states(model.module, model.device_data())  # what the default map is made from
    q, state = features[:, : model.module.n_types], features[:, model.module.n_types :]
    latent = model.predict().latent[0]
    types = q.argmax(1)
    labels = None if args.labels is None else np.asarray(model.adata.obs[args.labels].astype("category").cat.codes)
    probe = np.random.default_rng(0).choice(len(types), min(PROBE_CELLS, len(types)), replace=False)
    bases = {"bottleneck (the latent)": latent, "type posterior q": q, "[q, state] (types and states)": features}
    for method in ("umap", "umap_latent"):  # the two UMAP maps (the run folder's when it holds the current one)
        cell_map = model.cell_map(method, run_dir=args.run if method == "umap" else None)
        bases[f"map: {cell_map.title}"] = cell_map.coordinates
    rows = []
    for name, features in bases.items():
        _, neighbors = NearestNeighbors(n_neighbors=NEIGHBORS + 1).fit(features).kneighbors(features[probe])
        row = {"basis": name, "dims": int(features.shape[1]),
               "same_type": round(float((types[neighbors[:, 1:]] == types[probe, None]).mean()), 3)}
        if labels is not None:
            row["same_label"] = round(float((labels[neighbors[:, 1:]] == labels[probe, None]).mean()), 3)
        rows.append(row)
    info = machine()
    name = args.name or args.run.name
    lines = [f"# What the map is made from: {name} ({len(types):,} cells, K = {model.module.n_types})", "",
             f"`{info['command']}`, {info['date']}", "",
             f"Share of a cell's {NEIGHBORS} nearest cells (Euclidean) with its consensus type"
             + (f" / its '{args.labels}'" if labels is not None else "") + f", over {len(probe):,} cells.", "",
             "| basis | dims | same type | same label |", "|---|---|---|---|"]
    lines += [f"| {r['basis']} | {r['dims']} | {r['same_type']} | {r.get('same_label', '-')} |" for r in rows]
    write_report(RESULTS / f"map_basis_{name}", {"machine": info, "run": str(args.run), "labels": args.labels, "rows": rows}, lines)


if __name__ == "__main__":
    main()
