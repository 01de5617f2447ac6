"""How fast is one traversal sweep? Target (issue 4): a 50-step sweep over 5,000 genes in well under 100 ms
on a CPU, so the app's traversal view can follow a slider.

    python benchmarks/traversal_speed.py                       # 5,000 genes, 50 steps, 2 arms, CPU
    python benchmarks/traversal_speed.py --genes 10000 --steps 100 --arms 3 --threads 1

The model is trained for a few steps on simulated counts (the timing does not depend on its quality).
Reported: the one-off set-up per model and per type (inference, gene statistics, marker AUROCs, state means
given the type) and the per-sweep time (median and 90th percentile over repeated sweeps, alternating the
state dimension so nothing is reused between sweeps beyond what the traversal caches by design), with the
decoder pass and the scoring timed separately. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, default=5000)
    parser.add_argument("--cells", type=int, default=3000)
    parser.add_argument("--types", type=int, default=10)
    parser.add_argument("--arms", type=int, default=2)
    parser.add_argument("--state-dim", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50, help="rows of the sweep")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import cplmix_explorer as cx
    from cplmix_explorer.analysis.traversal import _decode_sweep, context_for, spearman_with_steps, traverse

    adata = cx.datasets.simulate(n_cells=args.cells, n_genes=args.genes, n_types=args.types, state_dim=args.state_dim, seed=0)
    model = cx.CplMixVAE(
        adata, n_types=args.types, n_arms=args.arms, state_dim=args.state_dim, n_genes=args.genes, device="cpu"
    )
    model.train(steps=args.train_steps, progress=False)
    type_index = int(np.bincount(model.predict().consensus_type).argmax())

    started = time.perf_counter()
    context = context_for(model)
    _ = context.gene_statistics, context.markers
    model_setup = time.perf_counter() - started
    started = time.perf_counter()
    traverse(model, type_index, 0, args.steps)
    first_sweep = time.perf_counter() - started

    sweep, decode, scoring = [], [], []
    for repeat in range(args.repeats):
        dim = repeat % args.state_dim
        started = time.perf_counter()
        result = traverse(model, type_index, dim, args.steps)
        sweep.append(time.perf_counter() - started)
        states = context.type_states(type_index)
        arms = list(range(args.arms))
        started = time.perf_counter()
        _decode_sweep(context, type_index, arms, states.matched_dim[:, dim], result.state_per_arm, result.held_state)
        decode.append(time.perf_counter() - started)
        started = time.perf_counter()
        spearman_with_steps(result.expression.to_numpy())
        scoring.append(time.perf_counter() - started)

    def milliseconds(values):
        values = np.asarray(values) * 1000
        return {"median": round(float(np.median(values)), 2), "p90": round(float(np.percentile(values, 90)), 2)}

    print(json.dumps({
        "genes": args.genes, "steps": args.steps, "arms": args.arms, "types": args.types, "cells": args.cells,
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "model_setup_s": round(model_setup, 3), "first_sweep_of_type_s": round(first_sweep, 3),
        "sweep_ms": milliseconds(sweep), "decode_ms": milliseconds(decode), "spearman_ms": milliseconds(scoring),
        "target": "sweep median well under 100 ms",
    }, indent=2))


if __name__ == "__main__":
    main()
