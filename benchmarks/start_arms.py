"""Each arm's start ARI for quality-suite rows trained before the suite recorded it.

    python benchmarks/start_arms.py benchmarks/results/quality_suite_2026-12-07_start_any_run.jsonl

The suite's final ARI is a mean over the arms, and the arms start from different Leiden runs; a row's
``init_ari`` is the first arm's start only. For every row without ``init_ari_per_arm`` this recomputes each arm's
start (no training: the start partitions are deterministic for a seed) from the row's own data and configuration,
checks that the first arm's ARI is the row's ``init_ari`` (else the row is left as it is and named), adds the
field, and rewrites the JSONL in place (atomically). Then ``quality_suite.py --report-only`` tables it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import arm_start_aris, arm_starts, write_atomic  # noqa: E402

AGREES = 1e-6  # the recomputed first arm's ARI against the row's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jsonl", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from quality_suite import DATASETS, _config, read_jsonl, run_config

    from cplmix_explorer import CplMixVAE

    rows = read_jsonl(args.jsonl)
    loaded = {}
    for row in rows:
        if "error" in row or row.get("init_ari_per_arm"):
            continue
        dataset = DATASETS[row["dataset"]]
        if row["dataset"] not in loaded:
            loaded = {row["dataset"]: dataset.load(False)}  # one dataset in memory at a time
        adata = loaded[row["dataset"]]
        # rows from before the suite recorded its set-up were matched by their key: today's defaults and options
        config = (row["setup"]["config"] if "setup" in row
                  else run_config(row["k"], dataset, row["seed"], row["steps"], row.get("options") or {}))
        model = CplMixVAE(adata, config=_config({**config, "threads": args.threads}))
        aris = arm_start_aris(arm_starts(model), adata.obs[dataset.labels])
        if aris is None or abs(aris[0] - row["init_ari"]) > AGREES:
            print(f"{row['dataset']} seed {row['seed']}: the first arm's start came out {aris and aris[0]}, the row "
                  f"has {row['init_ari']}; left as it is", flush=True)
            continue
        row["init_ari_per_arm"] = aris
        print(f"{row['dataset']} seed {row['seed']}: {' '.join(f'{a:.3f}' for a in aris)}", flush=True)
    write_atomic(args.jsonl, "".join(json.dumps(row, default=str) + "\n" for row in rows))


if __name__ == "__main__":
    main()
