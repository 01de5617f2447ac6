"""The training monitor's live figures, as plain Bokeh figures over three ``ColumnDataSource`` objects.

Each refresh appends the new rows with ``ColumnDataSource.stream`` (a hinted event: Bokeh sends only the
increment and does not recompute the document's model graph). HoloViews' ``DynamicMap`` + ``Buffer`` does
the same streaming but also re-runs its plotting pipeline and a full-document model recomputation on every
refresh, which took the server's time from training (``benchmarks/app_overhead.py``); these figures cost a
small fraction of that.

The axes hold still while points arrive: the step axis spans the whole run from its start, and each value axis is
set here to the data's extent rounded out to a round number (:func:`nice_range`), so it changes only now and then.
Auto-ranging axes (``DataRange1d``) change with every new point; each change makes the browser measure the tick
labels and lay the figure out again, which cost it about twice the CPU of drawing the curves. The ranges and the
figures are not synchronised back to the server (``syncable=False``): the browser's zooming is its own business.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from bokeh.models import ColumnDataSource, FactorRange, HoverTool, Range1d
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
#: The per-arm terms, shown one at a time (tabs in the monitor): term -> tab label. Every figure on the page costs
#: the browser CPU at each redraw, taken from training when the two share a machine.
PER_ARM_TABS = {"reconstruction": "Reconstruction", "kl": "State KL", "entropy": "Type entropy"}
TOOLS = "pan,wheel_zoom,box_zoom,reset,save"
FIGURE_HEIGHT = 260  # px


def nice_range(low: float, high: float) -> tuple[float, float]:
    """The interval ``low .. high`` padded by 5 % of its span and widened to multiples of a round step (1, 2 or 5
    times a power of ten, about a tenth of the span), so that it stays the same while the data move a little.
    Data that are never negative (the coupling distance, the KL terms) get an axis that does not go below 0."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return 0.0, 1.0
    non_negative = low >= 0
    span = high - low
    if span <= 0:
        span = abs(high) or 1.0
    low, high = low - 0.05 * span, high + 0.05 * span
    magnitude = 10.0 ** math.floor(math.log10(span / 10))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= span / 10)
    start = math.floor(low / step) * step
    return (max(start, 0.0) if non_negative else start), math.ceil(high / step) * step


def _set_range(axis_range: Range1d, start: float, end: float) -> None:
    """Show ``start .. end`` (also where the reset tool goes back to); no message when nothing changes."""
    if (axis_range.start, axis_range.end) != (start, end):
        axis_range.update(start=start, end=end, reset_start=start, reset_end=end)


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
        self.steps = Range1d(0, 1, syncable=False)  # shared: zooming one curve plot zooms them all along the steps
        self._value_ranges: list[tuple[Range1d, list[str]]] = []  # each curve figure's value axis and its columns
        # the smallest and largest value each of them has shown this run; (inf, -inf): none yet, axis not fitted
        self._extents: list[tuple[float, float]] = []
        #: term -> its curve figure
        self.curves = {
            term: self._metric_figure(title, metric_columns(self.names, term))
            for title, term in METRIC_PANELS
            if metric_columns(self.names, term) or not self.names
        }
        self.agreement_figure = self._agreement_figure()
        self.category_figure = self._category_figure()
        self.figures = [*self.curves.values(), self.agreement_figure, self.category_figure]

    # -- data ---------------------------------------------------------------------------------------------
    def show_metrics(self, rows: pd.DataFrame, replace: bool) -> None:
        """Append ``rows`` (step + metric columns) to the curves, or replace what they show."""
        data = {column: rows[column].to_numpy(float) for column in [STEP, *self.names]}
        if replace:
            self.metrics.data = data
            self._forget_extents()
        elif len(rows):
            self.metrics.stream(data)
        for i, (value_range, columns) in enumerate(self._value_ranges):
            values = np.concatenate([data[column] for column in columns]) if columns else np.zeros(0)
            values = values[np.isfinite(values)]
            if not len(values):
                continue
            seen_low, seen_high = self._extents[i]
            low, high = self._extents[i] = min(seen_low, float(values.min())), max(seen_high, float(values.max()))
            fitted = seen_low <= seen_high  # (a new record forgot the extents, so it is fitted afresh)
            if not (fitted and value_range.start <= low and high <= value_range.end):
                _set_range(value_range, *nice_range(low, high))  # only when a value leaves what is shown

    def _forget_extents(self) -> None:
        self._extents = [(math.inf, -math.inf)] * len(self._value_ranges)

    def show_steps(self, first: int, last: int) -> None:
        """Let the step axis span the run's steps ``first`` .. ``last``."""
        _set_range(self.steps, float(first), float(max(last, first + 1)))

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
        self._forget_extents()
        self.agreement.data = {column: [] for column in AGREEMENT_COLUMNS}
        self.show_categories(np.zeros(0))

    def metrics_frame(self) -> pd.DataFrame:
        return _frame(self.metrics)

    def agreement_frame(self) -> pd.DataFrame:
        return _frame(self.agreement)

    # -- figures ------------------------------------------------------------------------------------------
    def _figure(self, title: str, ylabel: str, x_range, y_range):
        plot = figure(title=title, tools=TOOLS, height=FIGURE_HEIGHT, sizing_mode="stretch_width",
                      x_range=x_range, y_range=y_range, syncable=False)
        plot.yaxis.axis_label = ylabel
        plot.toolbar.logo = None
        return plot

    def _metric_figure(self, title: str, columns: list[str]):
        values = Range1d(0, 1, syncable=False)
        self._value_ranges.append((values, columns))
        self._extents.append((math.inf, -math.inf))
        plot = self._figure(title, pretty(columns[0]) if len(columns) == 1 else title.split(" per ")[0], self.steps, values)
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

    def _agreement_figure(self):
        plot = self._figure("Arm agreement", "arm agreement", self.steps, Range1d(0, 1.02, syncable=False))
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
                            Range1d(0, 1.02, syncable=False))
        plot.xaxis.axis_label = "type"
        plot.vbar(x="type", top="agreement", width=0.8, source=self.categories, color=PALETTE[0])
        plot.add_tools(HoverTool(tooltips=[("type", "@type"), ("agreement", "@agreement{0.000}")]))
        plot.xgrid.grid_line_color = None
        return plot


def _frame(source: ColumnDataSource) -> pd.DataFrame:
    """What a source holds, as a frame of floats (one column per data column)."""
    return pd.DataFrame({column: np.asarray(values, float) for column, values in source.data.items()})
