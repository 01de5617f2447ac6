"""The continuous state over training: what it recovers at every N steps of one run on a suite simulation.

    python benchmarks/state_trace.py [--dataset sim40] [--seed 0] [--steps 10000] [--every 1000] [--set OPTION=VALUE ...]

At every ``--every`` steps (an evaluation of the run) it infers the state of every cell and records, per program
(activity: the IEG state; metabolic: the HKG state), the median over the responding types of the best single
state dimension's within-type |Spearman rho| with the true state and of the best linear combination's r
(``state_depth.state_scores``), the state's tie to sequencing depth, and each state dimension's spread over the
cells (arm 0: a dimension whose spread falls near 0 is switched off, the decoder ignores it). One torch thread unless --threads,
the defaults otherwise. It reads the network only, in eval mode, so the traced run trains as an untraced one.
Writes benchmarks/results/state_trace_<dataset>.{json,md} (``--out`` for another name). Measures; asserts nothing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, single_run_parser, write_report  # noqa: E402


def main() -> None:
    parser = single_run_parser(__doc__.splitlines()[0], steps=10000)
    parser.add_argument("--dataset", default="sim40")
    parser.add_argument("--every", type=int, default=1000, help="steps between records (a multiple of eval_every)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import torch

    import cplmix_explorer as cx
    from cplmix_explorer.model.inference import infer
    from cplmix_explorer.train.device_data import DeviceData
    from cplmix_explorer.train.events import Evaluation
    from quality_suite import DATASETS
    from state_depth import state_scores

    torch.set_num_threads(args.threads)
    dataset = DATASETS[args.dataset]
    adata = dataset.load(False)
    model = cx.CplMixVAE(adata, n_types=dataset.n_types(False), seed=args.seed, steps=args.steps, **dict(args.set))
    rows, device_data = [], {}

    def record(event) -> None:
        if not isinstance(event, Evaluation) or (event.step % args.every and event.step != args.steps):
            return
        if "data" not in device_data:
            device_data["data"] = DeviceData(model.prepared, next(model.module.parameters()).device)
        inference = infer(model.module, device_data["data"])
        row = {"step": int(event.step), "agreement": event.mean_agreement, **state_scores(adata, inference.state_mean),
               "state_spread": [float(v) for v in inference.state_mean[0].std(axis=0)]}
        rows.append(row)
        print(row, flush=True)

    model.events.subscribe(record)
    started = time.perf_counter()
    model.train(progress=False)
    seconds = time.perf_counter() - started
    ari = float(model.evaluate("true_type")["ari"])
    options = dict(args.set)
    lines = [
        f"# The continuous state over training, {args.dataset}",
        "",
        f"Command: `{machine()['command']}`  ",
        f"{machine()['date']}, {machine()['host_cpu']}, {args.threads} torch thread(s), seed {args.seed}, 2 arms, the defaults"
        + (f" with {options}" if options else "") + f"; final ARI {ari:.3f}, {seconds:.0f} s.",
        "",
        "Per program, median over the types that respond to it: rho = best single state dimension's |Spearman rho| "
        "with the true state (mean over arms); R = best linear combination of the state dimensions (arm 0). Depth "
        "tie: the state dimension most tied to the library size (median within-type |rho|). Spread: each state "
        "dimension's sd over the cells (arm 0; near 0 = switched off).",
        "",
        "| step | activity rho / R | metabolic rho / R | state abs rho (suite) | depth tie | spread | agreement |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['step']:,} | {r['rho_activity']:.2f} / {r['r_activity']:.2f} | {r['rho_metabolic']:.2f} / "
            f"{r['r_metabolic']:.2f} | {r['rho_best']:.2f} | {r['depth_tie']:.2f} | "
            f"{', '.join(f'{v:.2f}' for v in r['state_spread'])} | {r['agreement']:.3f} |")
    out = args.out or RESULTS / f"state_trace_{args.dataset}"
    write_report(out, {"machine": machine(), "dataset": args.dataset, "seed": args.seed, "steps": args.steps,
                       "options": options, "ari": ari, "seconds": seconds, "rows": rows}, lines)


if __name__ == "__main__":
    main()
