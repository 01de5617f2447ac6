"""Training monitor: start / stop training in the background and watch it live.

The training (a child process when started from the app, a thread when a notebook trains its model further)
only publishes engine events; the session's periodic callback (about once a second)
drains them into :class:`~cplmix_explorer.views.live.LiveTraining`. The progress bar and the ETA follow every
refresh; the figures get the new rows with one ``stream`` every ``plot_period`` seconds
(:mod:`~cplmix_explorer.views.live_plots`), so Bokeh sends only the increments and the browser redraws the
figures half as often; the per-arm terms share one place (tabs), so five figures are on the page, not seven
(each redraw costs the browser CPU, taken from training when browser and training share a machine).
"""

from __future__ import annotations

import time

import pandas as pd
import panel as pn
import param

from .live import STEP
from .live_plots import FIGURE_HEIGHT, PER_ARM_TABS, LiveFigures
from .state import ExplorerState, format_exception

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
    plot_period = param.Number(
        default=2.0, bounds=(0.0, None),
        doc="Seconds between redraws of the live figures while training (the progress and ETA follow every refresh; "
        "the end of a run is always drawn at once).",
    )

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
        self.figures: LiveFigures | None = None
        self._last_plot = -float("inf")  # time.monotonic() of the last figure update
        self._plots = pn.GridBox(ncols=2, sizing_mode="stretch_width")
        self._build_plots(self.state.live.names)
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
        """Create the figures for a run's metric columns (they depend on the number of arms)."""
        figures = self.figures = LiveFigures(names)

        def pane(plot):
            return pn.pane.Bokeh(plot, sizing_mode="stretch_width", min_height=FIGURE_HEIGHT)

        per_arm = [(label, pane(figures.curves[term])) for term, label in PER_ARM_TABS.items() if term in figures.curves]
        # dynamic tabs: only the chosen term's figure is in the browser, so only it is redrawn as points arrive
        self._plots.objects = [
            *(pane(plot) for term, plot in figures.curves.items() if term not in PER_ARM_TABS),
            *([pn.Tabs(*per_arm, dynamic=True, sizing_mode="stretch_width")] if per_arm else []),
            pane(figures.agreement_figure), pane(figures.category_figure),
        ]

    def _on_metrics(self, *_events) -> None:
        # The figures are Bokeh models changed in place, which a server session allows only under its document
        # lock. A button click that reaches the server while a field's change is still pending (Train or Open
        # run clicked right after typing or choosing) is handled outside the lock (Panel runs it as a task):
        # pn.state.execute then runs the update on the document's next tick, under the lock; under the lock, or
        # outside a server (a notebook, tests), it runs it at once.
        pn.state.execute(self._update_figures)

    def _update_figures(self) -> None:
        live = self.state.live
        finished = live.finished_status is not None
        new_run = live.take_restart() or live.names != self.figures.names
        if new_run:
            # a new run: same arms, same figures emptied (cheap); other arms, new figures
            if live.names == self.figures.names:
                self.figures.clear()
            else:
                self._build_plots(live.names)
            live.rewind()
        self.progress.value = int(round(live.fraction_done * 1000))
        self.summary.object = live.summary()
        now = time.monotonic()
        if not (finished or new_run or now - self._last_plot >= self.plot_period):
            return  # the rows wait in ``live`` for the next figure update
        self._last_plot = now
        frame, replace = live.take_rows(flush=finished)
        self.figures.show_steps(0, max(live.total_steps, live.step))
        self.figures.show_metrics(frame, replace)
        self.figures.show_agreement(live.take_agreement_rows())
        if live.category_agreement_changed:
            self.figures.show_categories(live.category_agreement)
            live.category_agreement_changed = False
        pn.io.push_notebook(self._plots)  # in a notebook, send the sources' changes (no-op on a server)

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
        return len(self.figures.metrics.data[STEP])

    def metrics_shown(self) -> pd.DataFrame:
        """What the loss plots show: step and one column per metric, one row per point."""
        return self.figures.metrics_frame()

    def agreement_shown(self) -> pd.DataFrame:
        """What the agreement plot shows: one row per evaluation."""
        return self.figures.agreement_frame()

    def __panel__(self):
        controls = pn.Row(self.train_button, self.stop_button, self.status, sizing_mode="stretch_width")
        return pn.Column(controls, self.error, self.progress, self.summary, self._plots, sizing_mode="stretch_width")
