"""The per-session state every view reads (Panel's "structure_data_store" pattern).

:class:`ExplorerState` holds the dataset, the trained model, its inference, the run folder and the status of
background work. Views take it as a ``param.ClassSelector`` and react to its parameters; they never compute
the model themselves. Background jobs (training, pruning; :mod:`.session_jobs`) only publish events;
:meth:`ExplorerState.poll`, run by the session's periodic callback about once a second, drains them and updates
the state in the session's own thread, so Bokeh models are only ever touched there. What all sessions of a
server share (bundled data, demo models, memory housekeeping) is in :mod:`.server`.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import traceback
import uuid
import weakref
from pathlib import Path
from typing import Any

import pandas as pd
import panel as pn
import param
from anndata import AnnData

from ..analysis.names import check_name, check_unique, resolve_type_index
from ..api import CplMixVAE
from ..config import CplMixConfig
from ..data.bundled import DATASETS
from ..data.io import read_data
from ..data.validate import validate_anndata
from ..errors import CplmixError, describe_failure
from ..model.consensus import Consensus
from ..model.inference import Inference
from ..workflows.run import METRICS_FILE, load_run, read_run_info
from .jobs import BackgroundJob
from .live import LiveTraining
from .safety import DEFAULT_MAX_UPLOAD_MB, read_upload, resolve_data_path, resolve_run_folder
from .server import LIVE_MODELS, LIVE_STATES, is_shared_demo, release_model_caches, shared_bundled, shared_demo
from .session_jobs import SessionJobs

logger = logging.getLogger(__name__)

STATUSES = ["idle", "queued", "training", "pruning", "completed", "stopped", "failed"]

class ExplorerState(SessionJobs, param.Parameterized):
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
        if is_shared_demo(model):
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


def format_exception(error: BaseException) -> str:
    """One line for the user; the traceback goes to the log."""
    if isinstance(error, CplmixError):
        return str(error)
    logger.error("unexpected error:\n%s", "".join(traceback.format_exception(error)))
    return describe_failure(error)


