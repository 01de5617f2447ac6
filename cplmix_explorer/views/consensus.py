"""Consensus: how far the arms agree on each type, and category pruning with its K-vs-agreement trajectory."""

from __future__ import annotations

import importlib.util

import holoviews as hv
import pandas as pd
import panel as pn
import param

from ..config import PruningOptions, default_fine_tune_steps
from . import plots
from .state import ExplorerState, format_exception
from .widgets import option_widget

TRAJECTORY_COLUMNS = ["k", "min_agreement", "mean_agreement", "removed"]


def pruning_available() -> bool:
    """Whether this installation has category pruning (cplmix_explorer.workflows.pruning)."""
    return importlib.util.find_spec("cplmix_explorer.workflows.pruning") is not None


def trajectory_plot(rounds: pd.DataFrame, threshold: float | None = None, chosen_k: int | None = None,
                    k_range: tuple[float, float] | None = None) -> hv.Overlay:
    """Minimum and mean agreement against the number of types K, one point per pruning round; K falls to the
    right. The K axis spans ``k_range`` (the pruning's start K and its floor) or the rounds' K, and follows
    the data at every update (``framewise``), so the points show from the first round on."""
    frame = rounds if len(rounds.columns) else pd.DataFrame(columns=TRAJECTORY_COLUMNS)
    frame = frame.astype({"k": float, "min_agreement": float, "mean_agreement": float}) if len(frame) else frame
    ks = [float(k) for k in frame["k"]] if len(frame) else []
    if k_range is not None:
        ks += [float(k) for k in k_range]
    low, high = (min(ks), max(ks)) if ks else (0.0, 1.0)
    k = hv.Dimension("k", label="number of types K")
    agreement = hv.Dimension("min_agreement", label="arm agreement", range=(0, 1))
    minimum = hv.Curve(frame, k, agreement, label="minimum").opts(color=plots.PALETTE[1])
    mean = hv.Curve(frame, k, hv.Dimension("mean_agreement", label="arm agreement", range=(0, 1)), label="mean").opts(color=plots.PALETTE[0])
    points = hv.Scatter(frame, k, [agreement, "removed"]).opts(color=plots.PALETTE[1], size=8, tools=["hover"])
    overlay = minimum * mean * points
    if threshold is not None:
        overlay = overlay * hv.HLine(threshold).opts(color="#d62728", line_dash="dashed", line_width=1.5)
    if chosen_k is not None:
        overlay = overlay * hv.VLine(float(chosen_k)).opts(color="#2ca02c", line_width=2)
    # framewise on the elements: a DynamicMap's overlay keeps its first ranges unless its elements ask for new ones
    overlay = overlay.map(lambda element: element.opts(framewise=True), [hv.Curve, hv.Scatter, hv.HLine, hv.VLine])
    ticks = list(range(int(low), int(high) + 1))
    ticks = ticks if len(ticks) <= 25 else None  # whole numbers of types, while there are few enough to write
    return overlay.opts(title="Pruning: agreement against K", responsive=True, min_height=260, ylim=(0, 1.02),
                        xlim=(low - 0.5, high + 0.5), xticks=ticks, invert_xaxis=True, legend_position="bottom_left")


def pruning_progress(state: ExplorerState) -> tuple[int, int, str]:
    """(rounds done, most rounds possible, one line) for the running or last pruning: the round, K, the least
    agreed type against the threshold, and the fine-tuning step of the current round."""
    plan = state.pruning_plan
    if plan is None:
        return 0, 1, ""
    most = max(plan["start_k"] - plan["min_types"], 1)
    rounds = state.pruning_rounds
    done = max(len(rounds) - 1, 0)  # the first record is the start, before any removal
    if not rounds:
        return 0, most, f"pruning from K = {plan['start_k']}: measuring the arms' agreement..."
    last = rounds[-1]
    text = (f"round {done} of at most {most} · K = {last['k']} · least agreed type {float(last['min_agreement']):.3f} "
            f"(threshold {plan['min_consensus']:g}, stop at K = {plan['min_types']})")
    live = state.live
    if state.status == "pruning" and live.total_steps > live.start_step and live.finished_status is None:
        text += f" · fine-tuning step {live.step - live.start_step:,} / {live.total_steps - live.start_step:,}"
    return min(done, most), most, text


class ConsensusView(pn.viewable.Viewer):
    """The arm-vs-arm consensus matrix, per-category agreement, and pruning run from the app."""

    state = param.ClassSelector(class_=ExplorerState)

    def __init__(self, state=None, **params):
        super().__init__(state=ExplorerState.of(state), **params)
        available = pruning_available()
        defaults = PruningOptions()
        self.min_consensus = option_widget(defaults, "min_consensus", widget=pn.widgets.FloatSlider, label="Keep types with agreement at least",
                                           start=0.5, end=1.0, step=0.01, format="0.00", sizing_mode="stretch_width")
        self.min_types = option_widget(defaults, "min_types", bounded=True, label="Stop at K =", sizing_mode="stretch_width")
        self.fine_tune_steps = option_widget(defaults, "fine_tune_steps", bounded=True, label="Fine-tuning steps per round",
                                             sizing_mode="stretch_width")
        self.prune_button = pn.widgets.Button(label="Prune categories", color="primary", disabled=not available)
        self.stop_button = pn.widgets.Button(label="Stop", color="danger", disabled=True)
        note = "" if available else "Category pruning is not part of this installation yet."
        self.message = pn.pane.Alert(note, alert_type="warning" if note else "danger", visible=bool(note), sizing_mode="stretch_width")
        self.progress = pn.indicators.Progress(value=0, max=1, visible=False, sizing_mode="stretch_width", bar_color="primary")
        self.progress_text = pn.pane.Markdown("", visible=False, sizing_mode="stretch_width", styles={"font-size": "0.9em"})
        self.reason = pn.pane.Alert("", alert_type="info", visible=False, sizing_mode="stretch_width")
        #: what a pruning of the shown model with the form's options would do (follows the form as it is edited)
        self.plan_text = pn.pane.Markdown("", sizing_mode="stretch_width", styles={"font-size": "0.9em"})
        self.min_types.param.watch(self._on_plan, "value")
        self.fine_tune_steps.param.watch(self._on_plan, "value")
        self.trajectory_pipe = hv.streams.Pipe(data=pd.DataFrame(columns=TRAJECTORY_COLUMNS))
        self.prune_button.on_click(self._on_prune)
        self.stop_button.on_click(lambda _event: self.state.stop())
        self.state.param.watch(self._on_rounds, "pruning_tick")
        self.state.param.watch(self._on_progress, "metrics_tick")
        self.state.param.watch(self._on_status, ["status", "error"])
        self.state.param.watch(self._on_model, "model")
        self.min_consensus.param.watch(self._on_rounds, "value_throttled")
        self._trajectory = hv.DynamicMap(self._trajectory_element, streams=[self.trajectory_pipe])
        self._on_model()

    def options(self) -> PruningOptions:
        """The form's pruning options (the CLI's declaration; an empty steps field means the default)."""
        return PruningOptions().update(min_consensus=float(self.min_consensus.value), min_types=int(self.min_types.value),
                                       fine_tune_steps=self.fine_tune_steps.value)

    def _on_model(self, *_events) -> None:
        """The empty steps field shows the default it stands for: a tenth of the shown model's training steps."""
        model = self.state.model
        self.fine_tune_steps.placeholder = (
            f"default: {default_fine_tune_steps(model.config.steps)}" if model is not None else "default: a tenth of the run's steps"
        )
        self._on_plan()

    def _on_plan(self, *_events) -> None:
        """Say what pruning the shown model would do with the form's options: from its K down to the floor."""
        model = self.state.model
        if model is None:
            self.plan_text.object = ""
            return
        k, floor = model.module.n_types, self._form_floor(model)
        steps = self.fine_tune_steps.value or default_fine_tune_steps(model.config.steps)
        self.plan_text.object = (f"From K = {k} down to K = {floor} at most ({k - floor} rounds at most), "
                                 f"{steps} fine-tuning steps per round.")

    def _form_floor(self, model) -> int:
        """The K the form's 'Stop at K' would stop a pruning of ``model`` at (2 while the field is empty)."""
        return min(int(self.min_types.value or 2), model.module.n_types)

    def _trajectory_element(self, data):
        result = self.state.pruning_result
        chosen = getattr(result, "chosen_k", None) if result is not None and self.state.status != "pruning" else None
        plan, model = self.state.pruning_plan, self.state.model
        if plan is not None:
            k_range = (plan["start_k"], plan["min_types"])
        else:  # before any pruning: the range a pruning of the shown model would cover
            k_range = (model.module.n_types, self._form_floor(model)) if model is not None else None
        return trajectory_plot(data, self.min_consensus.value, chosen, k_range)

    def _on_prune(self, _event=None) -> None:
        try:
            self.state.start_pruning(self.options())
            self.trajectory_pipe.send(pd.DataFrame(columns=TRAJECTORY_COLUMNS))
            self._show("")
            self.reason.visible = False
            self._on_progress()
        except Exception as error:
            self._show(format_exception(error))

    def _on_rounds(self, *_events) -> None:
        self.trajectory_pipe.send(pd.DataFrame(self.state.pruning_rounds, columns=TRAJECTORY_COLUMNS))
        self._on_progress()

    def _on_progress(self, *_events) -> None:
        if self.state.pruning_plan is None:
            return
        done, most, text = pruning_progress(self.state)
        self.progress.param.update(max=most, value=done, visible=True,
                                   bar_color={"failed": "danger", "stopped": "warning", "completed": "success"}.get(self.state.status, "primary"))
        self.progress_text.param.update(object=text, visible=bool(text))

    def _on_status(self, *_events) -> None:
        pruning = self.state.status == "pruning" or (self.state.busy and self.state.job.kind == "pruning")
        self.stop_button.disabled = not pruning
        self.prune_button.disabled = self.state.busy or not pruning_available()
        ours = self.state.job is not None and self.state.job.kind == "pruning"
        if self.state.status == "failed" and ours:
            self._show(self.state.error)
        if self.state.status in ("completed", "stopped") and ours:
            self._on_rounds()
            result = self.state.pruning_result
            if result is not None:
                self.reason.param.update(object=result.reason, visible=True,
                                         alert_type="warning" if result.status == "min_types" else "info")

    def _show(self, text: str) -> None:
        self.message.object = text
        self.message.alert_type = "danger"
        self.message.visible = bool(text)

    def _matrices(self, inference=None, threshold: float = PruningOptions.param.min_consensus.default, names=None):
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
            self.min_consensus, self.min_types, self.fine_tune_steps, self.plan_text,
            pn.Row(self.prune_button, self.stop_button),
            self.message, self.progress, self.progress_text, self.reason, width=320,
        )
        trajectory = pn.pane.HoloViews(self._trajectory, sizing_mode="stretch_width", min_height=280)
        matrices = pn.bind(self._matrices, inference=self.state.param.inference, threshold=self.min_consensus.param.value_throttled,
                           names=self.state.param.names_tick)
        return pn.Column(pn.panel(matrices, lazy=True), pn.Row(controls, trajectory, sizing_mode="stretch_width"), sizing_mode="stretch_width")


__all__ = ["ConsensusView", "pruning_available", "pruning_progress", "trajectory_plot"]
