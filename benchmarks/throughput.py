"""Training throughput (it/s, cells/s) vs batch size, number of arms and number of cells (CSR storage).

    python benchmarks/throughput.py                    # the full sweep (meant for a GPU)
    python benchmarks/throughput.py --device cpu --steps 20 --warmup 5
    python benchmarks/throughput.py --quick            # tiny sizes, a smoke test

Uses cplmix_explorer.workflows.bench.run_benchmark (the real training step on generated Poisson counts, the Smart-seq
shape: 5,000 genes, 115 types, 2 state dims). Writes throughput.json and throughput.md (machine, torch version,
date and the command included) to benchmarks/results/ or --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine, write_atomic, write_json  # noqa: E402

from cplmix_explorer.workflows.bench import run_benchmark  # noqa: E402

FULL = dict(genes=5000, types=115, batch_sizes=[256, 512, 1000, 2000, 5000], arms=[1, 2, 3, 5],
            cells=[10_000, 100_000, 1_000_000])
QUICK = dict(genes=32, types=4, batch_sizes=[32, 64], arms=[1, 2], cells=[300, 1000])


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds, any machine)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per point (default 300; quick 5)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 30; quick 2)")
    parser.add_argument("--fast-path", default="auto", choices=["auto", "eager", "graph", "compile"])
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for throughput.json / .md")
    parser.add_argument("--name", default="throughput", help="file stem of the results")
    return parser.parse_args(argv)


def sweep(args: argparse.Namespace) -> list[dict]:
    sizes = QUICK if args.quick else FULL
    steps = args.steps or (5 if args.quick else 300)
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 30)
    common = dict(genes=sizes["genes"], types=sizes["types"], device=args.device, steps=steps, warmup=warmup,
                  fast_path=args.fast_path)
    base_cells = sizes["cells"][0]
    points = [("batch_size", dict(batch_size=b, arms=2, cells=max(base_cells, 4 * b))) for b in sizes["batch_sizes"]]
    points += [("arms", dict(batch_size=sizes["batch_sizes"][0], arms=a, cells=base_cells)) for a in sizes["arms"]]
    points += [("cells", dict(batch_size=sizes["batch_sizes"][0], arms=2, cells=n, distinct_cells=min(n, 50_000)))
               for n in sizes["cells"]]
    rows = []
    for name, options in points:
        result = run_benchmark(**common, **options)
        row = {"sweep": name, **{k: result[k] for k in ("batch_size", "arms", "cells", "non_zeros", "it_per_s",
                                                         "cells_per_s", "peak_memory_mb", "fast_path", "device_name")}}
        print(f"{name:10s} B={row['batch_size']:5d} A={row['arms']} N={row['cells']:8d}: "
              f"{row['it_per_s']:8.1f} it/s {row['cells_per_s']:11.0f} cells/s", flush=True)
        rows.append(row)
    return rows


def markdown(report: dict) -> str:
    info = report["machine"]
    lines = [
        "# Training throughput",
        "",
        f"{info['date']}, {report['rows'][0]['device_name']}, torch {info['torch']}; genes {report['genes']}, "
        f"types {report['types']}; `{info['command']}`",
        "",
        "| sweep | batch | arms | cells | it/s | cells/s | peak memory (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(f"| {row['sweep']} | {row['batch_size']} | {row['arms']} | {row['cells']} | {row['it_per_s']:.1f} "
                     f"| {row['cells_per_s']:.0f} | {row['peak_memory_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse(argv)
    sizes = QUICK if args.quick else FULL
    report = {"machine": machine(), "quick": args.quick, "genes": sizes["genes"], "types": sizes["types"],
              "rows": sweep(args)}
    write_json(args.out / f"{args.name}.json", report)
    write_atomic(args.out / f"{args.name}.md", markdown(report))
    print(f"wrote {args.out / (args.name + '.json')} and .md")
    return report


if __name__ == "__main__":
    main()
