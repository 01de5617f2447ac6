"""A training run in a folder: what ``cplmix train`` / ``cplmix evaluate`` and the app's train button do.

RUN_DIR/
    run.json                 data source, configuration, command, versions (written before training)
    checkpoint.safetensors   newest checkpoint (+ checkpoint.prev.safetensors, the one before)
    metrics.json             final evaluation and the loss history (per log interval)
    result.h5ad              the input obs plus results (obs / obsm / uns), var = the model's genes
Every file is written atomically. Inputs are validated before the folder is created, so a user mistake
leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ..config import CplMixConfig
from ..data.io import read_data
from ..errors import CplmixError
from ..model.augment import augmenter_for
from .checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME, atomic_write_bytes, load_run_checkpoint
from .engine import TrainingResult, planned_steps, resolve_device
from .events import TrainingControl

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
RESULT_FILE = "result.h5ad"
#: Where a resumed run moves a damaged newest checkpoint (the previous one was used instead).
DAMAGED_NAME = "checkpoint.damaged.safetensors"


def read_run_info(run_dir: Path) -> dict:
    """RUN_DIR/run.json, checked: a JSON object whose ``data`` is a string and whose ``config`` holds known
    options of valid types; anything else raises :class:`CplmixError` naming the problem."""
    path = run_dir / RUN_FILE
    try:
        info = json.loads(path.read_bytes())
    except OSError as error:
        raise CplmixError(f"cannot read '{path}': {error.strerror or error}") from None
    except (ValueError, RecursionError) as error:  # includes bad UTF-8 and bad JSON
        raise CplmixError(f"'{path}' is not valid JSON ({_first_line(error)})") from None
    if not isinstance(info, dict):
        raise CplmixError(f"'{path}' is not a JSON object")
    if "data" in info and not isinstance(info["data"], str):
        raise CplmixError(f"'{path}': 'data' is not a path or dataset name")
    if "config" in info:
        if not isinstance(info["config"], dict):
            raise CplmixError(f"'{path}': 'config' is not a JSON object")
        try:
            CplMixConfig.from_dict(info["config"])
        except CplmixError as error:
            raise CplmixError(f"'{path}' has an invalid configuration: {error}") from None
    return info


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def write_json(path: Path, payload: dict) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, default=_json_default) + "\n").encode())


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_h5ad(path: Path, adata: AnnData) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        adata.write_h5ad(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def data_source_text(source) -> str:
    """How run.json refers to the data: a bundled name, an absolute path, or 'in-memory'."""
    if isinstance(source, AnnData):
        return "in-memory"
    text = os.fspath(source)
    return str(Path(text).resolve()) if Path(text).exists() else text


def history_summary(result: TrainingResult | None, every: int) -> dict[str, list]:
    """The loss history averaged over blocks of ``every`` steps (what metrics.json keeps)."""
    if result is None or len(result.history_steps) == 0:
        return {}
    steps, values = result.history_steps, result.history_values
    blocks = (steps - 1) // every
    out: dict[str, list] = {"step": []}
    out.update({name: [] for name in result.metric_names})
    for block in np.unique(blocks):
        rows = blocks == block
        out["step"].append(int(steps[rows][-1]))
        for column, name in enumerate(result.metric_names):
            out[name].append(float(values[rows, column].mean()))
    return out


@dataclass
class RunOutcome:
    model: Any  # CplMixVAE
    result: TrainingResult
    metrics: dict
    run_dir: Path


def _remove_unstarted_run(run_dir: Path, created_folder: bool) -> None:
    """A new run that failed before its first checkpoint (a bad option found when training starts, an early
    non-finite loss) leaves nothing behind, so the same command can be run again once corrected."""
    if (run_dir / CHECKPOINT_NAME).exists() or (run_dir / PREVIOUS_NAME).exists():
        return
    (run_dir / RUN_FILE).unlink(missing_ok=True)
    if created_folder and run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


def check_run_dir_free(run_dir: Path) -> None:
    if (run_dir / CHECKPOINT_NAME).exists() or (run_dir / PREVIOUS_NAME).exists() or (run_dir / RUN_FILE).exists():
        raise CplmixError(f"'{run_dir}' already holds a run; pass --resume to continue it or choose another --out")
    if run_dir.exists() and not run_dir.is_dir():
        raise CplmixError(f"'{run_dir}' exists and is not a folder")


def train_run(
    source,
    run_dir: str | os.PathLike,
    config: CplMixConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    control: TrainingControl | None = None,
    on_model=None,
    command: list[str] | None = None,
    write_outputs_when_stopped: bool = True,
    distributed=None,
) -> RunOutcome:
    """Train a model on ``source`` into ``run_dir`` (or continue it with ``resume``) and write its outputs.

    ``on_model(model)`` is called once the model exists, before training starts (the app uses it to
    subscribe to the model's events). With ``distributed`` (torchrun) every process trains and only rank 0
    writes files.
    """
    from ..api import CplMixVAE

    run_dir = Path(run_dir)
    adata = read_data(source)
    if resume:
        run_info = read_run_info(run_dir) if (run_dir / RUN_FILE).exists() else {}
        checkpoint = load_run_checkpoint(run_dir)
        if Path(checkpoint.path).name == PREVIOUS_NAME and (run_dir / CHECKPOINT_NAME).exists():
            # keep the damaged file for inspection, out of the way of the next checkpoint rotation
            os.replace(run_dir / CHECKPOINT_NAME, run_dir / DAMAGED_NAME)
        saved = CplMixConfig.from_dict(checkpoint.config)
        if config is not None and config.device != saved.device:
            saved.update(device=config.device)
        config = saved
        resolve_device(config.device)
        model = CplMixVAE.from_checkpoint(checkpoint, adata, device=config.device)
    else:
        config = config.copy() if config is not None else CplMixConfig()
        if distributed is None or distributed.is_main:
            check_run_dir_free(run_dir)
        if distributed is None:
            resolve_device(config.device)
        model = CplMixVAE(adata, config=config)
        augmenter_for(config, model.prepared, model.module.likelihood)  # a mismatched augmenter: refuse now
        run_info = {
            "data": data_source_text(source),
            "config": config.to_dict(),
            "command": command or [],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": sys.version.split()[0],
        }
        if distributed is not None:
            run_info["processes"] = distributed.world_size
            distributed.barrier()  # every process has checked the folder before rank 0 creates it
        if distributed is None or distributed.is_main:
            created_folder = not run_dir.exists()
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / RUN_FILE, run_info)
    if on_model is not None:
        on_model(model)
    planned = planned_steps(config, model.prepared.n_cells)
    try:
        result = model.train(until_step=planned, progress=progress, control=control, run_dir=run_dir, distributed=distributed)
    except BaseException:
        if not resume and (distributed is None or distributed.is_main):
            _remove_unstarted_run(run_dir, created_folder)
        raise
    if distributed is not None and not distributed.is_main:
        return RunOutcome(model=model, result=result, metrics={"status": result.status}, run_dir=run_dir)
    if result.status != "completed" and not write_outputs_when_stopped:
        return RunOutcome(model=model, result=result, metrics={"status": result.status}, run_dir=run_dir)
    metrics = model.evaluate(config.labels)
    metrics["status"] = result.status
    metrics["steps_per_second"] = result.steps_per_second
    metrics["device"] = str(model.device)
    metrics["augment"] = model.augment_used
    if result.restarts:
        metrics["nan_restarts"] = result.restarts
    metrics["history"] = history_summary(result, config.log_every)
    metrics["evaluations"] = [
        {"step": e.step, "mean_agreement": e.mean_agreement, "min_agreement": e.min_agreement, "validation_loss": e.validation_loss}
        for e in result.evaluations
    ]
    write_json(run_dir / METRICS_FILE, metrics)
    write_result_file(model, run_dir, {k: v for k, v in metrics.items() if k not in ("history", "evaluations")})
    return RunOutcome(model=model, result=result, metrics=metrics, run_dir=run_dir)


def write_result_file(model, run_dir: Path, metrics: dict) -> Path:
    """RUN_DIR/result.h5ad: the input's obs plus the results; var holds the model's genes; X is not copied."""
    result = AnnData(obs=model.adata.obs.copy(), var=_var_frame(model.prepared.genes))
    result.obsm.update({k: v for k, v in model.adata.obsm.items() if k.startswith("X_") and not k.startswith("X_cplmix")})
    model.write_results(result, metrics=metrics)
    write_h5ad(run_dir / RESULT_FILE, result)
    return run_dir / RESULT_FILE


def _var_frame(genes) -> pd.DataFrame:
    return pd.DataFrame(index=pd.Index(list(genes), name="gene"))


def load_run(run_dir: str | os.PathLike, source=None, device: str | None = None):
    """The trained model of a run folder on its data (``source`` overrides the data recorded in run.json)."""
    from ..api import CplMixVAE

    run_dir = Path(run_dir)
    checkpoint = load_run_checkpoint(run_dir)
    if source is None:
        info_path = run_dir / RUN_FILE
        if not info_path.exists():
            raise CplmixError(f"'{run_dir}' has no {RUN_FILE}; pass the data explicitly")
        source = read_run_info(run_dir).get("data")
        if source is None:
            raise CplmixError(f"'{info_path}' does not name the data; pass the data explicitly")
        if source == "in-memory":
            raise CplmixError(f"the run in '{run_dir}' was trained on in-memory data; pass the data explicitly")
    return CplMixVAE.from_checkpoint(checkpoint, source, device=device or "cpu")


PRUNING_FILE = "pruning.json"


def prune_run(
    run_dir: str | os.PathLike,
    min_consensus: float | None = None,
    min_types: int | None = None,
    fine_tune_steps: int | None = None,
    progress: bool = True,
    source=None,
):
    """Prune a trained run in place: the pruned model becomes the run's checkpoint, the trajectory goes to
    RUN_DIR/pruning.json, and metrics.json / result.h5ad describe the pruned model. Options left None take
    their defaults from :class:`~cplmix_explorer.config.PruningOptions`."""
    from ..analysis.pruning import prune
    from ..config import PruningOptions

    defaults = PruningOptions()  # prune() checks the values (its messages name the CLI's flags)
    run_dir = Path(run_dir)
    model = load_run(run_dir, source)
    result = prune(
        model, min_consensus=defaults.min_consensus if min_consensus is None else min_consensus,
        min_types=defaults.min_types if min_types is None else min_types, fine_tune_steps=fine_tune_steps,
        progress=progress, run_dir=run_dir,
    )
    model.save(run_dir)
    write_json(run_dir / PRUNING_FILE, result.to_dict())
    metrics = model.evaluate(model.config.labels)
    metrics["pruning"] = {k: v for k, v in result.to_dict().items() if k != "trajectory"}
    previous = json.loads((run_dir / METRICS_FILE).read_text()) if (run_dir / METRICS_FILE).exists() else {}
    write_json(run_dir / METRICS_FILE, {**previous, **metrics})
    write_result_file(model, run_dir, metrics)
    return result, model


def evaluate_run(run_dir: str | os.PathLike, labels: str | None = None, source=None) -> dict:
    """ACC, ARI, NMI, KL (averaged across arms), consensus and K of a run's current (possibly pruned) model."""
    model = load_run(run_dir, source)
    return model.evaluate(labels or model.config.labels)

