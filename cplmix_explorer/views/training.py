"""Training monitor: start / stop training in the background and watch it live.

The training thread only publishes engine events; the session's periodic callback (about once a second)
drains them into :class:`~cplmix_explorer.views.live.LiveTraining` and this view pushes the new rows into
``hv.streams.Buffer`` / ``Pipe`` objects with one ``send`` per refresh, so Bokeh streams the increments.
"""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from . import plots
from .live import AGREEMENT_COLUMNS, STEP
from .state import ExplorerState, format_exception

#: The loss panels: (title, term); per-arm terms get one curve per arm.
METRIC_PANELS = [
    ("Total loss", "loss"),
    ("Coupling distance (arms' type posteriors)", "coupling"),
    ("Reconstruction per arm", "reconstruction"),
    ("State KL per arm", "kl"),
    ("Type entropy per arm", "entropy"),
]
STATUS_COLORS = {
    "idle": "secondary", "queued": "warning", "training": "primary", "pruning": "primary",
    "completed": "success", "stopped": "warning", "failed": "danger",
}


class TrainingMonitor(pn.viewable.Viewer):
    """Start / stop training and watch it: losses, coupling, per-arm terms, agreement, throughput, ETA.

    In a notebook: ``monitor = TrainingMonitor(model); monitor`` then ``monitor.train(steps=500)`` trains
    that model in the background while the plots update (``monitor.wait()`` blocks until it is done).
    """

    state = param.ClassSelector(class_=ExplorerState)
    show_errors = param.Boolean(default=True, doc="Show the session's errors here (the full explorer shows them above its tabs).")

    def __init__(self, state=None, **params):
        super().__init__(state=ExplorerState.of(state), **params)
        self.train_button = pn.widgets.Button(label="Train", color="primary", width=110)
        self.stop_button = pn.widgets.Button(label="Stop", color="danger", width=110, disabled=True)
        self.status = pn.pane.Alert("", alert_type="secondary", sizing_mode="stretch_width", margin=(0, 10))
        self.error = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width")
        self.progress = pn.indicators.Progress(value=0, max=1000, sizing_mode="stretch_width", bar_color="primary")
        self.summary = pn.pane.Markdown("no training yet", sizing_mode="stretch_width")
        self.train_button.on_click(self._on_train)
        self.stop_button.on_click(lambda _event: self.state.stop())
        self._names: list[str] = []
        self.metrics_buffer: hv.streams.Buffer | None = None
        self.agreement_buffer: hv.streams.Buffer | None = None
        self.category_pipe: hv.streams.Pipe | None = None
        self._plots = pn.GridBox(ncols=2, sizing_mode="stretch_width")
        self._build_plots([])
        self.state.param.watch(self._on_metrics, "metrics_tick")
        self.state.param.watch(self._on_status, ["status", "status_message", "error"])
        self._on_status()
        self._on_metrics()

    # -- actions ------------------------------------------------------------------------------------------
    def _on_train(self, _event=None) -> None:
        try:
            self.state.start_training()
        except Exception as error:
            self.state.error = format_exception(error)

    def train(self, steps: int | None = None, epochs: float | None = None) -> None:
        """Train the shown model further in the background (notebooks); returns at once."""
        self.state.train_model(steps=steps, epochs=epochs)
        self._on_status()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the background training ends and show its last metrics."""
        self.state.wait(timeout)

    # -- plots --------------------------------------------------------------------------------------------
    def _build_plots(self, names: list[str]) -> None:
        """(Re)create the streams and plots for a run's metric columns (they depend on the number of arms);
        every run gets fresh streams, so nothing of the previous run lingers in the plots."""
        self._names = list(names)
        template = pd.DataFrame(np.zeros((0, 1 + len(names))), columns=[STEP, *names])
        self.metrics_buffer = hv.streams.Buffer(template, length=4 * self.state.live.max_points + 16, index=False)
        agreement_template = pd.DataFrame(np.zeros((0, len(AGREEMENT_COLUMNS))), columns=AGREEMENT_COLUMNS)
        self.agreement_buffer = hv.streams.Buffer(agreement_template, length=100_000, index=False)
        self.category_pipe = hv.streams.Pipe(data=np.zeros(0))
        panels = []
        for title, term in METRIC_PANELS:
            columns = plots.metric_columns(names, term)
            if not columns and names:
                continue

            def curves(data, columns=columns, title=title):
                return plots.metric_curves(data, columns, title)

            panels.append(hv.DynamicMap(curves, streams=[self.metrics_buffer]))
        panels.append(hv.DynamicMap(plots.agreement_curves, streams=[self.agreement_buffer]))

        def bars(data):
            return plots.agreement_bars(data, title="Agreement per category (latest evaluation)")

        panels.append(hv.DynamicMap(bars, streams=[self.category_pipe]))
        self._plots.objects = [pn.pane.HoloViews(p, sizing_mode="stretch_width", min_height=260) for p in panels]

    def _on_metrics(self, *_events) -> None:
        live = self.state.live
        finished = live.finished_status is not None
        if live.names != self._names or live.take_restart():
            self._build_plots(live.names)
            live.rewind()
        frame, reset = live.take_rows(flush=finished)
        if reset:
            self.metrics_buffer.clear()
        if len(frame):
            self.metrics_buffer.send(frame)
        agreement = live.take_agreement_rows()
        if len(agreement):
            self.agreement_buffer.send(agreement)
        if live.category_agreement_changed:
            self.category_pipe.send(live.category_agreement)
            live.category_agreement_changed = False
        self.progress.value = int(round(live.fraction_done * 1000))
        self.summary.object = live.summary()

    def _on_status(self, *_events) -> None:
        state = self.state
        busy = state.busy or state.status in ("queued", "training", "pruning")
        self.train_button.disabled = busy
        self.stop_button.disabled = not busy
        self.status.alert_type = STATUS_COLORS.get(state.status, "secondary")
        self.status.object = f"**{state.status}**" + (f": {state.status_message}" if state.status_message else "")
        self.progress.bar_color = {"failed": "danger", "stopped": "warning", "completed": "success"}.get(state.status, "primary")
        self.progress.active = state.status == "queued"
        self.error.object = state.error
        self.error.visible = bool(state.error) and self.show_errors

    @property
    def points_shown(self) -> int:
        """Rows the loss plots hold (tests and benchmarks)."""
        return 0 if self.metrics_buffer is None else len(self.metrics_buffer.data)

    def __panel__(self):
        controls = pn.Row(self.train_button, self.stop_button, self.status, sizing_mode="stretch_width")
        return pn.Column(controls, self.error, self.progress, self.summary, self._plots, sizing_mode="stretch_width")
