"""Metric events published by the training engine, and the thread-safe bus that delivers them.

The engine publishes from its own thread; consumers subscribe with a callback (called in the training
thread: keep it short, never touch UI objects from it) or take a ``queue.Queue`` to drain from their own
thread (what the Panel app does in a periodic callback). Pause and stop requests go through
:class:`TrainingControl` and are honoured between steps.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class TrainingStarted:
    start_step: int
    total_steps: int
    device: str
    fast_path: str
    n_cells: int
    n_types: int
    n_arms: int
    metric_names: list[str]
    time: float = field(default_factory=time.time)


@dataclass
class StepMetrics:
    """Per-step values of the loss terms for the steps since the previous event.

    steps: (n,) step numbers (1-based, after the update); values: (n, len(names)) float64;
    steps_per_second: throughput since the previous event; cells_per_second likewise.
    """

    steps: np.ndarray
    values: np.ndarray
    names: list[str]
    total_steps: int
    steps_per_second: float
    cells_per_second: float
    elapsed_seconds: float

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.names.index(name)]

    @property
    def last_step(self) -> int:
        return int(self.steps[-1])


@dataclass
class Evaluation:
    """Every evaluation interval: arm agreement per category and the validation loss.

    agreement: (K,) per-category agreement averaged over arm pairs (empty with one arm).
    """

    step: int
    agreement: np.ndarray
    mean_agreement: float | None
    min_agreement: float | None
    validation_loss: float | None
    n_cells_evaluated: int


@dataclass
class CheckpointSaved:
    step: int
    path: str


@dataclass
class TrainingRestarted(TrainingStarted):
    """Training goes on from the last good checkpoint after a non-finite loss, with a lower learning rate
    (``nan_restarts``); as a :class:`TrainingStarted` it resets progress displays to ``start_step``.

    failed_step: the step whose loss was not finite; terms: the loss terms that failed; learning_rate: the
    new rate; restarts_left: automatic restarts still allowed.
    """

    failed_step: int = 0
    terms: list[str] = field(default_factory=list)
    learning_rate: float = 0.0
    restarts_left: int = 0

    @property
    def message(self) -> str:
        return (
            f"non-finite loss at step {self.failed_step} (term: {', '.join(self.terms)}); restarting from the "
            f"checkpoint at step {self.start_step} with learning rate {self.learning_rate:.3g} "
            f"({self.restarts_left} restart(s) left)"
        )


@dataclass
class TrainingFinished:
    """status: 'completed', 'stopped' (by request or signal) or 'failed' (message says why)."""

    step: int
    status: str
    message: str
    elapsed_seconds: float


Event = TrainingStarted | TrainingRestarted | StepMetrics | Evaluation | CheckpointSaved | TrainingFinished


class EventBus:
    """Thread-safe publish/subscribe of training events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[Event], None]] = []
        self._queues: list[queue.Queue] = []

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for each event (in the training thread); returns an unsubscribe function."""
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    def subscribe_queue(self, maxsize: int = 0) -> queue.Queue:
        """A queue that receives every event; drain it from any thread. Remove with :meth:`unsubscribe_queue`."""
        q: queue.Queue = queue.Queue(maxsize=maxsize)
        with self._lock:
            self._queues.append(q)
        return q

    def unsubscribe_queue(self, q: queue.Queue) -> None:
        with self._lock:
            if q in self._queues:
                self._queues.remove(q)

    def publish(self, event: Event) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
            queues = list(self._queues)
        for q in queues:
            try:
                q.put_nowait(event)
            except queue.Full:  # a consumer that stopped draining must not stall training
                logger.warning("event queue full; dropping %s", type(event).__name__)
        for callback in callbacks:
            try:
                callback(event)
            except Exception:  # a broken display must not kill training
                logger.exception("training event callback failed")


class TrainingControl:
    """Pause / resume / stop requests, checked by the engine between steps (thread-safe)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self.stop_reason = ""

    def stop(self, reason: str = "stopped by request") -> None:
        self.stop_reason = reason
        self._stop.set()
        self._running.set()  # wake a paused loop so it can stop

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def wait_while_paused(self) -> None:
        while not self._running.wait(timeout=0.2):
            if self._stop.is_set():
                return
