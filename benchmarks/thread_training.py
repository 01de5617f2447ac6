"""Training speed in a worker thread of a long-lived process (as the app and the notebook widgets train)
against the CLI: how much of the app's overhead is not the app's own work (issue 5).

    python benchmarks/thread_training.py --steps 600 --repeats 3 --threads 2

Runs the same training (zeisel2015, 2,000 genes, 10 types, 2 arms, batch 256) alternately as ``cplmix train``
in a subprocess, in a worker thread of this process that first calls ``torch.set_num_threads`` (which also sets up oneMKL
in the calling thread), and in a worker thread that does not. Prints one JSON object (steps/s of
each run, from its metrics.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
OPTIONS = {"n_types": 10, "n_arms": 2, "state_dim": 2, "n_genes": 2000, "batch_size": 256, "seed": 0, "device": "cpu"}


def in_subprocess(steps: int, threads: int, out: Path) -> None:
    from cplmix_explorer.config import cli_flag

    command = [sys.executable, "-m", "cplmix_explorer.cli", "train", "zeisel2015", "--out", str(out), "--steps", str(steps), "--quiet"]
    for name, value in OPTIONS.items():
        command += [cli_flag(name), str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPOSITORY)}
    subprocess.run(command, check=True, env=env, cwd=REPOSITORY)


def in_thread(steps: int, threads: int, out: Path, set_threads: bool) -> None:
    import torch

    from cplmix_explorer.config import CplMixConfig
    from cplmix_explorer.workflows.run import train_run

    def work() -> None:
        if set_threads:
            torch.set_num_threads(threads)
        train_run("zeisel2015", out, CplMixConfig(**OPTIONS, steps=steps), progress=False)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="cplmix-thread-"))
    modes = {
        "cli": lambda out: in_subprocess(args.steps, args.threads, out),
        "worker_thread_setting_threads": lambda out: in_thread(args.steps, args.threads, out, True),
        "worker_thread_plain": lambda out: in_thread(args.steps, args.threads, out, False),
    }
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    for repeat in range(args.repeats):
        for mode, run in modes.items():
            out = folder / f"{mode}-{repeat}"
            run(out)
            rates[mode].append(round(json.loads((out / "metrics.json").read_text())["steps_per_second"], 2))
    print(json.dumps({
        "benchmark": "thread_training", "steps": args.steps, "threads": args.threads, "cpu_cores": os.cpu_count(),
        "steps_per_second": rates,
        "median_steps_per_second": {mode: statistics.median(values) for mode, values in rates.items()},
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
