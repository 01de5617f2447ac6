"""The development suite: the engine's defaults on every development dataset, against scanpy + Leiden at the
same K, in one table (issue 32). Defaults are decided on this table as a whole, never on one dataset.

    python benchmarks/quality_suite.py                                  # every dataset, seeds 0 1 2, 10,000 steps
    python benchmarks/quality_suite.py --datasets sim40 han2018_bladder --seeds 0 --steps 2000 --jobs 2
    python benchmarks/quality_suite.py --set lam=1.0 --out benchmarks/results/quality_suite_lam1
    python benchmarks/quality_suite.py --trace --set eval_every=500     # per-evaluation trace in every row
    python benchmarks/quality_suite.py --resume                         # skip runs already in the JSONL
    python benchmarks/quality_suite.py --report-only                    # a report from the JSONL's runs, none trained
    python benchmarks/quality_suite.py --quick                          # CI-sized smoke run (about a minute)

Datasets (K = the number of labels; every run is ``CplMixVAE(adata, n_types=K, seed=seed, steps=steps)`` with
the defaults otherwise, plus ``--set``):
- zeisel_classes / zeisel_subclasses: bundled ``zeisel2015``, obs 'class' (7) / 'subclass' (48, with '(none)');
- han2018_bladder: bundled mouse bladder (Microwell-seq), obs 'cell_type' (16 imbalanced types);
- mnist5k: bundled digits, obs 'digit' (10);
- sim10, sim40, sim120: ``cplmix_explorer.datasets.simulate`` (data seed 0) with 10 / 40 / 120 types whose
  sizes fall evenly from 900 to 30 cells (4,650 / 18,600 / 55,800 cells), 2,000 genes, 4 classes and the
  simulator's type-dependent two-dimensional state; ``--quick`` makes them 4 / 6 / 8 types of 90 to 30 cells
  and 400 genes, and keeps 600 random cells of each bundled dataset.

Per run (one JSONL row, appended as the run finishes: ``<out>.jsonl``; its ``setup``: the data, every option,
the trace flag, which ``--resume`` matches, :func:`trained_as_asked`): ACC, ARI, NMI (mean over arms) and the
consensus type's ARI; the arms' mean agreement at the end; categories used at the end (consensus type, and per
arm); categories of the start partition, and how many of them were merged (start categories whose cells'
majority category at the end is shared with another start category); the start partition's ARI; the median of
``obs['cplmix_confidence']`` (the arms' mean max q(c|x)); on simulated sets the median within-type |Spearman
rho| of the inferred vs the true state; the training time. ``--trace`` adds every evaluation's per-arm and
consensus ARI, agreement (per category), categories used per arm and held-out objective
(``cplmix_explorer.analysis.trace``).

scanpy + Leiden at the same K (``leiden_baseline.standard_pipeline``: normalize_total 1e4, log1p, 2,000 HVG,
scale, PCA 50, kNN 15, resolution bisected to K; images as the engine's data path gives them, deskewed, without
normalisation) is computed once per dataset and seed and cached in ``quality_suite_leiden.json`` next to
``--out``. The report ``<out>.{json,md}`` gives mean +- sd over seeds per dataset and the mean rank of
cpl-mixVAE and Leiden over the datasets (by mean ARI; 1 = best). Needs scanpy (the ``test`` extra).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, config_option, machine, write_json, write_report  # noqa: E402

DEFAULT_STEPS = 10000
QUICK_STEPS = 30
QUICK_CELLS = 600  # --quick: cells kept of each bundled dataset
SIMULATED_GENES = 2000
SIMULATED_CLASSES = 4
LARGEST_TYPE, SMALLEST_TYPE = 900, 30


@dataclass(frozen=True)
class Dataset:
    """A development dataset: a bundled one (``bundled``) or a simulated one (``types`` > 0)."""

    name: str
    labels: str
    bundled: str | None = None
    types: int = 0
    quick_types: int = 0

    def simulation(self, quick: bool) -> dict:
        """The simulator's arguments (simulated datasets only)."""
        n_types = self.quick_types if quick else self.types
        largest = 3 * SMALLEST_TYPE if quick else LARGEST_TYPE
        n_genes = 400 if quick else SIMULATED_GENES
        sizes = np.round(np.linspace(largest, SMALLEST_TYPE, n_types)).astype(int).tolist()
        n_ieg, n_hkg, per_class = (40, 40, 10) if quick else (80, 200, 30)
        # type markers take what the other programs leave, up to the simulator's 20, keeping >= 200 background genes
        spare = n_genes - SIMULATED_CLASSES * per_class - n_ieg - n_hkg - 200
        return {"n_genes": n_genes, "n_types": n_types, "n_classes": SIMULATED_CLASSES, "type_sizes": sizes,
                "markers_per_type": min(20, spare // n_types), "markers_per_class": per_class,
                "n_ieg": n_ieg, "n_hkg": n_hkg, "seed": 0}

    def load(self, quick: bool):
        from cplmix_explorer import datasets

        if self.bundled is not None:
            adata = datasets.load(self.bundled)
            if quick and adata.n_obs > QUICK_CELLS:  # a fixed random subset of the cells
                keep = np.sort(np.random.default_rng(0).choice(adata.n_obs, QUICK_CELLS, replace=False))
                adata = adata[keep].copy()
                adata.obs[self.labels] = adata.obs[self.labels].astype(str)  # only the labels present
            return adata
        return datasets.simulate(**self.simulation(quick))

    def n_types(self, quick: bool) -> int:
        """K: the number of labels (without simulating the data)."""
        if self.types:
            return self.quick_types if quick else self.types
        return n_labels(self.load(quick), self.labels)

    def key(self, quick: bool) -> str:
        """Names the data exactly (cache and resume key)."""
        spec = self.simulation(quick) if self.types else {"bundled": self.bundled, "cells": QUICK_CELLS if quick else "all"}
        return f"{self.name} " + json.dumps({**spec, "labels": self.labels}, sort_keys=True)


DATASETS = {d.name: d for d in [
    Dataset("zeisel_classes", "class", bundled="zeisel2015"),
    Dataset("zeisel_subclasses", "subclass", bundled="zeisel2015"),
    Dataset("han2018_bladder", "cell_type", bundled="han2018_bladder"),
    Dataset("mnist5k", "digit", bundled="mnist5k"),
    Dataset("sim10", "true_type", types=10, quick_types=4),
    Dataset("sim40", "true_type", types=40, quick_types=6),
    Dataset("sim120", "true_type", types=120, quick_types=8),
]}


def n_labels(adata, labels: str) -> int:
    return int(adata.obs[labels].dropna().nunique())


def run_config(n_types: int, dataset: Dataset, seed: int, steps: int, overrides: dict) -> dict:
    """The full configuration of a run (every option, the defaults included: a change of default is a new run)."""
    from cplmix_explorer.config import CplMixConfig

    config = CplMixConfig().update(n_types=n_types, seed=seed, steps=steps, labels=dataset.labels, **overrides)
    return {k: v for k, v in config.to_dict().items() if k != "device"}


def run_key(data_key: str, config: dict, trace: bool) -> str:
    text = json.dumps({"data": data_key, "config": config, "trace": trace}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def as_stored(config: dict) -> dict:
    """A configuration as a JSONL row holds it (tuples as lists), so that a stored one compares equal."""
    return json.loads(json.dumps(config, default=str))


def trained_as_asked(row: dict, data_key: str, config: dict, trace: bool) -> bool:
    """Whether a finished JSONL row is the run asked for. A row that records its set-up matches when
    its data and trace do and its options equal the asked ones, an option newer than the row taking the value
    that reproduces the behaviour before it existed (the rule checkpoints follow): adding an option does not
    orphan the runs before it, while changing a default still makes a new run. Older rows match by key."""
    setup = row.get("setup")
    if setup is None:
        return row.get("key") == run_key(data_key, config, trace)
    from cplmix_explorer.train.checkpoint import OPTIONS_OLDER_CHECKPOINTS_LACK

    recorded = {**as_stored(OPTIONS_OLDER_CHECKPOINTS_LACK), **setup["config"]}
    return setup["data"] == data_key and setup["trace"] == trace and recorded == as_stored(config)


def merged_start_categories(start: np.ndarray, end: np.ndarray) -> int:
    """Start categories that share the end category most of their cells have with another start category:
    how many types training merged away (0 when every start category keeps one of its own)."""
    covered = start >= 0
    start, end = start[covered], end[covered]
    majority = [np.bincount(end[start == category]).argmax() for category in np.unique(start)]
    return int(len(majority) - len(set(majority)))


def run_one(name: str, seed: int, steps: int, overrides: dict, quick: bool, trace: bool, threads: int) -> dict:
    """Train and score one run (in a worker process with ``--jobs``); returns its JSONL row. A run that fails
    (e.g. a non-finite loss) gives a row with its ``error`` instead of ending the suite; --resume redoes it."""
    try:
        return _run_one(name, seed, steps, overrides, quick, trace, threads)
    except Exception as error:  # noqa: BLE001 - recorded in the row and the report
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        return {"dataset": name, "seed": seed, "error": f"{type(error).__name__}: {message}"}


def _run_one(name: str, seed: int, steps: int, overrides: dict, quick: bool, trace: bool, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from _common import arm_start_aris, arm_starts, initial_partition_scores
    from cplmix_explorer import CplMixVAE
    from cplmix_explorer.train.events import TrainingFinished, TrainingStarted

    dataset = DATASETS[name]
    started, cpu = time.perf_counter(), time.process_time()
    adata = dataset.load(quick)
    config = run_config(n_labels(adata, dataset.labels), dataset, seed, steps, overrides)
    model = CplMixVAE(adata, config=_config({**config, "threads": threads}))  # the config would take every core
    recorder = None
    if trace:
        from cplmix_explorer.analysis.trace import EvaluationTrace

        recorder = EvaluationTrace(model.module, model.prepared, adata.obs[dataset.labels], seed=seed).attach(model.events)
    loop_cpu = {}  # CPU seconds at the start and the end of the step loop (after the set-up: walks, start partition)
    model.events.subscribe(lambda event: loop_cpu.setdefault(type(event).__name__, time.process_time())
                           if isinstance(event, (TrainingStarted, TrainingFinished)) else None)
    training, training_cpu = time.perf_counter(), time.process_time()
    result = model.train(progress=False)
    train_seconds, train_cpu_seconds = time.perf_counter() - training, time.process_time() - training_cpu
    steps_cpu = loop_cpu["TrainingFinished"] - loop_cpu["TrainingStarted"]
    metrics = model.evaluate()
    inference = model.predict()
    starts = arm_starts(model)
    start = None if starts is None else starts[0]
    row = {
        "dataset": name, "seed": seed, "steps": int(model.step), "k": int(model.module.n_types),
        "n_cells": int(adata.n_obs), "genes_used": int(model.prepared.n_genes), "augment": model.augment_used,
        "options": overrides,
        "acc": float(metrics["acc"]), "ari": float(metrics["ari"]), "nmi": float(metrics["nmi"]),
        "consensus_ari": float(metrics["consensus_type"]["ari"]),
        "agreement": metrics["consensus"],
        "categories_used": int(metrics["k_used"]),
        "categories_used_per_arm": [int(len(np.unique(arm))) for arm in inference.type_per_arm],
        "start_categories": None if start is None else int(len(np.unique(start[start >= 0]))),
        "start_categories_merged": None if start is None else merged_start_categories(start, inference.consensus_type),
        "start_categories_held_from_first_run": len((model.type_init or {}).get("held_from_first_run", [])),
        **initial_partition_scores(model, dataset.labels, start=start),
        "init_ari_per_arm": arm_start_aris(starts, adata.obs[dataset.labels]),
        "confidence_median": float(np.median(inference.consensus_confidence)),  # obs['cplmix_confidence']
        "state_rho_median": None,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,  # on a shared machine the budget figure (1 thread: ~ wall alone)
        # the set-up before the first step, and the steps: a budget is setup + steps x step_cpu_ms
        "setup_cpu_seconds": train_cpu_seconds - steps_cpu,
        "step_cpu_ms": 1000 * steps_cpu / max(result.step, 1),
        "steps_per_second": result.steps_per_second,
    }
    if "simulation" in adata.uns:
        from simulator_quality import program_rho_medians

        from cplmix_explorer.data.simulate import state_recovery

        recovery = state_recovery(adata, inference.state_mean)  # once, for both figures
        row["state_rho_median"] = float(recovery["best_abs_rho"].median())
        row.update({f"state_rho_{program}_median": value for program, value in program_rho_medians(recovery).items()})
    if recorder is not None:
        recorder.detach()
        row["trace"] = recorder.rows
    row["run_seconds"] = time.perf_counter() - started
    row["run_cpu_seconds"] = time.process_time() - cpu
    return row


def _config(values: dict):
    from cplmix_explorer.config import CplMixConfig

    return CplMixConfig().update(**values)


def leiden_one(name: str, quick: bool, seeds: list[int]) -> dict:
    """scanpy + Leiden at K on the standard pipeline, per seed (in a worker process with ``--jobs``); a failure
    gives ``{"error": ...}`` (not cached) instead of ending the suite."""
    try:
        return _leiden_one(name, quick, seeds)
    except Exception as error:  # noqa: BLE001 - recorded in the report
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        return {"error": f"{type(error).__name__}: {message}"}


def _leiden_one(name: str, quick: bool, seeds: list[int]) -> dict:
    from leiden_baseline import leiden_scores, standard_pipeline

    dataset = DATASETS[name]
    started, cpu = time.perf_counter(), time.process_time()
    adata = dataset.load(quick)
    as_is = "image_shape" in adata.uns
    if as_is:  # the pixels as the engine's data path gives them (deskewed)
        import anndata

        from cplmix_explorer.config import CplMixConfig
        from cplmix_explorer.data.preprocess import prepare

        prepared = prepare(adata, CplMixConfig(n_types=n_labels(adata, dataset.labels)))
        adata = anndata.AnnData(X=np.asarray(prepared.matrix), obs=adata.obs[[dataset.labels]])
    graph, pipeline = standard_pipeline(adata, as_is=as_is)
    runs = leiden_scores(graph, adata.obs[dataset.labels].astype(str), seeds)
    return {"pipeline": pipeline + (" (deskewed pixels)" if as_is else ""), "genes_used": int(graph.n_vars),
            "runs": {str(run["seed"]): run for run in runs}, "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu}


def mean_sd(values) -> dict | None:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return None
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "n": len(values)}


SUMMARY_KEYS = ("ari", "acc", "nmi", "consensus_ari", "agreement", "categories_used", "start_categories",
                "start_categories_merged", "init_ari", "init_ari_arms", "confidence_median", "state_rho_median", "state_rho_activity_median", "train_seconds", "train_cpu_seconds",
                "setup_cpu_seconds", "step_cpu_ms")


def summary_value(row: dict, key: str):
    """A row's figure for the summary; ``init_ari_arms`` is the mean of the arms' start ARIs (rows from before
    they were recorded have none)."""
    if key == "init_ari_arms":
        arms = row.get("init_ari_per_arm")
        return float(np.mean(arms)) if arms else None
    return row.get(key)


def summarize(rows: list[dict], leiden: dict, names: list[str]) -> dict:
    table = {}
    for name in names:
        failed = [row for row in rows if row["dataset"] == name and "error" in row]
        runs = [row for row in rows if row["dataset"] == name and "error" not in row]
        entry = {"failed_seeds": sorted(row["seed"] for row in failed),"k": runs[0]["k"] if runs else None, "n_cells": runs[0]["n_cells"] if runs else None,
                 "seeds": sorted(row["seed"] for row in runs),
                 **{key: mean_sd([summary_value(row, key) for row in runs]) for key in SUMMARY_KEYS}}
        entry["seeds_with_merged_start_categories"] = sum(1 for row in runs if (row.get("start_categories_merged") or 0) > 0)
        baseline = leiden.get(name)
        for key in ("ari", "acc", "nmi", "k"):
            entry[f"leiden_{key}"] = mean_sd([run[key] for run in baseline["runs"].values()]) if baseline else None
        table[name] = entry
    # rank of the two methods on each dataset by mean ARI (1 = better, ties share 1.5), then the mean over datasets
    ranks = {"cpl-mixVAE": [], "Leiden": []}
    for entry in table.values():
        if entry["ari"] and entry["leiden_ari"]:
            ours, theirs = entry["ari"]["mean"], entry["leiden_ari"]["mean"]
            rank = 1.5 if ours == theirs else (1.0 if ours > theirs else 2.0)
            entry["rank"] = rank
            ranks["cpl-mixVAE"].append(rank)
            ranks["Leiden"].append(3.0 - rank)
    mean_rank = {method: (float(np.mean(values)) if values else None) for method, values in ranks.items()}
    return {"datasets": table, "mean_rank": mean_rank, "ranked_datasets": len(ranks["Leiden"])}


def fmt(stat: dict | None, digits: int = 3) -> str:
    if not stat:
        return "-"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}" if stat["n"] > 1 else f"{stat['mean']:.{digits}f}"


def start_ari(entry: dict) -> str:
    """The start ARI column: the first arm's start, then the mean of the arms' starts."""
    arms = entry.get("init_ari_arms")
    return fmt(entry["init_ari"]) + (f" ({fmt(arms)})" if arms else "")


def state_rho(entry: dict) -> str:
    """The state column: both states' best, then the activity state's alone."""
    if not entry.get("state_rho_median"):
        return "-"
    activity = entry.get("state_rho_activity_median")
    return fmt(entry["state_rho_median"], 2) + (f" ({fmt(activity, 2)})" if activity else "")


def markdown(report: dict) -> list[str]:
    summary = report["summary"]
    lines = [
        "# Development suite: the defaults on every development dataset, against scanpy + Leiden at the same K",
        "",
        f"Command: `{report['machine']['command']}`  ",
        f"{report['machine']['date']}, {report['machine']['host_cpu']}, torch {report['machine']['torch']}, "
        f"{report['threads']} torch thread(s) per run, {report['jobs']} run(s) at a time; {report['steps']} steps; "
        f"seeds {' '.join(map(str, report['seeds']))}"
        + (f"; options {json.dumps(report['options'])}" if report["options"] else "; the engine's defaults")
        + (" (--quick: small simulated sets)" if report["quick"] else "") + ".",
        "",
        "Mean ± sd over seeds. ARI / ACC / NMI: mean over arms; agreement: the arms' mean agreement at the end; "
        "used: categories the consensus type uses at the end; start: categories of the start partition (merged: "
        "how many training merged into another); start ARI: the first arm's start partition's (in brackets the "
        "mean of the arms' starts, the counterpart of the ARI, a mean over arms); confidence: median of "
        "obs['cplmix_confidence']; state |rho|: median within-type |Spearman rho| of the inferred vs the true "
        "state (simulated sets: the better of the activity and metabolic states per type; in brackets the "
        "activity state's alone); s/run: training seconds per run, wall clock (CPU seconds of the run's process).",
        "",
        "| dataset | K | cells | seeds | ARI | ACC | NMI | agreement | used | start (merged) | start ARI | confidence "
        "| state abs rho (activity) | Leiden ARI | Leiden ACC | s/run (CPU) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in summary["datasets"].items():
        if not e["seeds"]:
            lines.append(f"| {name} | | | | (no runs) |" + " |" * 11)
            continue
        merged = fmt(e["start_categories_merged"], 1)
        start = f"{fmt(e['start_categories'], 1)} ({merged})"
        lines.append(
            f"| {name} | {e['k']} | {e['n_cells']:,} | {' '.join(map(str, e['seeds']))} | {fmt(e['ari'])} | {fmt(e['acc'])} | {fmt(e['nmi'])} | "
            f"{fmt(e['agreement'])} | {fmt(e['categories_used'], 1)} | {start} | {start_ari(e)} | "
            f"{fmt(e['confidence_median'])} | {state_rho(e)} | {fmt(e['leiden_ari'])} | "
            f"{fmt(e['leiden_acc'])} | {fmt(e['train_seconds'], 0)} ({fmt(e['train_cpu_seconds'], 0)}) |"
        )
    timed = [(name, e) for name, e in summary["datasets"].items() if e["seeds"]]
    if timed:
        lines += ["", f"Time per run (CPU seconds of one process, {report['threads']} torch thread(s); the set-up is the "
                  "neighbor walks and the start partition; a run costs about set-up + steps x ms/step):", "",
                  "| dataset | set-up CPU s | CPU ms/step | CPU min at 10,000 steps (estimate) | Leiden baseline CPU s |",
                  "|---|---|---|---|---|"]
        for name, e in timed:
            setup, step = e["setup_cpu_seconds"]["mean"], e["step_cpu_ms"]["mean"]
            leiden = (report["leiden"].get(name) or {}).get("cpu_seconds")
            lines.append(f"| {name} | {setup:.0f} | {step:.0f} | {(setup + 10 * step) / 60:.1f} | "
                         f"{'-' if leiden is None else f'{leiden:.0f}'} |")
    for row in report["runs"]:
        if "error" in row:
            lines.append(f"\n{row['dataset']}, seed {row['seed']} failed: {row['error']}")
    if report.get("not_run"):
        lines.append(f"\nNot run (--report-only: not in the JSONL with this configuration): {', '.join(report['not_run'])}.")
    for name, error in report.get("leiden_errors", {}).items():
        lines.append(f"\n{name}: the scanpy + Leiden baseline failed: {error}")
    rank = summary["mean_rank"]
    if summary["ranked_datasets"]:
        lines += ["", f"Mean rank by ARI over {summary['ranked_datasets']} datasets (1 = best of the two): "
                  f"cpl-mixVAE {rank['cpl-mixVAE']:.2f}, scanpy + Leiden {rank['Leiden']:.2f}."]
    traced = [row for row in report["runs"] if row.get("trace")]
    if traced:
        lines += ["", "Trace (first traced seed per dataset; consensus ARI / arms' ARI / agreement / categories used "
                  "per arm / held-out objective):", ""]
        for name in summary["datasets"]:
            row = next((r for r in traced if r["dataset"] == name), None)
            if row is None:
                continue
            lines += [f"{name}, seed {row['seed']}:", "", "| step | consensus ARI | arm ARI | agreement | used per arm | held-out |",
                      "|---|---|---|---|---|---|"]
            points = row["trace"]
            if len(points) > 11:
                points = [points[int(round(i))] for i in np.linspace(0, len(points) - 1, 11)]
            for point in points:
                agreement = "-" if point["mean_agreement"] is None else f"{point['mean_agreement']:.3f}"
                held_out = "-" if point["validation_loss"] is None else f"{point['validation_loss']:.1f}"
                lines.append(f"| {point['step']} | {point['consensus_ari']:.3f} | "
                             f"{' / '.join(f'{a:.3f}' for a in point['arm_ari'])} | {agreement} | "
                             f"{' / '.join(map(str, point['categories_used_per_arm']))} | {held_out} |")
            lines.append("")
    return lines


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a killed run: that run is redone
            continue
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS), metavar="DATASET",
                        help=f"datasets to run (default: all: {', '.join(DATASETS)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help=f"training steps (default {DEFAULT_STEPS}; --quick {QUICK_STEPS})")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run (default 1)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    parser.add_argument("--set", nargs="+", action="extend", type=config_option, default=[], metavar="OPTION=VALUE",
                        help="any CplMixConfig option for every run (repeatable)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report path without suffix (default benchmarks/results/quality_suite, --quick: quality_suite_quick)")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in <out>.jsonl with the same configuration (without it the JSONL starts empty)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the report from the runs already in <out>.jsonl with the same configuration "
                        "(and the cached baselines), listing the asked-for runs that are not there")
    parser.add_argument("--trace", action="store_true", help="record every evaluation against the labels (see the docstring)")
    parser.add_argument("--quick", action="store_true",
                        help=f"CI-sized smoke run: {QUICK_STEPS} steps, small simulated sets, {QUICK_CELLS} cells of the others, the first seed")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.threads < 1 or args.jobs < 1:
        parser.error("--threads and --jobs must be at least 1")
    from cplmix_explorer.config import CplMixConfig
    from cplmix_explorer.errors import CplmixError

    args.set = dict(args.set)
    fixed = sorted(set(args.set) & {"n_types", "seed", "steps", "labels"})
    if fixed:
        parser.error(f"--set cannot change {', '.join(fixed)} (the suite sets them per run)")
    try:
        CplMixConfig().update(**args.set)
    except CplmixError as error:
        parser.error(f"--set: {error}")
    if args.quick:
        args.seeds = args.seeds[:1]
    args.steps = args.steps or (QUICK_STEPS if args.quick else DEFAULT_STEPS)
    args.out = args.out or RESULTS / ("quality_suite_quick" if args.quick else "quality_suite")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    from tqdm import tqdm

    names = list(dict.fromkeys(args.datasets))
    jsonl = args.out.with_suffix(".jsonl")
    cache_path = args.out.parent / ("quality_suite_leiden_quick.json" if args.quick else "quality_suite_leiden.json")
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    finished_rows = [row for row in read_jsonl(jsonl) if "error" not in row] if args.resume or args.report_only else []
    if not (args.resume or args.report_only):
        jsonl.write_text("")
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}

    # the runs to do: those no finished row was trained as asked (a changed default makes a new run)
    todo, rows, described = [], [], {}
    for name in names:
        dataset = DATASETS[name]
        data_key, n_types = dataset.key(args.quick), dataset.n_types(args.quick)
        for seed in args.seeds:
            config = run_config(n_types, dataset, seed, args.steps, args.set)
            key = run_key(data_key, config, args.trace)
            found = next((row for row in finished_rows if trained_as_asked(row, data_key, config, args.trace)), None)
            if found is None:
                todo.append((name, seed, key))
                described[key] = {"data": data_key, "trace": args.trace, "config": as_stored(config)}
            else:
                rows.append(found)
    leiden_todo = [name for name in names
                   if not all(str(seed) in cache.get(DATASETS[name].key(args.quick), {}).get("runs", {}) for seed in args.seeds)]
    missing = []
    if args.report_only:  # report what is there
        missing = [f"{name} seed {seed}" for name, seed, _ in todo]
        missing += [f"{name} (scanpy + Leiden) seed {seed}" for name in leiden_todo for seed in args.seeds
                    if str(seed) not in cache.get(DATASETS[name].key(args.quick), {}).get("runs", {})]
        todo, leiden_todo = [], []

    started = time.perf_counter()
    leiden_errors: dict[str, str] = {}
    with tqdm(total=len(todo) + len(leiden_todo), desc="quality suite", unit="job") as bar:
        def finished(kind, name, key, result):
            if kind == "leiden" and "error" in result:
                leiden_errors[name] = result["error"]
            elif kind == "leiden":
                entry = cache.setdefault(DATASETS[name].key(args.quick), {"runs": {}})
                entry["runs"].update(result.pop("runs"))
                entry.update(result)
                # merged into the file as it is now: another suite may have cached other datasets meanwhile
                stored = json.loads(cache_path.read_text()) if cache_path.exists() else {}
                write_json(cache_path, {**stored, DATASETS[name].key(args.quick): entry})
            else:
                result.update(key=key, setup=described[key])
                rows.append(result)
                with jsonl.open("a") as handle:
                    handle.write(json.dumps(result, default=str) + "\n")
            bar.set_postfix_str(f"{kind} {name}")
            bar.update()

        jobs = [("leiden", name, None, (leiden_one, name, args.quick, args.seeds)) for name in leiden_todo]
        jobs += [("run", name, key, (run_one, name, seed, args.steps, args.set, args.quick, args.trace, args.threads))
                 for name, seed, key in todo]
        if args.jobs == 1:
            for kind, name, key, (function, *arguments) in jobs:
                finished(kind, name, key, function(*arguments))
        else:
            import multiprocessing

            with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(function, *arguments): (kind, name, key)
                           for kind, name, key, (function, *arguments) in jobs}
                for future in as_completed(futures):
                    finished(*futures[future], future.result())

    order = {(name, seed): i for i, (name, seed) in enumerate((n, s) for n in names for s in args.seeds)}
    rows = sorted((row for row in rows if (row["dataset"], row["seed"]) in order), key=lambda r: order[(r["dataset"], r["seed"])])
    leiden = {name: cache[DATASETS[name].key(args.quick)] for name in names
              if name not in leiden_errors and DATASETS[name].key(args.quick) in cache}
    leiden = {name: {**entry, "runs": {s: entry["runs"][s] for s in map(str, args.seeds) if s in entry["runs"]}}
              for name, entry in leiden.items()}
    report = {"machine": machine(), "steps": args.steps, "seeds": args.seeds, "options": args.set, "quick": args.quick,
              "threads": args.threads, "jobs": args.jobs, "trace": args.trace, "wall_seconds": time.perf_counter() - started,
              "datasets": {name: {"key": DATASETS[name].key(args.quick)} for name in names}, "not_run": missing,
              "summary": summarize(rows, leiden, names), "leiden": leiden, "leiden_errors": leiden_errors, "runs": rows}
    write_report(args.out, report, markdown(report))
    failed = [row for row in rows if "error" in row] + [{"dataset": name, "seed": "(Leiden baseline)", "error": error}
                                                       for name, error in leiden_errors.items()]
    if failed:
        print(f"quality_suite: error: {len(failed)} run(s) failed ({failed[0]['dataset']}, seed {failed[0]['seed']}: "
              f"{failed[0]['error']}); the report lists them", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
