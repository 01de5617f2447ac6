"""What the training monitor shows, accumulated from engine events (plain Python; no Panel).

:class:`LiveTraining` turns :class:`StepMetrics` / :class:`Evaluation` events into rows for streaming plots:
one row per metrics event (the mean of its steps), thinned so that a plot never holds more than
``max_points`` points however long training runs. When the history outgrows that, the resolution halves and
:meth:`LiveTraining.take_rows` says ``reset=True`` (the plot replaces its data once instead of appending).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..train.events import Evaluation, StepMetrics, TrainingFinished, TrainingStarted

STEP = "step"
AGREEMENT_COLUMNS = ["step", "mean_agreement", "min_agreement", "validation_loss"]


class LiveTraining:
    """Progress, throughput and metric history of the current training run."""

    def __init__(self, max_points: int = 2000):
        self.max_points = max_points
        self.names: list[str] = []
        self.reset()

    def reset(self, names: list[str] | None = None) -> None:
        self.names = list(names or [])
        self.device = ""
        self.start_step = 0
        self.step = 0
        self.total_steps = 0
        self.steps_per_second = 0.0
        self.cells_per_second = 0.0
        self.elapsed_seconds = 0.0
        self.n_arms = 0
        self.finished_status: str | None = None
        self._rows = np.zeros((0, 1 + len(self.names)))
        self._group = 1  # events averaged into one plotted point
        self._sent_groups = 0
        self._needs_reset = False
        self._flushed_partial = False
        self.agreement_rows: list[list[float]] = []
        self._sent_agreement = 0
        self.category_agreement = np.zeros(0)
        self.category_agreement_changed = False
        self._restarted = True

    def take_restart(self) -> bool:
        """True once after each (re)start of a run: the plots then start afresh."""
        restarted, self._restarted = self._restarted, False
        return restarted

    def rewind(self) -> None:
        """Send everything again from the first row (to new, empty plots)."""
        self._needs_reset = True
        self._sent_agreement = 0
        self.category_agreement_changed = len(self.category_agreement) > 0

    # -- events in ----------------------------------------------------------------------------------------
    def update(self, event) -> None:
        if isinstance(event, TrainingStarted):
            self.reset(event.metric_names)
            self.device = event.device
            self.start_step = self.step = event.start_step
            self.total_steps = event.total_steps
            self.n_arms = event.n_arms
            self._needs_reset = True
        elif isinstance(event, StepMetrics):
            if list(event.names) != self.names:  # metrics without a start event (e.g. a monitor attached late)
                self.reset(event.names)
                self._needs_reset = True
            row = np.concatenate([[float(event.last_step)], np.asarray(event.values, float).mean(axis=0)])
            self._rows = np.vstack([self._rows, row])
            self.step = event.last_step
            self.total_steps = event.total_steps
            # an exponential average keeps the rate and the ETA steady between events
            rate = float(event.steps_per_second)
            self.steps_per_second = rate if self.steps_per_second == 0 else 0.7 * self.steps_per_second + 0.3 * rate
            self.cells_per_second = self.steps_per_second * float(event.cells_per_second) / max(rate, 1e-12)
            self.elapsed_seconds = float(event.elapsed_seconds)
            while len(self._rows) / self._group > self.max_points:
                self._group *= 2
                self._needs_reset = True
        elif isinstance(event, Evaluation):
            self.agreement_rows.append([
                float(event.step),
                _float_or_nan(event.mean_agreement),
                _float_or_nan(event.min_agreement),
                _float_or_nan(event.validation_loss),
            ])
            if len(event.agreement):
                self.category_agreement = np.asarray(event.agreement, float)
                self.category_agreement_changed = True
        elif isinstance(event, TrainingFinished):
            self.step = event.step
            self.finished_status = event.status

    def load_history(self, metrics: dict) -> None:
        """Show a finished run's record (``metrics.json`` of a run folder: its loss history, evaluations,
        step and device), so an opened run or demo shows how it trained."""
        history = metrics.get("history") or {}
        names = [name for name in history if name != STEP]
        self.reset(names)
        if history:
            self._rows = np.column_stack([np.asarray(history[STEP], float)] + [np.asarray(history[n], float) for n in names])
            while len(self._rows) / self._group > self.max_points:
                self._group *= 2
        self._needs_reset = True
        self.step = self.total_steps = int(metrics.get("step", 0))
        self.device = str(metrics.get("device", ""))
        self.finished_status = str(metrics.get("status", "completed"))
        self.steps_per_second = float(metrics.get("steps_per_second") or 0.0)
        self.agreement_rows = [
            [float(e["step"]), _float_or_nan(e.get("mean_agreement")), _float_or_nan(e.get("min_agreement")),
             _float_or_nan(e.get("validation_loss"))]
            for e in metrics.get("evaluations", [])
        ]
        agreement = (metrics.get("consensus_detail") or {}).get("agreement")
        if agreement is not None:
            self.category_agreement = np.asarray(agreement, float)
            self.category_agreement_changed = True

    # -- derived -----------------------------------------------------------------------------------------
    @property
    def fraction_done(self) -> float:
        return min(self.step / self.total_steps, 1.0) if self.total_steps else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the current rate (None before the first rate is known)."""
        if self.steps_per_second <= 0 or not self.total_steps:
            return None
        return max(self.total_steps - self.step, 0) / self.steps_per_second

    def summary(self) -> str:
        """One line: step, throughput, ETA, device."""
        if not self.total_steps:
            return "no training yet"
        parts = [f"step {self.step:,} / {self.total_steps:,}"]
        if self.steps_per_second > 0 and self.finished_status is None:
            parts.append(f"{self.steps_per_second:,.1f} steps/s ({self.cells_per_second:,.0f} cells/s)")
        eta = self.eta_seconds
        if eta is not None and self.finished_status is None:
            parts.append(f"ETA {format_duration(eta)}")
        if self.elapsed_seconds:
            parts.append(f"elapsed {format_duration(self.elapsed_seconds)}")
        if self.device:
            parts.append(f"device {self.device}")
        return " · ".join(parts)

    def history_frame(self) -> pd.DataFrame:
        """Every row so far at full resolution: step, then one column per metric."""
        return pd.DataFrame(self._rows, columns=[STEP, *self.names])

    # -- rows out (one send per refresh) ------------------------------------------------------------------
    def empty_frame(self) -> pd.DataFrame:
        return pd.DataFrame(np.zeros((0, 1 + len(self.names))), columns=[STEP, *self.names])

    def take_rows(self, flush: bool = False) -> tuple[pd.DataFrame, bool]:
        """New plot rows since the last call and whether they *replace* what was sent before.

        ``flush`` also returns a last incomplete group (at the end of training).
        """
        reset = self._needs_reset or self._flushed_partial
        if reset:
            self._sent_groups = 0
            self._needs_reset = False
            self._flushed_partial = False
        full_groups = len(self._rows) // self._group
        rows = [self._group_row(g) for g in range(self._sent_groups, full_groups)]
        self._sent_groups = full_groups
        if flush and len(self._rows) % self._group:
            rows.append(self._group_row(full_groups))
            self._flushed_partial = True  # the next call resends from scratch, so the partial point is replaced
        frame = pd.DataFrame(np.asarray(rows).reshape(len(rows), 1 + len(self.names)), columns=[STEP, *self.names])
        return frame, reset

    def _group_row(self, group: int) -> np.ndarray:
        """The mean of the events of one group; the point sits at the last step it covers."""
        block = self._rows[group * self._group : (group + 1) * self._group]
        row = block.mean(axis=0)
        row[0] = block[-1, 0]
        return row

    def take_agreement_rows(self) -> pd.DataFrame:
        """Evaluation rows (step, mean_agreement, min_agreement, validation_loss) since the last call."""
        new = self.agreement_rows[self._sent_agreement :]
        self._sent_agreement = len(self.agreement_rows)
        return pd.DataFrame(np.asarray(new, float).reshape(len(new), 4), columns=AGREEMENT_COLUMNS)


def format_duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '2 h 04 min'."""
    if not math.isfinite(seconds):
        return "unknown"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _float_or_nan(value) -> float:
    return float("nan") if value is None else float(value)
