"""The background work of one session (training, pruning): :class:`SessionJobs`, the part of
:class:`~cplmix_explorer.views.state.ExplorerState` that starts a job, relays its events into the state from
the session's periodic callback, and applies its result. The work itself runs in a child process
(:mod:`cplmix_explorer.workflows.worker`) through a :class:`~cplmix_explorer.views.jobs.BackgroundJob`."""

from __future__ import annotations

import logging
import queue
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import panel as pn
from panel.io.callbacks import PeriodicCallback

from ..config import CplMixConfig, PruningOptions, default_fine_tune_steps
from ..data.validate import check_types_fit_cells
from ..errors import CplmixError, describe_failure
from ..device import resolve_device
from ..train.events import Evaluation, StepMetrics, TrainingFinished, TrainingStarted
from ..workflows.worker import ProcessPruning, ProcessTraining
from .jobs import BackgroundJob, JobEnded, JobQueued, JobRunning
from .safety import app_run_name

logger = logging.getLogger(__name__)

#: Refresh period of the session's periodic callback, milliseconds.
POLL_PERIOD_MS = 1000


class SessionJobs:
    """Training and pruning of one session in the background (a mixin of ExplorerState, whose parameters
    and model it updates)."""

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
        source, data, run_dir = self.data_source, self.adata, self.new_run_dir("train")

        def work(control, attach_model):
            # in a process of its own: as fast as `cplmix train` whatever this server has drawn (workflows/worker.py)
            # the data is read (the session's copy) and prepared once, here; the child trains on that preparation
            # and the model comes back onto it
            training = ProcessTraining(source, run_dir, config, data=data)
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
            job = ProcessPruning(run_dir, source_model.adata, str(source_model.device), options, on_round=rounds.put,
                                 prepared=source_model.prepared)
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


def _round_record(round_info: Any) -> dict:
    """One pruning round as a dict with k, min_agreement, mean_agreement, removed (whatever shape
    ``prune``'s ``on_round`` passes: a dict, a row, or an object with those attributes)."""
    keys = ("k", "min_agreement", "mean_agreement", "removed")
    if isinstance(round_info, dict):
        return {k: round_info.get(k) for k in keys}
    if isinstance(round_info, pd.Series):
        return {k: round_info.get(k) for k in keys}
    return {k: getattr(round_info, k, None) for k in keys}
