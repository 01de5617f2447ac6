"""Consensus: how far the arms agree on each type, and category pruning with its K-vs-agreement trajectory."""

from __future__ import annotations

import importlib.util

import holoviews as hv
import pandas as pd
import panel as pn
import param

from . import plots
from .state import ExplorerState, format_exception

TRAJECTORY_COLUMNS = ["k", "min_agreement", "mean_agreement", "removed"]


def pruning_available() -> bool:
    """Whether this installation has category pruning (cplmix_explorer.analysis.pruning)."""
    return importlib.util.find_spec("cplmix_explorer.analysis.pruning") is not None


def trajectory_plot(rounds: pd.DataFrame, threshold: float | None = None, chosen_k: int | None = None) -> hv.Overlay:
    """Minimum and mean agreement against the number of types K, one point per pruning round."""
    frame = rounds if len(rounds.columns) else pd.DataFrame(columns=TRAJECTORY_COLUMNS)
    frame = frame.astype({"k": float, "min_agreement": float, "mean_agreement": float}) if len(frame) else frame
    k = hv.Dimension("k", label="number of types K")
    agreement = hv.Dimension("min_agreement", label="arm agreement", range=(0, 1))
    minimum = hv.Curve(frame, k, agreement, label="minimum").opts(color=plots.PALETTE[1])
    mean = hv.Curve(frame, k, hv.Dimension("mean_agreement", label="arm agreement", range=(0, 1)), label="mean").opts(color=plots.PALETTE[0])
    points = hv.Scatter(frame, k, [agreement, "removed"]).opts(color=plots.PALETTE[1], size=6, tools=["hover"])
    overlay = minimum * mean * points
    if threshold is not None:
        overlay = overlay * hv.HLine(threshold).opts(color="#d62728", line_dash="dashed", line_width=1.5)
    if chosen_k is not None:
        overlay = overlay * hv.VLine(float(chosen_k)).opts(color="#2ca02c", line_width=2)
    return overlay.opts(title="Pruning: agreement against K", responsive=True, min_height=260, ylim=(0, 1.02),
                        invert_xaxis=True, legend_position="bottom_left")


class ConsensusView(pn.viewable.Viewer):
    """The arm-vs-arm consensus matrix, per-category agreement, and pruning run from the app."""

    state = param.ClassSelector(class_=ExplorerState)

    def __init__(self, state=None, **params):
        super().__init__(state=ExplorerState.of(state), **params)
        available = pruning_available()
        self.min_consensus = pn.widgets.FloatSlider(label="Keep types with agreement at least", start=0.5, end=1.0, step=0.01,
                                                    value=0.95, sizing_mode="stretch_width")
        self.min_types = pn.widgets.IntInput(label="Stop at K =", value=2, start=2, sizing_mode="stretch_width")
        self.fine_tune_steps = pn.widgets.IntInput(label="Fine-tuning steps per round", value=200, start=0, sizing_mode="stretch_width")
        self.prune_button = pn.widgets.Button(label="Prune categories", color="primary", disabled=not available)
        self.stop_button = pn.widgets.Button(label="Stop", color="danger", disabled=True)
        note = "" if available else "Category pruning is not part of this installation yet."
        self.message = pn.pane.Alert(note, alert_type="warning" if note else "danger", visible=bool(note), sizing_mode="stretch_width")
        self.trajectory_pipe = hv.streams.Pipe(data=pd.DataFrame(columns=TRAJECTORY_COLUMNS))
        self.prune_button.on_click(self._on_prune)
        self.stop_button.on_click(lambda _event: self.state.stop())
        self.state.param.watch(self._on_rounds, "pruning_tick")
        self.state.param.watch(self._on_status, ["status", "error"])
        self.min_consensus.param.watch(self._on_rounds, "value_throttled")
        self._trajectory = hv.DynamicMap(self._trajectory_element, streams=[self.trajectory_pipe])

    def _trajectory_element(self, data):
        result = self.state.pruning_result
        chosen = getattr(result, "chosen_k", None) if result is not None and self.state.status != "pruning" else None
        return trajectory_plot(data, self.min_consensus.value, chosen)

    def _on_prune(self, _event=None) -> None:
        try:
            self.state.start_pruning(self.min_consensus.value, self.min_types.value, self.fine_tune_steps.value)
            self.trajectory_pipe.send(pd.DataFrame(columns=TRAJECTORY_COLUMNS))
            self._show("")
        except Exception as error:
            self._show(format_exception(error))

    def _on_rounds(self, *_events) -> None:
        self.trajectory_pipe.send(pd.DataFrame(self.state.pruning_rounds, columns=TRAJECTORY_COLUMNS))

    def _on_status(self, *_events) -> None:
        pruning = self.state.status == "pruning" or (self.state.busy and self.state.job.kind == "pruning")
        self.stop_button.disabled = not pruning
        self.prune_button.disabled = self.state.busy or not pruning_available()
        if self.state.status == "failed" and self.state.job is not None and self.state.job.kind == "pruning":
            self._show(self.state.error)
        if self.state.status in ("completed", "stopped") and self.state.job is not None and self.state.job.kind == "pruning":
            self._on_rounds()

    def _show(self, text: str) -> None:
        self.message.object = text
        self.message.alert_type = "danger"
        self.message.visible = bool(text)

    def _matrices(self, inference=None, threshold: float = 0.95, names=None):
        consensus = self.state.consensus
        if self.state.model is None:
            return pn.pane.Markdown("Train a model or open a run to see how its arms agree.")
        if consensus is None:
            return pn.pane.Markdown("This model has a single arm: there is no second arm to agree with.")
        mean, minimum = consensus.mean, consensus.min
        header = pn.pane.Markdown(
            f"**{int(consensus.used.sum())} of {len(consensus.used)} types used** · mean agreement {mean:.3f} · "
            f"minimum {minimum:.3f} · {self.state.model_name}"
        )
        names = self.state.type_names()
        heatmap = pn.pane.HoloViews(plots.consensus_heatmap(consensus, names), sizing_mode="stretch_width", min_height=360)
        bars = pn.pane.HoloViews(
            plots.agreement_bars(consensus.agreement, consensus.used, threshold=threshold, names=names),
            sizing_mode="stretch_width", min_height=360,
        )
        return pn.Column(header, pn.Row(heatmap, bars, sizing_mode="stretch_width"), sizing_mode="stretch_width")

    def __panel__(self):
        controls = pn.Column(
            pn.pane.Markdown("### Category pruning"),
            pn.pane.Markdown(
                "Repeatedly removes the type the arms agree on least, fine-tunes, and records K with the "
                "agreement, until every type passes the threshold. The shown model is left as it is; the pruned "
                "copy replaces it when pruning ends.", styles={"font-size": "0.9em"},
            ),
            self.min_consensus, self.min_types, self.fine_tune_steps, pn.Row(self.prune_button, self.stop_button),
            self.message, width=320,
        )
        trajectory = pn.pane.HoloViews(self._trajectory, sizing_mode="stretch_width", min_height=280)
        matrices = pn.bind(self._matrices, inference=self.state.param.inference, threshold=self.min_consensus.param.value_throttled,
                           names=self.state.param.names_tick)
        return pn.Column(pn.panel(matrices, lazy=True), pn.Row(controls, trajectory, sizing_mode="stretch_width"), sizing_mode="stretch_width")


__all__ = ["ConsensusView", "pruning_available", "trajectory_plot"]
