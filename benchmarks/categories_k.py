"""How the parameterisation of q(c|x) behaves from K = 3 to K = 150 categories (method.md asks for it).

The engine's q(c|x) is one softmax of the type head's logits divided by tau (default 1). The public reference
applies a softmax twice, softmax(softmax(logits) / tau), which caps every log-ratio log q_j / q_k at 1/tau, so
that its tau must shrink with K (it uses about 1/K) and collapses when it does not. This benchmark trains
2-arm models on simulated flat types without a continuous state (K true types, K categories) for each K and each parameterisation and
reports what a user sees: categories in use (argmax, per arm), ACC and ARI against the true types, the arms'
agreement, the mean confidence max_k q(c|x), and whether the loss stayed finite.

    python benchmarks/categories_k.py                                   # K = 3 10 30 60 150, 1 seed, 1500 steps
    python benchmarks/categories_k.py --types 3 150 --seeds 0 1 --steps 3000

Writes benchmarks/results/categories_k.{json,md}. The reference's double softmax is reproduced here, in the
benchmark only, by replacing the module's ``type_posterior``; the engine never uses it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_report  # noqa: E402

VARIANTS = ("engine: softmax(logits / tau), tau = 1", "reference: softmax(softmax(logits) / tau), tau = 1/K",
            "reference: softmax(softmax(logits) / tau), tau = 0.1")


def reference_double_softmax(tau: float):
    """The reference code's q(c|x): log softmax(softmax(logits) / tau) (method.md, "Known mistakes")."""
    def type_posterior(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(torch.softmax(logits, dim=-1) / tau, dim=-1)
    return type_posterior


def simulated_types(n_types: int, seed: int):
    """Flat (no classes) simulated types, 10x abundance range, at least 40 cells per type on average, and no
    continuous state program (gains 0): the types are the data's structure, so that what differs between
    the rows is the parameterisation, not what the categories choose to capture."""
    from cplmix_explorer import datasets

    markers = 10
    return datasets.simulate(n_cells=max(3000, 40 * n_types), n_genes=max(1500, markers * n_types + 400),
                             n_types=n_types, n_classes=None, markers_per_type=markers, abundance_ratio=10.0,
                             activity_gain=0.0, metabolic_gain=0.0, seed=seed)


def run_one(adata, n_types: int, variant: str, seed: int, steps: int) -> dict:
    import cplmix_explorer as cx
    from cplmix_explorer.errors import CplmixError

    started = time.perf_counter()
    model = cx.CplMixVAE(adata, n_types=n_types, n_arms=2, seed=seed, steps=steps)
    if variant.startswith("reference"):
        tau = 1.0 / n_types if variant.endswith("1/K") else 0.1
        model.module.type_posterior = types.MethodType(reference_double_softmax(tau), model.module)
    try:
        model.train(progress=False)
    except CplmixError as error:  # a non-finite loss stops training with a message naming the step
        return {"k": n_types, "variant": variant, "seed": seed, "finite": False, "error": str(error)}
    prediction = model.predict()
    metrics = model.evaluate("true_type")
    used = [int(np.unique(t).size) for t in prediction.type_per_arm]
    return {"k": n_types, "variant": variant, "seed": seed, "finite": True, "used_per_arm": used,
            "used_fraction": float(np.mean(used)) / n_types, "acc": metrics["acc"], "ari": metrics["ari"],
            "agreement": float(np.mean(prediction.arms_agree)),
            "confidence": float(prediction.confidence_per_arm.mean()), "seconds": time.perf_counter() - started}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", nargs="+", type=int, default=[3, 10, 30, 60, 150])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "categories_k"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = []
    for n_types in args.types:
        for seed in args.seeds:
            adata = simulated_types(n_types, seed)
            for variant in VARIANTS:
                run = run_one(adata, n_types, variant, seed, args.steps)
                print(json.dumps(run), flush=True)
                runs.append(run)
    info = machine()
    lines = ["# q(c|x) parameterisation across K", "",
             f"{info['date']}, {info['host_cpu']}, torch {info['torch']}, {args.threads} thread(s); "
             f"2 arms, {args.steps} steps, seeds {' '.join(map(str, args.seeds))}; command: `{info['command']}`", "",
             "| K | q(c\\|x) | categories used (share of K) | ACC | ARI | arms agree | mean max q | finite loss |",
             "|---|---|---|---|---|---|---|---|"]
    for n_types in args.types:
        for variant in VARIANTS:
            group = [r for r in runs if r["k"] == n_types and r["variant"] == variant]
            ok = [r for r in group if r["finite"]]
            finite = f"{len(ok)}/{len(group)}"
            if not ok:
                lines.append(f"| {n_types} | {variant} | - | - | - | - | - | {finite} |")
                continue
            mean = {key: float(np.mean([r[key] for r in ok])) for key in
                    ("used_fraction", "acc", "ari", "agreement", "confidence")}
            lines.append(f"| {n_types} | {variant} | {mean['used_fraction']:.2f} | {mean['acc']:.3f} | "
                         f"{mean['ari']:.3f} | {mean['agreement']:.3f} | {mean['confidence']:.3f} | {finite} |")
    out = Path(args.out)
    write_report(out, {**info, "steps": args.steps, "seeds": args.seeds, "runs": runs}, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
