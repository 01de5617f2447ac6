"""Background work for a session (training, pruning) that never touches the UI.

A :class:`BackgroundJob` runs one function in a daemon thread. The thread only *publishes*: job events go to
the job's own queue and the engine's metric events to the model's ``events.subscribe_queue()``; the session
drains both from its periodic callback (:meth:`BackgroundJob.drain`) and updates widgets and plots there.
A new training and a pruning run the engine in a child process (:mod:`cplmix_explorer.workflows.worker`) and this
thread only relays their events; notebook training of a model in memory runs in the thread itself.

Jobs on the same device take turns through a process-wide lock per device: a second request waits in a
queue (and says so) until the first finishes, or until it is stopped. Plain Python, no Panel.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import CplmixError, describe_failure
from ..train.events import TrainingControl

logger = logging.getLogger(__name__)

_registry_lock = threading.Lock()
_device_locks: dict[str, threading.Lock] = {}
_device_holders: dict[str, str] = {}


def device_lock(device: str) -> threading.Lock:
    """The process-wide lock of one device ('cpu', 'cuda:0', ...)."""
    with _registry_lock:
        return _device_locks.setdefault(device, threading.Lock())


def device_busy(device: str) -> str | None:
    """What holds ``device`` now (e.g. 'training'), or None when it is free."""
    with _registry_lock:
        return _device_holders.get(device)


@dataclass
class JobQueued:
    """The device is busy with another session's job; this one waits."""

    device: str
    busy_with: str


@dataclass
class JobRunning:
    device: str


@dataclass
class JobEnded:
    """status: 'completed', 'stopped' or 'failed'; ``result`` is what the work returned (None unless completed
    or stopped); ``message`` is one line for the user."""

    status: str
    message: str
    result: Any = None
    seconds: float = 0.0


JobEvent = JobQueued | JobRunning | JobEnded
#: work(control, attach_model) -> (status, message, result); attach_model(model) subscribes to its ``events``.
Work = Callable[[TrainingControl, Callable[[Any], None]], tuple[str, str, Any]]


class BackgroundJob:
    """One piece of background work (``kind``: 'training' or 'pruning') on ``device``."""

    def __init__(self, kind: str, device: str, work: Work, control: TrainingControl | None = None):
        self.kind = kind
        self.device = device
        self.control = control or TrainingControl()
        self._work = work
        self._job_events: queue.Queue = queue.Queue()
        self._model_events: queue.Queue | None = None
        self._model = None
        self._attach_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"cplmix-{kind}", daemon=True)
        self.finished = threading.Event()

    # -- the worker thread --------------------------------------------------------------------------------
    def start(self) -> BackgroundJob:
        self._thread.start()
        return self

    def _attach_model(self, model) -> None:
        """Called by the work (in the worker thread) once its model exists: subscribe to its metric events
        (anything with an ``events`` bus: a model, or a :class:`~cplmix_explorer.workflows.worker.ProcessTraining`)."""
        with self._attach_lock:
            if self._model is not None and self._model_events is not None:
                self._model.events.unsubscribe_queue(self._model_events)
            self._model = model
            self._model_events = model.events.subscribe_queue()

    def _run(self) -> None:
        started = time.perf_counter()
        lock = device_lock(self.device)
        acquired = lock.acquire(blocking=False)
        try:
            if not acquired:
                self._job_events.put(JobQueued(self.device, device_busy(self.device) or "another job"))
                while not acquired:
                    if self.control.stop_requested:
                        self._job_events.put(JobEnded("stopped", f"{self.kind} cancelled while waiting for {self.device}"))
                        return
                    acquired = lock.acquire(timeout=0.25)
            with _registry_lock:
                _device_holders[self.device] = f"{self.kind} for another session"
            self._job_events.put(JobRunning(self.device))
            status, message, result = self._work(self.control, self._attach_model)
            self._job_events.put(JobEnded(status, message, result, time.perf_counter() - started))
        except CplmixError as error:
            self._job_events.put(JobEnded("failed", str(error), None, time.perf_counter() - started))
        except BaseException as error:  # a bug or an environment failure: log it, tell the user, keep the app
            logger.exception("%s job failed", self.kind)
            message = f"{self.kind} failed: {describe_failure(error)}"
            self._job_events.put(JobEnded("failed", message, None, time.perf_counter() - started))
        finally:
            if acquired:
                with _registry_lock:
                    _device_holders.pop(self.device, None)
                lock.release()
            self.finished.set()

    # -- the session side ---------------------------------------------------------------------------------
    def drain(self) -> list:
        """Everything published since the last call, in order: engine events, then job events.

        Job events are taken first: the worker puts :class:`JobEnded` only after the engine has published
        its last event, so once JobEnded is seen every engine event is already in the model queue.
        """
        job_events = _take_all(self._job_events)
        with self._attach_lock:
            model_events = _take_all(self._model_events) if self._model_events is not None else []
        queued_or_running = [e for e in job_events if not isinstance(e, JobEnded)]
        ended = [e for e in job_events if isinstance(e, JobEnded)]
        return queued_or_running + model_events + ended

    @property
    def running(self) -> bool:
        return not self.finished.is_set()

    def stop(self, reason: str = "stopped by request") -> None:
        self.control.stop(reason)

    def join(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)

    def close(self) -> None:
        """Stop the work and drop the subscription (the thread ends at its next step)."""
        self.stop("the session was closed")
        with self._attach_lock:
            if self._model is not None and self._model_events is not None:
                self._model.events.unsubscribe_queue(self._model_events)
            self._model = None
            self._model_events = None


def _take_all(source: queue.Queue) -> list:
    items = []
    while True:
        try:
            items.append(source.get_nowait())
        except queue.Empty:
            return items
