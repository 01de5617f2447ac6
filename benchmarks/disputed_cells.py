"""Where training keeps or loses its start: the cells the arms' Leiden runs agree on, and those they dispute.

    python benchmarks/disputed_cells.py --dataset han2018_bladder --seed 0 --steps 10000
    python benchmarks/disputed_cells.py --dataset han2018_bladder --seed 0 --steps 10000 --set start_any_run=true
    python benchmarks/disputed_cells.py --dataset han2018_bladder --model RUN_DIR     # a saved model, not trained

Trains a suite dataset (``benchmarks/quality_suite.py``'s data, the defaults with any ``--set``; or loads a model
saved with ``CplMixVAE.save`` on it), recomputes the arms' start runs as training computed them, and reports on the
training cells, split into those every run places alike (agreed) and the others (disputed): the ARI against the
labels of each arm's start and of the trained typing (consensus and each arm), and on the disputed cells the share
the trained consensus puts in the first arm's start category, in the second's, or in neither. Writes
benchmarks/results/disputed_cells_<dataset>_seed<S>[_<tag>].{json,md}. Measures; asserts nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, single_run_parser, write_atomic  # noqa: E402


def main() -> None:
    parser = single_run_parser(__doc__.splitlines()[0], steps=10000)
    parser.add_argument("--dataset", default="han2018_bladder")
    parser.add_argument("--model", type=Path, default=None, help="a saved model to read instead of training one")
    parser.add_argument("--tag", default=None, help="suffix of the results' name")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from quality_suite import DATASETS

    from cplmix_explorer import CplMixVAE
    from cplmix_explorer.analysis.metrics import compare_to_labels

    dataset = DATASETS[args.dataset]
    adata, k = dataset.load(False), dataset.n_types(False)
    if args.model is not None:
        model = CplMixVAE.load(args.model, adata)
    else:
        model = CplMixVAE(adata, n_types=k, seed=args.seed, steps=args.steps, labels=dataset.labels, threads=args.threads,
                          **dict(args.set))
        model.train(progress=False)
    trainer = model.make_trainer()
    trainer.prepare_type_init()
    rows = trainer.train_rows.cpu().numpy()
    starts = trainer.start_runs  # (runs, training rows), aligned to the first run
    inference = model.predict()
    labels = np.asarray(adata.obs[dataset.labels]).astype(str)[rows]
    consensus, arms = inference.consensus_type[rows], inference.type_per_arm[:, rows]
    agreed = np.all(starts == starts[:1], axis=0)
    typings = {f"start, arm {a}": starts[a] for a in range(len(starts))}
    typings["trained, consensus"] = consensus
    typings.update({f"trained, arm {a}": arms[a] for a in range(len(arms))})
    scores = {name: {part: float(compare_to_labels(typing[mask], labels[mask])["ari"]) if mask.any() else None
                     for part, mask in (("all", np.ones_like(agreed)), ("agreed", agreed), ("disputed", ~agreed))}
              for name, typing in typings.items()}
    disputed = {}
    if (~agreed).any():  # the trained consensus on the disputed cells, against each run's category
        typed, runs = consensus[~agreed], starts[:, ~agreed]
        disputed["first arm's start"] = float((typed == runs[0]).mean())
        if len(starts) > 1:
            disputed["second arm's start"] = float((typed == runs[1]).mean())
            disputed["neither"] = float(np.all(runs != typed, axis=0).mean())
    kept_agreed = float((consensus[agreed] == starts[0][agreed]).mean()) if agreed.any() else None
    options = dict(args.set)
    info = machine()
    name = f"disputed_cells_{args.dataset}_seed{model.config.seed}" + (f"_{args.tag}" if args.tag else "")
    report = {"machine": info, "dataset": args.dataset, "seed": model.config.seed, "steps": model.step,
              "options": options, "model": None if args.model is None else str(args.model),
              "agreed_share": float(agreed.mean()), "ari": scores, "disputed_cells_typed_as": disputed,
              "agreed_cells_kept": kept_agreed}
    write_atomic((RESULTS / name).with_suffix(".json"), json.dumps(report, indent=1))
    lines = [f"# {args.dataset}, seed {model.config.seed}, {model.step} steps: the agreed and the disputed cells", "",
             f"`{info['command']}`, {info['date']}, {info['host_cpu']}"
             + (f"; options {json.dumps(options)}" if options else "; the defaults") + ".", "",
             f"The arms' start runs agree on {agreed.mean():.1%} of the training cells; the trained consensus keeps "
             f"the start on {kept_agreed:.1%} of those." if kept_agreed is not None else "", "",
             "| typing | ARI, all | ARI, agreed cells | ARI, disputed cells |", "|---|---|---|---|"]
    for typing, values in scores.items():
        cells = " | ".join("-" if values[part] is None else f"{values[part]:.3f}" for part in ("all", "agreed", "disputed"))
        lines.append(f"| {typing} | {cells} |")
    lines += ["", "Disputed cells typed by the trained consensus as: "
              + ", ".join(f"{key} {value:.1%}" for key, value in disputed.items()) + "."]
    write_atomic((RESULTS / name).with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
