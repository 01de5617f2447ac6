"""The training monitor's live figures, as plain Bokeh figures over three ``ColumnDataSource`` objects.

Each refresh appends the new rows with ``ColumnDataSource.stream`` (a hinted event: Bokeh sends only the
increment and does not recompute the document's model graph). HoloViews' ``DynamicMap`` + ``Buffer`` does
the same streaming but also re-runs its plotting pipeline and a full-document model recomputation on every
refresh: on the 2-core reference machine that took ~0.5 s of the server's time per refresh and made training
in the app 56 % slower (``benchmarks/app_overhead.py``); these figures cost ~6 ms per refresh.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from bokeh.models import ColumnDataSource, DataRange1d, FactorRange, HoverTool, Range1d
from bokeh.plotting import figure

from .live import AGREEMENT_COLUMNS, STEP
from .plots import PALETTE, metric_columns, pretty

#: The loss panels: (title, term); per-arm terms get one curve per arm.
METRIC_PANELS = [
    ("Total loss", "loss"),
    ("Coupling distance (arms' type posteriors)", "coupling"),
    ("Reconstruction per arm", "reconstruction"),
    ("State KL per arm", "kl"),
    ("Type entropy per arm", "entropy"),
]
TOOLS = "pan,wheel_zoom,box_zoom,reset,save"
FIGURE_HEIGHT = 260  # px


class LiveFigures:
    """Figures and data sources of one run's metrics.

    ``names``: the run's metric columns (``loss``, ``coupling``, ``reconstruction_arm0``, ...); the figures
    depend on them (one curve per arm), the data does not: :meth:`clear` empties the sources for a new run.
    """

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.metrics = ColumnDataSource({column: [] for column in [STEP, *self.names]})
        self.agreement = ColumnDataSource({column: [] for column in AGREEMENT_COLUMNS})
        self.categories = ColumnDataSource({"type": [], "agreement": []})
        steps = DataRange1d()  # shared: zooming one curve plot zooms them all along the step axis
        self.figures = [
            self._metric_figure(title, metric_columns(self.names, term), steps)
            for title, term in METRIC_PANELS
            if metric_columns(self.names, term) or not self.names
        ]
        self.figures.append(self._agreement_figure(steps))
        self.figures.append(self._category_figure())

    # -- data ---------------------------------------------------------------------------------------------
    def show_metrics(self, rows: pd.DataFrame, replace: bool) -> None:
        """Append ``rows`` (step + metric columns) to the curves, or replace what they show."""
        data = {column: rows[column].to_numpy(float) for column in [STEP, *self.names]}
        if replace:
            self.metrics.data = data
        elif len(rows):
            self.metrics.stream(data)

    def show_agreement(self, rows: pd.DataFrame) -> None:
        """Append evaluation rows (step, mean_agreement, min_agreement, validation_loss)."""
        if len(rows):
            self.agreement.stream({column: rows[column].to_numpy(float) for column in AGREEMENT_COLUMNS})

    def show_categories(self, agreement: np.ndarray) -> None:
        """Bars of the latest per-category agreement, shape (K,)."""
        agreement = np.asarray(agreement, float)
        types = [str(k) for k in range(len(agreement))]
        self.category_figure.x_range.factors = types
        self.categories.data = {"type": types, "agreement": agreement}

    def clear(self) -> None:
        self.metrics.data = {column: [] for column in self.metrics.data}
        self.agreement.data = {column: [] for column in AGREEMENT_COLUMNS}
        self.show_categories(np.zeros(0))

    def metrics_frame(self) -> pd.DataFrame:
        return _frame(self.metrics)

    def agreement_frame(self) -> pd.DataFrame:
        return _frame(self.agreement)

    @property
    def category_figure(self):
        return self.figures[-1]

    # -- figures ------------------------------------------------------------------------------------------
    def _figure(self, title: str, ylabel: str, x_range=None, **kwargs):
        plot = figure(title=title, tools=TOOLS, height=FIGURE_HEIGHT, sizing_mode="stretch_width",
                      x_range=x_range if x_range is not None else DataRange1d(), **kwargs)
        plot.yaxis.axis_label = ylabel
        plot.toolbar.logo = None
        return plot

    def _metric_figure(self, title: str, columns: list[str], steps: DataRange1d):
        plot = self._figure(title, pretty(columns[0]) if len(columns) == 1 else title.split(" per ")[0], steps)
        plot.xaxis.axis_label = "step"
        renderers = []
        for i, column in enumerate(columns):
            legend = {"legend_label": pretty(column)} if len(columns) > 1 else {}
            renderers.append(plot.line(STEP, column, source=self.metrics, color=PALETTE[i % len(PALETTE)], line_width=2,
                                       **legend))
        if len(columns) > 1:
            plot.legend.location = "top_right"
            plot.legend.click_policy = "hide"
        if renderers:
            plot.add_tools(HoverTool(renderers=renderers, mode="vline",
                                     tooltips=[("step", f"@{STEP}{{0,0}}"), ("value", "$y{0.000}")]))
        return plot

    def _agreement_figure(self, steps: DataRange1d):
        plot = self._figure("Arm agreement", "arm agreement", steps, y_range=Range1d(0, 1.02))
        plot.xaxis.axis_label = "step"
        mean = plot.line(STEP, "mean_agreement", source=self.agreement, color=PALETTE[0], line_width=2, legend_label="mean")
        plot.scatter(STEP, "mean_agreement", source=self.agreement, color=PALETTE[0], size=5)
        plot.line(STEP, "min_agreement", source=self.agreement, color=PALETTE[1], line_width=2, line_dash="dashed",
                  legend_label="minimum")
        plot.legend.location = "bottom_right"
        plot.add_tools(HoverTool(renderers=[mean], mode="vline", tooltips=[
            ("step", f"@{STEP}{{0,0}}"), ("mean", "@mean_agreement{0.000}"), ("minimum", "@min_agreement{0.000}")]))
        return plot

    def _category_figure(self):
        plot = self._figure("Agreement per category (latest evaluation)", "arm agreement", FactorRange(),
                            y_range=Range1d(0, 1.02))
        plot.xaxis.axis_label = "type"
        plot.vbar(x="type", top="agreement", width=0.8, source=self.categories, color=PALETTE[0])
        plot.add_tools(HoverTool(tooltips=[("type", "@type"), ("agreement", "@agreement{0.000}")]))
        plot.xgrid.grid_line_color = None
        return plot


def _frame(source: ColumnDataSource) -> pd.DataFrame:
    """What a source holds, as a frame of floats (one column per data column)."""
    return pd.DataFrame({column: np.asarray(values, float) for column, values in source.data.items()})
