"""A training run in a folder: what ``cplmix train`` / ``cplmix evaluate`` and the app's train button do.

RUN_DIR/
    run.json                 data source, configuration, command, versions (written before training)
    checkpoint.safetensors   newest checkpoint (+ checkpoint.prev.safetensors, the one before)
    metrics.json             final evaluation and the loss history (per log interval)
    result.h5ad              the input's X, obs and var plus the results (obs / obsm / uns), the map as X_umap
    map.npy, map.json        the 2-D map of the cells (UMAP of types and states), kept for the app and result.h5ad
Every file is written atomically. Inputs are validated before the folder is created, so a user mistake
leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ..api import CplMixVAE
from ..config import CplMixConfig, PruningOptions, latent_width, neighbor_components
from ..data.io import read_data, write_h5ad
from ..data.memory import check_training_memory, estimate_training_memory, h5ad_shape, should_read_backed
from ..errors import CplmixError
from ..files import METRICS_FILE, RESULT_FILE, RUN_FILE, atomic_write_bytes
from ..model.augmenters import augmenter_for
from ..train.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME, load_run_checkpoint
from ..device import resolve_device
from ..train.engine import TrainingResult, planned_steps
from ..train.events import TrainingControl
from .pruning import prune
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


def _never_checkpointed(run_dir: Path) -> bool:
    """A run folder that holds run.json but no checkpoint: its run stopped (was killed) before the first one."""
    return (run_dir / RUN_FILE).exists() and not (run_dir / CHECKPOINT_NAME).exists() and not (run_dir / PREVIOUS_NAME).exists()


#: Options a resumed run takes from the resuming command when it gives them (they decide where and how fast
#: it runs, not what it learns); every other option is the run's own.
EXECUTION_OPTIONS = ("device", "threads")


def _execution_options_of(given: CplMixConfig | None, saved: CplMixConfig) -> CplMixConfig:
    """``saved`` with the device of ``given`` and its thread count when ``given`` sets one."""
    if given is None:
        return saved
    return saved.update(**{name: getattr(given, name) for name in EXECUTION_OPTIONS if getattr(given, name) is not None})


def check_run_dir_free(run_dir: Path) -> None:
    if (run_dir / CHECKPOINT_NAME).exists() or (run_dir / PREVIOUS_NAME).exists() or (run_dir / RUN_FILE).exists():
        raise CplmixError(f"'{run_dir}' already holds a run; pass --resume to continue it or choose another --out")
    if run_dir.exists() and not run_dir.is_dir():
        raise CplmixError(f"'{run_dir}' exists and is not a folder")


def open_training_data(source, config: CplMixConfig, check_memory: bool = True):
    """The AnnData of ``source`` for a run with ``config``: an ``.h5ad`` file is read backed when
    ``config.backed`` says so or (unset) when its X is large (data.memory.should_read_backed), and, with
    ``check_memory``, refused with one line before anything is loaded when the run's estimated memory
    (data.memory.estimate_training_memory, from the file's header) exceeds what is available."""
    if isinstance(source, AnnData) or not str(os.fspath(source)).lower().endswith(".h5ad"):
        return read_data(source)
    adata = read_data(source, backed=True)  # checks the file; loads obs and var only
    shape = h5ad_shape(adata.filename, config.layer)
    if shape is None:  # no such matrix: validation of the file read as usual says what is missing
        adata.file.close()
        return read_data(source)
    backed = should_read_backed(shape, config.backed)
    if check_memory:
        on_gpu = resolve_device(config.device).type == "cuda"
        estimate = estimate_training_memory(shape, config.n_genes, backed=backed, on_gpu=on_gpu, n_arms=config.n_arms,
                                            state_dim=config.state_dim, bottleneck_dim=latent_width(config),
                                            components=neighbor_components(config), n_types=config.n_types)
        check_training_memory(estimate, config.n_genes, on_gpu)
    if backed:
        return adata
    try:
        return read_data(source)
    finally:
        adata.file.close()


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
    reserved_cores: int = 0,
    prepared=None,
) -> RunOutcome:
    """Train a model on ``source`` into ``run_dir`` (or continue it with ``resume``) and write its outputs.

    ``on_model(model)`` is called once the model exists, before training starts (the app uses it to
    subscribe to the model's events). With ``distributed`` (torchrun) every process trains and only rank 0
    writes files. ``reserved_cores``: cores left to other work when the ``threads`` option is unset (the app
    keeps one for its server). ``resume`` on a folder whose run never reached its first checkpoint (run.json
    only) starts that run afresh with its recorded configuration, and a warning says so. ``prepared``: the
    data of ``source`` as :func:`~cplmix_explorer.api.prepare_for_model` made it for ``config`` (used as it
    is, so that a caller that needs it too prepares the data once).
    """
    run_dir = Path(run_dir)
    restarting = resume and distributed is None and _never_checkpointed(run_dir)
    if restarting:
        recorded = read_run_info(run_dir).get("config")
        fresh = CplMixConfig.from_dict(recorded) if recorded is not None else (config or CplMixConfig())
        warnings.warn(f"'{run_dir}' holds {RUN_FILE} but no checkpoint (the run stopped before its first one): "
                      "starting it afresh", stacklevel=2)
        config = _execution_options_of(config, fresh)
        resume = False  # run.json is rewritten below and kept if the new start fails
    if resume:
        run_info = read_run_info(run_dir) if (run_dir / RUN_FILE).exists() else {}
        checkpoint = load_run_checkpoint(run_dir)
        if Path(checkpoint.path).name == PREVIOUS_NAME and (run_dir / CHECKPOINT_NAME).exists():
            # keep the damaged file for inspection, out of the way of the next checkpoint rotation
            os.replace(run_dir / CHECKPOINT_NAME, run_dir / DAMAGED_NAME)
        config = _execution_options_of(config, CplMixConfig.from_dict(checkpoint.config))
        resolve_device(config.device)
        checkpoint.config = config.to_dict()
        adata = open_training_data(source, config)
        model = CplMixVAE.from_checkpoint(checkpoint, adata, device=config.device, prepared=prepared)
        model.reserved_cores = reserved_cores
        model.load_type_names(run_dir)  # the user's renames stay with the resumed run
    else:
        config = config.copy() if config is not None else CplMixConfig()
        if (distributed is None or distributed.is_main) and not restarting:
            check_run_dir_free(run_dir)
        if distributed is None:
            resolve_device(config.device)
        adata = open_training_data(source, config, check_memory=distributed is None)
        model = CplMixVAE(adata, config=config, _prepared=prepared)
        model.reserved_cores = reserved_cores
        augmenter_for(config, model.prepared, model.module.likelihood)  # a mismatched augmenter: refuse now
        run_info = {
            "data": data_source_text(source),
            "config": config.to_dict(),
            "command": command or [],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": sys.version.split()[0],
            "threads": model.training_threads(),
        }
        if model.dropped_empty_cells:
            run_info["dropped_empty_cells"] = model.dropped_empty_cells
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
        if not resume and not restarting and (distributed is None or distributed.is_main):
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
    metrics["threads"] = model.threads_used
    if model.dropped_empty_cells:
        metrics["dropped_empty_cells"] = model.dropped_empty_cells
    metrics["neighbours"] = model.neighbors  # which search found the neighbors, its recall against exact
    if result.restarts:
        metrics["nan_restarts"] = result.restarts
    metrics["history"] = history_summary(result, config.log_every)
    metrics["evaluations"] = [
        {"step": e.step, "mean_agreement": e.mean_agreement, "min_agreement": e.min_agreement, "validation_loss": e.validation_loss}
        for e in result.evaluations
    ]
    write_json(run_dir / METRICS_FILE, metrics)
    write_result_file(model, run_dir, {k: v for k, v in metrics.items() if k not in ("history", "evaluations")}, progress)
    return RunOutcome(model=model, result=result, metrics=metrics, run_dir=run_dir)


def write_result_file(model, run_dir: Path, metrics: dict, progress: bool = False) -> Path:
    """RUN_DIR/result.h5ad, readable as it is by scanpy and cellxgene: the input's X (the values as read, sparse
    stays sparse; a backed input is copied in row chunks), obs and var (``var['cplmix_model_gene']`` marks the
    model's genes), the results (obs / obsm / uns['cplmix']) and the run's 2-D map as ``obsm['X_umap']`` (or
    ``X_cplmix_pca`` for a run too small for UMAP). An input's own ``X_umap`` is kept as ``X_umap_input``."""
    source = model.adata
    layer = model.prepared.preprocessing.layer
    x_name = "X" if source.X is not None else f"layers['{layer}']"
    matrix = source.X if source.X is not None else source.layers[layer]
    var = source.var.copy()
    var["cplmix_model_gene"] = var.index.astype(str).isin(list(model.prepared.genes))
    backed = source.isbacked
    result = AnnData(X=None if backed else matrix, obs=source.obs.copy(), var=var)
    for key, value in source.obsm.items():
        if key.startswith("X_") and not key.startswith("X_cplmix"):
            result.obsm["X_umap_input" if key == "X_umap" else key] = value
    model.write_results(result, metrics=metrics)
    cell_map = model.cell_map(run_dir=run_dir, progress=progress)
    result.obsm["X_umap" if cell_map.method == "umap" else "X_cplmix_pca"] = cell_map.coordinates
    result.uns["cplmix"]["map"] = cell_map.info()
    transform = model.prepared.preprocessing.transform
    result.uns["cplmix"]["X"] = {
        "source": f"the input's {x_name}, unchanged",
        "model_input": (f"{x_name} of the model's genes, library-size normalised to "
                        f"{model.prepared.preprocessing.target_sum:g} per cell and log1p-transformed")
        if transform == "log1p_normalize" else f"{x_name} of the model's genes, as they are",
    }
    write_h5ad(run_dir / RESULT_FILE, result, matrix if backed else None)
    model.save_type_names(run_dir)  # the names result.h5ad shows, kept for the next opening of the run
    return run_dir / RESULT_FILE


def _var_frame(genes) -> pd.DataFrame:
    return pd.DataFrame(index=pd.Index(list(genes), name="gene"))


def load_run(run_dir: str | os.PathLike, source=None, device: str | None = None, prepared=None):
    """The trained model of a run folder on its data (``source`` overrides the data recorded in run.json;
    ``prepared``: that data already prepared with the run's genes, used as it is)."""
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
    config = CplMixConfig.from_dict(checkpoint.config)
    adata = open_training_data(source, config, check_memory=False)
    model = CplMixVAE.from_checkpoint(checkpoint, adata, device=device or "cpu", prepared=prepared)
    model.load_type_names(run_dir)  # the run's type names and the user's renames (type_names.json)
    return model


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
    write_result_file(model, run_dir, metrics, progress)
    return result, model


def evaluate_run(run_dir: str | os.PathLike, labels: str | None = None, source=None) -> dict:
    """ACC, ARI, NMI, KL (averaged across arms), consensus and K of a run's current (possibly pruned) model."""
    model = load_run(run_dir, source)
    return model.evaluate(labels or model.config.labels)

