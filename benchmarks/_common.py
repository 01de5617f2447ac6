"""Shared by the benchmarks: machine description, atomic result files and the quality benchmarks' --set option."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    info = {"host_cpu": f"{cpu}, {os.cpu_count()} cores", "torch": torch.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv])}
    try:
        load = os.getloadavg()[0]
        info["load_average_1min"] = round(load, 2)  # a busy machine gives lower figures
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def arm_starts(model):
    """(arms, cells) each arm's start partition (the Leiden run its type head started from, recomputed as
    training computed it; every training cell, also those that ``start_agreed_only`` leaves without a start),
    -1 for cells it does not cover (validation cells); None for a random start. Before or after training."""
    if model.config.type_init == "random":
        return None
    trainer = model.make_trainer()
    trainer.prepare_type_init()
    starts = np.full((len(trainer.start_runs), trainer.data.n_cells), -1)
    starts[:, trainer.train_rows.cpu().numpy()] = trainer.start_runs
    return starts


def initial_partition(model):
    """(cells,) the category of the partition the first arm's type head started from (:func:`arm_starts`'
    first), -1 for cells it does not cover; None for a random start."""
    starts = arm_starts(model)
    return None if starts is None else starts[0]


def arm_start_aris(starts, labels) -> list[float] | None:
    """Each arm's start ARI against ``labels`` (cells,) on the cells the starts cover, from :func:`arm_starts`:
    the counterpart of a final ARI averaged over the arms (the arms start from different Leiden runs)."""
    from cplmix_explorer.analysis.metrics import compare_to_labels

    if starts is None:
        return None
    covered = starts[0] >= 0
    labels = np.asarray(labels)[covered]
    return [float(compare_to_labels(start[covered], labels)["ari"]) for start in starts]


def initial_partition_scores(model, labels: str, start=None) -> dict:
    """ACC, ARI and NMI against ``obs[labels]`` of the partition the first arm's type head started from
    (:func:`initial_partition`, or ``start`` when already computed; NaN for a random start), on the training
    cells it covers: what the objective's refinement started from."""
    import numpy as np

    from cplmix_explorer.analysis.metrics import compare_to_labels

    start = initial_partition(model) if start is None else start
    if start is None:
        return {"init_acc": float("nan"), "init_ari": float("nan"), "init_nmi": float("nan")}
    covered = start >= 0
    scores = compare_to_labels(start[covered], np.asarray(model.adata.obs[labels])[covered])
    return {f"init_{key}": float(scores[key]) for key in ("acc", "ari", "nmi")}


def config_option(text: str) -> tuple[str, object]:
    """'name=value' -> (name, value) with the value parsed as JSON when it can be (true, 0.5, 3), else text
    (the ``--set`` option of the quality benchmarks)."""
    name, separator, value = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"expected OPTION=VALUE, got {text!r}")
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value


def single_run_parser(description: str, *, steps: int = 3000) -> argparse.ArgumentParser:
    """The options every single-run benchmark on the simulator takes: --steps, --seed, --threads (torch CPU
    threads, default 1) and --set OPTION=VALUE (any CplMixConfig option, repeatable)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", type=config_option, action="append", default=[], metavar="OPTION=VALUE")
    return parser


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, path)


def write_results(out: Path, data: dict, lines: list[str]) -> None:
    """A benchmark's results: ``out``.json (``data``, with the machine under "machine") and ``out``.md (``lines``,
    printed too), each written atomically."""
    write_atomic(out.with_suffix(".json"), json.dumps(data, indent=1))
    write_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_report(out: Path, data: dict, lines: list[str]) -> None:
    """``out``.json (the data) and ``out``.md (the markdown lines), each written atomically; prints the markdown."""
    text = "\n".join(lines) + "\n"
    write_json(out.with_suffix(".json"), data)
    write_atomic(out.with_suffix(".md"), text)
    print(text, end="")
