"""The per-session state every view reads (Panel's "structure_data_store" pattern).

:class:`ExplorerState` holds the dataset, the trained model, its inference, the run folder and the status of
background work. Views take it as a ``param.ClassSelector`` and react to its parameters; they never compute
the model themselves. Background jobs (training, pruning) only publish events; :meth:`ExplorerState.poll`,
run by the session's periodic callback about once a second, drains them and updates the state in the
session's own thread, so Bokeh models are only ever touched there.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import queue
import tempfile
import threading
import time
import traceback
import uuid
import weakref
from pathlib import Path
from typing import Any

import pandas as pd
import panel as pn
from panel.io.callbacks import PeriodicCallback
import param
from anndata import AnnData

from ..analysis import traversal
from ..analysis.names import check_name, check_unique, resolve_type_index
from ..model.consensus import Consensus
from ..model.inference import Inference
from ..api import CplMixVAE
from ..config import CplMixConfig, PruningOptions, default_fine_tune_steps
from ..data.bundled import DATASETS
from ..data.bundled import load as load_bundled
from ..data.io import read_data
from ..data.validate import check_types_fit_cells, validate_anndata
from ..errors import CplmixError, describe_failure
from ..train.engine import resolve_device
from ..train.events import Evaluation, StepMetrics, TrainingFinished, TrainingStarted
from ..workflows.run import METRICS_FILE, load_run, read_run_info
from ..workflows.worker import ProcessPruning, ProcessTraining
from .jobs import BackgroundJob, JobEnded, JobQueued, JobRunning
from .live import LiveTraining
from .safety import DEFAULT_MAX_UPLOAD_MB, app_run_name, read_upload, resolve_data_path, resolve_run_folder

logger = logging.getLogger(__name__)

#: Every live ExplorerState and every model a session showed (the load test checks that closed sessions
#: leave none of them behind).
LIVE_STATES: weakref.WeakSet = weakref.WeakSet()
LIVE_MODELS: weakref.WeakSet = weakref.WeakSet()

STATUSES = ["idle", "queued", "training", "pruning", "completed", "stopped", "failed"]
#: Refresh period of the session's periodic callback, milliseconds.
POLL_PERIOD_MS = 1000

_cache_lock = threading.Lock()
_bundled_cache: dict[str, AnnData] = {}
_demo_cache: dict[str, CplMixVAE] = {}


def shared_bundled(name: str) -> AnnData:
    """A bundled dataset loaded once per process and shared read-only by all sessions (views never write
    into it; training writes its results into the run folder's own AnnData)."""
    with _cache_lock:
        if name not in _bundled_cache:
            _bundled_cache[name] = load_bundled(name)
        return _bundled_cache[name]


def shared_demo(run_dir: str | os.PathLike) -> CplMixVAE:
    """A shipped demo model (a run folder) loaded once per process onto its bundled data, with its inference
    computed; sessions share it read-only (training and pruning always work on a new model)."""
    key = str(Path(run_dir).resolve())
    with _cache_lock:
        if key not in _demo_cache:
            source = json.loads((Path(run_dir) / "run.json").read_text())["data"]
            data = _bundled_cache.get(source)
            if data is None and source in DATASETS:
                data = _bundled_cache[source] = load_bundled(source)
            model = load_run(run_dir, source=data if data is not None else source)
            model.predict()
            model.cell_map(run_dir=run_dir)  # the shipped map.npy, or computed once for every session
            _demo_cache[key] = model
        return _demo_cache[key]


class ExplorerState(param.Parameterized):
    """Dataset, model, inference, run folder and training status of one explorer session."""

    data_name = param.String(default="", doc="What the data is: a bundled name, a file name or an upload.")
    adata = param.ClassSelector(class_=AnnData, allow_None=True, doc="The dataset (cells x genes).")
    data_source = param.Parameter(default=None, doc="What training reads: a bundled name, a path or the AnnData.")
    config = param.ClassSelector(class_=CplMixConfig, doc="Training options (the CLI's configuration object).")
    model = param.ClassSelector(class_=CplMixVAE, allow_None=True, doc="The trained model shown by the views.")
    model_name = param.String(default="", doc="Where the model comes from (demo, run folder, notebook).")
    inference = param.ClassSelector(class_=Inference, allow_None=True, doc="The model's per-cell results.")
    run_dir = param.ClassSelector(class_=Path, allow_None=True, doc="The run folder of the model, if any.")

    status = param.Selector(default="idle", objects=STATUSES)
    status_message = param.String(default="")
    error = param.String(default="", doc="The last problem, one line, for the user.")
    metrics_tick = param.Integer(default=0, doc="Incremented when new training metrics arrived.")
    pruning_tick = param.Integer(default=0, doc="Incremented when a pruning round arrived.")
    names_tick = param.Integer(default=0, doc="Incremented when a type was renamed.")

    def __init__(self, *, data_dir: str | os.PathLike | None = None, runs_dir: str | os.PathLike | None = None,
                 max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, **params):
        params.setdefault("config", CplMixConfig())
        super().__init__(**params)
        self.data_dir = Path(data_dir).expanduser().resolve() if data_dir is not None else None
        self.runs_dir = Path(runs_dir).expanduser().resolve() if runs_dir is not None else None
        self.max_upload_bytes = int(max_upload_mb * 2**20)
        self.session_id = uuid.uuid4().hex[:12]
        self.live = LiveTraining()
        self.pruning_rounds: list[dict] = []
        self.pruning_result = None
        #: what the running (or last) pruning set out to do: start_k, min_types, min_consensus, fine_tune_steps
        self.pruning_plan: dict | None = None
        self._pruning_rounds_queue: queue.Queue | None = None
        self._session_renames: dict[int, str] = {}  # renames of a shared demo model, this session's only
        self.job: BackgroundJob | None = None
        self._callback = None
        self._poll_lock = threading.Lock()
        self._closed = False
        LIVE_STATES.add(self)
        self._close_with_session()

    def _close_with_session(self) -> None:
        """In a served app, closing the browser tab closes this state (stops its work, frees its memory)."""
        document = pn.state.curdoc
        if document is None or document.session_context is None:
            return
        reference = weakref.ref(self)

        def on_session_destroyed(session_context) -> None:
            state = reference()
            if state is not None:
                state.close()

        pn.state.on_session_destroyed(on_session_destroyed)

    # -- constructors -------------------------------------------------------------------------------------
    @classmethod
    def of(cls, source: Any = None, **kwargs) -> ExplorerState:
        """A state from what a notebook user has: a state, a CplMixVAE, a run folder, an AnnData, a bundled
        dataset name or an .h5ad path."""
        if isinstance(source, ExplorerState):
            return source
        state = cls(**kwargs)
        if source is None:
            return state
        if isinstance(source, CplMixVAE):
            state.config = source.config.copy()  # the form starts from the model's own options
            state.use_model(source, name="model from the notebook")
        elif isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
            state.open_run(source)
        elif isinstance(source, AnnData):
            state.use_data(source, "AnnData from the notebook")
        elif isinstance(source, (str, os.PathLike)) and str(source) in DATASETS:
            state.load_bundled(str(source))
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            state.use_data(read_data(path), path.name, source=str(path.resolve()))
        else:
            raise CplmixError(f"cannot explore a {type(source).__name__}: pass a CplMixVAE, a run folder, an AnnData or a dataset name")
        return state

    # -- data ---------------------------------------------------------------------------------------------
    @property
    def n_cells(self) -> int:
        return 0 if self.adata is None else int(self.adata.n_obs)

    @property
    def label_columns(self) -> list[str]:
        """obs columns usable as known labels: categorical or text with 2..1000 distinct values."""
        if self.adata is None:
            return []
        columns = []
        for name in self.adata.obs.columns:
            values = self.adata.obs[name]
            if name.startswith("cplmix_"):
                continue
            if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object or pd.api.types.is_string_dtype(values):
                if 2 <= values.nunique(dropna=True) <= 1000:
                    columns.append(str(name))
        return columns

    def use_data(self, adata: AnnData, name: str, source: Any = None) -> None:
        """Make ``adata`` the session's data; a model that does not fit it is put aside."""
        validate_anndata(adata)
        with param.parameterized.batch_call_watchers(self):
            self.adata = adata
            self.data_name = name
            self.data_source = source if source is not None else adata
            labels = self.config.labels
            if labels is not None and labels not in adata.obs.columns:
                self.config.labels = None
            if self.model is not None and self.model.adata is not adata:
                self.model, self.inference, self.run_dir, self.model_name = None, None, None, ""
            self.error = ""
            self.status_message = f"loaded {name}: {adata.n_obs:,} cells x {adata.n_vars:,} genes"

    def load_bundled(self, name: str) -> None:
        if name not in DATASETS:
            raise CplmixError(f"unknown dataset '{name}' (bundled: {', '.join(sorted(DATASETS))})")
        self.use_data(shared_bundled(name), name, source=name)

    def load_server_file(self, text: str) -> None:
        """Read an .h5ad typed as a path; only files inside the allowed data folder are read."""
        private = (self.runs_dir,) if self.runs_dir is not None else ()
        path = resolve_data_path(text, self.data_dir, private_dirs=private)
        self.use_data(read_data(path), path.name, source=str(path))

    def load_upload(self, filename: str, payload: bytes) -> None:
        adata = read_upload(filename, payload, self.max_upload_bytes)
        self.use_data(adata, f"{filename} (upload)")

    # -- model --------------------------------------------------------------------------------------------
    def use_model(self, model: CplMixVAE, name: str, run_dir: Path | None = None) -> None:
        """Show ``model`` (and its data) in every view; its inference is computed here."""
        inference = model.predict()
        LIVE_MODELS.add(model)
        previous = self.model
        with param.parameterized.batch_call_watchers(self):
            if self.adata is not model.adata:
                self.adata = model.adata
                self.data_name = self.data_name or name
                self.data_source = self.data_source if self.data_source is not None else model.adata
            self.model = model
            self._session_renames = {} if model is not previous else self._session_renames
            self.inference = inference
            self.run_dir = Path(run_dir) if run_dir is not None else None
            self.model_name = name
        if previous is not None and previous is not model:
            release_model_caches(previous)

    def open_run(self, run_dir: str | os.PathLike) -> None:
        model = load_run(run_dir)
        self.use_model(model, name=f"run {Path(run_dir).name}", run_dir=Path(run_dir))
        self.show_run_history(run_dir)

    def open_run_folder(self, name: str) -> Path:
        """Open a run folder of the runs folder by name (the app's runs list): only folders inside it that are
        not another session's, on data the session may read (a bundled dataset or a file inside the data
        folder); returns the folder."""
        if self.busy:
            raise CplmixError(f"{self.job.kind} is running in this session; stop it before opening another run")
        run_dir = resolve_run_folder(name, self.runs_dir, self.session_id)
        source = read_run_info(run_dir).get("data")
        if source is None or source == "in-memory":
            raise CplmixError(f"the run '{name}' was trained on data uploaded or passed in memory, which its folder does not keep")
        if source in DATASETS:
            data, data_name, data_source = shared_bundled(source), source, source
        else:
            try:
                private = (self.runs_dir,) if self.runs_dir is not None else ()
                path = resolve_data_path(source, self.data_dir, private_dirs=private)
            except CplmixError as error:
                raise CplmixError(f"cannot open the run '{name}': its data {error}") from None
            data, data_name, data_source = read_data(path), path.name, str(path)
        model = load_run(run_dir, source=data)
        with param.parameterized.batch_call_watchers(self):
            self.adata, self.data_name, self.data_source = model.adata, data_name, data_source
            self.use_model(model, name=f"run {run_dir.name}", run_dir=run_dir)
        self.show_run_history(run_dir)
        self.error = ""
        return run_dir

    def open_demo(self, run_dir: str | os.PathLike) -> None:
        model = shared_demo(run_dir)
        self.data_name = model.adata.uns.get("dataset", "demo data")
        self.data_source = self.data_name if self.data_name in DATASETS else model.adata
        self.use_model(model, name=f"demo model {Path(run_dir).name}", run_dir=None)
        self.show_run_history(run_dir)

    def show_run_history(self, run_dir: str | os.PathLike) -> None:
        """Put a run folder's training record (metrics.json) in the training monitor."""

        path = Path(run_dir) / METRICS_FILE
        if not path.exists():
            return
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            logger.warning("cannot read %s: %s", path, error)
            return
        if self.model is not None and self.model.consensus() is not None:
            metrics["consensus_detail"] = {"agreement": self.model.consensus().agreement.tolist()}
        self.live.load_history(metrics)
        self.status_message = f"{self.model_name}: trained to step {self.live.step:,}"
        self.metrics_tick += 1

    @property
    def consensus(self) -> Consensus | None:
        return None if self.model is None else self.model.consensus()

    # -- type names ---------------------------------------------------------------------------------------
    def type_names(self) -> list[str]:
        """The name of every type 0..K-1 of the shown model, as every view shows it (legends, dropdowns,
        tables): the model's names (``CplMixVAE.type_names``) with this session's renames."""
        if self.model is None:
            return []
        names = self.model.type_names()
        if self._session_renames:
            ids = self.model.module.category_ids.cpu().numpy().tolist()
            names = [self._session_renames.get(int(c)) or name for c, name in zip(ids, names)]
        return names

    def rename_type(self, type_index: int, name: str) -> None:
        """Rename a type (an empty name goes back to the automatic one). A run's names are saved in its run
        folder and result.h5ad; a shared demo model is renamed for this session only."""
        model = self.model
        if model is None:
            raise CplmixError("no model: train one or open a run")
        if model in _demo_cache.values():
            names = self.type_names()
            index = resolve_type_index(names, type_index)
            name = check_name(name)
            check_unique(names, index, name or model.type_names()[index])
            category = int(model.module.category_ids[index])
            if name:
                self._session_renames[category] = name
            else:
                self._session_renames.pop(category, None)
        else:
            model.rename_type(type_index, name, run_dir=self.run_dir)
        self.names_tick += 1

    # -- background work ----------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.running

    def training_config(self) -> CplMixConfig:
        """The form's options, checked against the data and the machine before anything starts."""
        if self.adata is None:
            raise CplmixError("load a dataset first")
        config = self.config.copy()
        resolve_device(config.device)
        check_types_fit_cells(config.n_types, self.adata.n_obs)
        if config.labels is not None and config.labels not in self.adata.obs.columns:
            raise CplmixError(f"unknown labels column '{config.labels}'")
        return config

    def new_run_dir(self, kind: str = "train") -> Path:
        if self.runs_dir is None:
            self.runs_dir = Path(tempfile.mkdtemp(prefix="cplmix-runs-"))
        return self.runs_dir / app_run_name(kind, self.session_id, time.strftime("%Y%m%d-%H%M%S"), uuid.uuid4().hex[:6])

    def start_training(self) -> None:
        """Train a new model with the form's options on the session's data, in the background."""
        if self.busy:
            raise CplmixError(f"{self.job.kind} is already running in this session; stop it first")
        config = self.training_config()
        source, run_dir = self.data_source, self.new_run_dir("train")

        def work(control, attach_model):
            # in a process of its own: as fast as `cplmix train` whatever this server has drawn (workflows/worker.py)
            training = ProcessTraining(source, run_dir, config)
            attach_model(training)
            outcome = training.run(control)
            return outcome.result.status, f"trained to step {outcome.result.step}", outcome

        self._start_job(BackgroundJob("training", str(resolve_device(config.device)), work), "training")

    def train_model(self, steps: int | None = None, epochs: float | None = None) -> None:
        """Notebook use: continue training the current model in place, in the background."""
        if self.model is None:
            raise CplmixError("no model to train")
        if self.busy:
            raise CplmixError(f"{self.job.kind} is already running; wait for it or stop it")
        model = self.model

        def work(control, attach_model):
            attach_model(model)
            result = model.train(steps=steps, epochs=epochs, progress=False, control=control)
            return result.status, f"trained to step {result.step}", model

        self._start_job(BackgroundJob("training", str(model.device), work), "training")

    def start_pruning(self, options: PruningOptions | None = None) -> None:
        """Prune categories of a copy of the current model (``cplmix prune``'s :func:`prune`, with the same
        :class:`PruningOptions`) in the background."""
        if self.model is None:
            raise CplmixError("no model to prune: train one or open a run")
        if self.busy:
            raise CplmixError(f"{self.job.kind} is already running in this session; stop it first")
        options = (options or PruningOptions()).to_dict()
        if self.model.module.n_arms < 2:
            raise CplmixError("pruning needs at least two arms (agreement between arms decides which types survive)")
        if options["min_types"] > self.model.module.n_types:
            raise CplmixError(f"'Stop at K' ({options['min_types']}) exceeds the model's {self.model.module.n_types} types")
        source_model, run_dir = self.model, self.new_run_dir("prune")
        rounds: queue.Queue = queue.Queue()
        self._pruning_rounds_queue = rounds

        def work(control, attach_model):
            source_model.save(run_dir)  # prune a copy: the shown model (maybe shared) stays as it is
            # the fine-tuning rounds train: in a process of their own, as training does (workflows/worker.py)
            job = ProcessPruning(run_dir, source_model.adata, str(source_model.device), options, on_round=rounds.put)
            attach_model(job)
            model, result = job.run(control)
            status = "stopped" if control.stop_requested else "completed"
            return status, f"pruned to {len(model.module.category_ids)} types (chosen K = {result.chosen_k})", (model, result)

        self.pruning_rounds = []
        self.pruning_result = None
        self.pruning_plan = {
            "start_k": int(source_model.module.n_types), "min_types": int(options["min_types"]),
            "min_consensus": float(options["min_consensus"]),
            "fine_tune_steps": options["fine_tune_steps"] if options["fine_tune_steps"] is not None
            else default_fine_tune_steps(source_model.config.steps),
        }
        self._start_job(BackgroundJob("pruning", str(source_model.device), work), "pruning")

    def _start_job(self, job: BackgroundJob, kind: str) -> None:
        self.job = job
        # the previous model's curves go at once, not when the new run's first metrics arrive seconds later
        self.live.reset(self.live.names)
        self.error = ""
        self.status = "training" if kind == "training" else "pruning"
        self.status_message = f"{kind} starting"
        job.start()
        self._ensure_polling()
        # the views empty their figures now, under the session's document lock (a click's callback may run in
        # a worker thread, where a Bokeh model must not be changed); a view failing must not fail the start
        pn.state.execute(self._refresh_views)

    def _refresh_views(self) -> None:
        try:
            self.metrics_tick += 1
        except Exception as error:
            logger.exception("explorer refresh failed")
            self.error = f"display update failed: {describe_failure(error)}"

    def stop(self) -> None:
        if self.job is not None and self.job.running:
            self.job.stop("stopped from the app")
            self.status_message = f"stopping {self.job.kind}..."

    def _ensure_polling(self) -> None:
        """Start the session's periodic callback (server or notebook); without an event loop (scripts,
        tests) the caller drives :meth:`poll` itself."""
        if self._callback is not None and self._callback.running:
            return
        # background: the refresh does not flash the page's busy indicator every second (Panel counts busy
        # events process-wide, so every open page's spinner would redraw for every training session)
        self._callback = PeriodicCallback(callback=self._poll_on_event_loop, period=POLL_PERIOD_MS, background=True)
        try:
            self._callback.start()
        except Exception:  # no event loop: poll() is called explicitly
            self._callback = None

    async def _poll_on_event_loop(self) -> None:
        """The periodic callback. A coroutine, so Panel runs it on the session's event loop even when it
        dispatches other callbacks to a thread pool (``--num-threads``): plot streams are then updated
        where Bokeh expects it, in order, one refresh at a time."""
        self.poll()

    def poll(self, wait: bool = False) -> None:
        """Drain the job's events into the state (runs in the session thread). Never raises: an error here
        would silently stop the periodic callback, so it is shown instead."""
        # with Panel's thread pool a refresh can start while the previous one still runs: skip it then
        if not self._poll_lock.acquire(blocking=wait):
            return
        try:
            with pn.io.hold():  # the refresh's changes go to the browser as one message, drawn in one pass
                self._poll()
        except Exception as error:
            logger.exception("explorer refresh failed")
            self.error = f"display update failed: {describe_failure(error)}"
        finally:
            self._poll_lock.release()

    def _poll(self) -> None:
        job = self.job
        if job is None:
            self._stop_polling()
            return
        metrics_changed = False
        events = job.drain()
        for event in events:
            if isinstance(event, JobQueued):
                self.status = "queued"
                self.status_message = (
                    f"queued: {event.device} is busy with {event.busy_with}; {job.kind} starts when it is free"
                )
            elif isinstance(event, JobRunning):
                self.status = "training" if job.kind == "training" else "pruning"
                self.status_message = f"{job.kind} on {event.device}"
            elif isinstance(event, (TrainingStarted, StepMetrics, Evaluation, TrainingFinished)):
                self.live.update(event)
                metrics_changed = True
            elif isinstance(event, JobEnded):
                self._finish(job, event)
        if job.kind == "pruning":
            self._drain_pruning_rounds()
        if metrics_changed:
            self.metrics_tick += 1
        # stop one quiet refresh after the end, so the last updates are flushed by a completed callback
        if not events and not job.running and job is self.job and self.status not in ("training", "pruning", "queued"):
            self._stop_polling()

    def _drain_pruning_rounds(self) -> None:
        rounds = self._pruning_rounds_queue
        if rounds is None:
            return
        arrived = False
        while not rounds.empty():
            self.pruning_rounds.append(_round_record(rounds.get_nowait()))
            arrived = True
        if arrived:
            self.pruning_tick += 1

    def _finish(self, job: BackgroundJob, event: JobEnded) -> None:
        self.live.finished_status = event.status
        if event.status == "failed":
            self.status = "failed"
            self.error = event.message
            self.status_message = f"{job.kind} failed"
            return
        if job.kind == "training" and event.result is not None:
            outcome = event.result
            if hasattr(outcome, "run_dir"):  # train_run's RunOutcome
                self.use_model(outcome.model, name=f"trained in this session ({outcome.run_dir.name})", run_dir=outcome.run_dir)
            else:  # notebook: the same model, trained further
                self.use_model(outcome, name=self.model_name or "model", run_dir=self.run_dir)
        elif job.kind == "pruning" and event.result is not None:
            self._drain_pruning_rounds()
            model, result = event.result
            self.use_model(model, name=f"pruned ({len(model.module.category_ids)} types)", run_dir=None)
            self.pruning_result = result
        self.status = "completed" if event.status == "completed" else "stopped"
        self.status_message = f"{job.kind} {event.status}: {event.message}"
        self.metrics_tick += 1

    def _stop_polling(self) -> None:
        if self._callback is not None:
            try:
                self._callback.stop()
            except Exception:
                pass
            self._callback = None

    def wait(self, timeout: float | None = None) -> None:
        """Block until the background job ends, then apply its results (scripts and notebooks)."""
        if self.job is not None:
            self.job.join(timeout)
            self.poll(wait=True)
            self.poll(wait=True)  # a second, quiet refresh ends the polling

    # -- lifecycle ----------------------------------------------------------------------------------------
    def close(self) -> None:
        """End of the session: stop its work and callbacks and let go of data and model."""
        if self._closed:
            return
        self._closed = True
        self._stop_polling()
        if self.job is not None:
            self.job.close()
        self.job = None
        self._pruning_rounds_queue = None
        self.pruning_result = None
        if self.model is not None:
            release_model_caches(self.model)
        with param.parameterized.discard_events(self):
            self.model = None
            self.inference = None
            self.adata = None
            self.data_source = None
        self.live = LiveTraining()


def _round_record(round_info: Any) -> dict:
    """One pruning round as a dict with k, min_agreement, mean_agreement, removed (whatever shape
    ``prune``'s ``on_round`` passes: a dict, a row, or an object with those attributes)."""
    keys = ("k", "min_agreement", "mean_agreement", "removed")
    if isinstance(round_info, dict):
        return {k: round_info.get(k) for k in keys}
    if isinstance(round_info, pd.Series):
        return {k: round_info.get(k) for k in keys}
    return {k: getattr(round_info, k, None) for k in keys}


def release_model_caches(model: CplMixVAE) -> None:
    """Drop what analysis functions cached for a model a session no longer shows, so it can be freed.

    The traversal's per-model cache (``analysis.traversal._CONTEXTS``) is a WeakKeyDictionary whose
    values hold the model itself, so its entries never expire on their own; shared demo models stay."""
    if model in _demo_cache.values():
        return
    with traversal._CONTEXTS_LOCK:
        traversal._CONTEXTS.pop(model, None)


def return_free_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the system (glibc ``malloc_trim``), so a
    long-running server's resident memory falls again after sessions close. A no-op where unavailable."""
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


#: glibc ``mallopt`` parameter number of M_ARENA_MAX.
_M_ARENA_MAX = -8
#: malloc arenas the served app allows (glibc's default is 8 per core): with the session thread pool and the
#: training threads each filling an arena of its own, freed memory stayed spread over many half-empty arenas
#: and the server's memory after sessions closed kept growing (benchmarks/app_load.py).
SERVER_MALLOC_ARENAS = 2
_arenas_limited = False


def limit_malloc_arenas(arenas: int = SERVER_MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for threads started from now on, once per process, unless the user set
    ``MALLOC_ARENA_MAX`` (glibc applies that itself). True when the cap was applied; a no-op off glibc."""
    global _arenas_limited
    if _arenas_limited or "MALLOC_ARENA_MAX" in os.environ:
        return False
    _arenas_limited = True
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, int(arenas)))
    except (OSError, AttributeError):
        return False


_startup_frozen = False


def freeze_startup_objects() -> None:
    """Move everything alive now (imported modules, the shared demo model and data) out of the garbage
    collector's reach, once per process (``gc.freeze``): full collections then scan only the sessions' own
    objects, a few times faster, and every open or closed page waits less for them."""
    global _startup_frozen
    with _cache_lock:
        if _startup_frozen:
            return
        _startup_frozen = True
    gc.collect()
    gc.freeze()


def live_counts(collect: bool = True) -> tuple[int, int]:
    """(explorer states, models shown by some session) alive, after one garbage collection unless
    ``collect=False`` (the caller has just collected)."""
    if collect:
        gc.collect()
    return len(LIVE_STATES), len(LIVE_MODELS)


def format_exception(error: BaseException) -> str:
    """One line for the user; the traceback goes to the log."""
    if isinstance(error, CplmixError):
        return str(error)
    logger.error("unexpected error:\n%s", "".join(traceback.format_exception(error)))
    return describe_failure(error)


__all__ = ["ExplorerState", "LIVE_MODELS", "LIVE_STATES", "freeze_startup_objects", "limit_malloc_arenas", "live_counts",
           "return_free_memory", "shared_bundled", "shared_demo"]
