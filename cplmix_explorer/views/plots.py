"""Plot elements of the explorer as plain functions: arrays / frames in, HoloViews elements or data out.

Everything here is testable without a server; the views only wire these to widgets and streams. Cell maps
go through datashader (``holoviews.operation.datashader``) so that a million cells are sent to the browser
as one image, with a thinned layer of invisible points underneath the cursor for hover.
"""

from __future__ import annotations

from dataclasses import dataclass

import colorcet
import datashader as ds
import holoviews as hv
import numpy as np
import pandas as pd
from holoviews.operation import decimate
from holoviews.operation.datashader import datashade, dynspread, rasterize

from ..model.consensus import Consensus
from ..analysis.metrics import compare_to_labels, contingency_table, match_categories

# Options below are Bokeh options; load the backend without notebook output (pn.extension does the rest).
import holoviews.plotting.bokeh  # noqa: E402,F401  isort: skip

GREY = "#d4d4d4"
HIGHLIGHT = "#111111"
PALETTE = list(colorcet.palette["glasbey_category10"])
#: Invisible points kept under the cursor for hover in a cell map (per view).
HOVER_SAMPLES = 3000


def category_colors(categories) -> dict[str, str]:
    """A stable colour per category name (Glasbey palette, cycled beyond 256)."""
    return {str(c): PALETTE[i % len(PALETTE)] for i, c in enumerate(categories)}


def pretty(name: str) -> str:
    """'reconstruction_arm0' -> 'reconstruction (arm 0)', 'coupling' -> 'coupling distance'."""
    if name == "coupling":
        return "coupling distance"
    if name == "loss":
        return "total loss"
    if "_arm" in name:
        term, arm = name.rsplit("_arm", 1)
        return f"{term.replace('_', ' ')} (arm {arm})"
    return name.replace("_", " ")


# -- training -------------------------------------------------------------------------------------------------
def metric_columns(names: list[str], term: str) -> list[str]:
    """The columns of one term: 'loss' -> ['loss']; 'reconstruction' -> ['reconstruction_arm0', ...]."""
    return [n for n in names if n == term or n.startswith(f"{term}_arm")]


def agreement_bars(agreement: np.ndarray, used: np.ndarray | None = None, threshold: float | None = None,
                   title: str = "Agreement per category", names: list[str] | None = None) -> hv.Overlay:
    """Bars of per-category agreement (K,) in category order; unused categories grey; an optional
    threshold line (pruning's ``min_consensus``); ``names`` (K,) label the bars (default: the numbers)."""
    agreement = np.asarray(agreement, float)
    used = np.ones(len(agreement), bool) if used is None else np.asarray(used, bool)
    frame = pd.DataFrame({
        "type": list(names) if names is not None else [str(k) for k in range(len(agreement))],
        "agreement": agreement,
        "status": np.where(used, "used", "unused"),
    })
    bars = hv.Bars(frame, hv.Dimension("type", label="type"), [hv.Dimension("agreement", range=(0, 1)), "status"]).opts(
        color=hv.dim("status").categorize({"used": PALETTE[0], "unused": GREY}), tools=["hover"], ylim=(0, 1.02),
        responsive=True, title=title, xlabel="type", ylabel="arm agreement", **x_label_options(frame["type"], 240),
    )
    overlay = hv.Overlay([bars])
    if threshold is not None:
        overlay = overlay * hv.HLine(threshold).opts(color="#d62728", line_dash="dashed", line_width=1.5)
    return overlay.opts(title=title)


# -- consensus ------------------------------------------------------------------------------------------------
@dataclass
class OrderedMatrix:
    """A matrix with named, ordered rows and columns (fractions of each row's cells)."""

    values: np.ndarray  # (rows, columns)
    rows: list[str]
    columns: list[str]
    counts: np.ndarray  # (rows, columns) cell counts behind the fractions

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.values, index=self.rows, columns=self.columns)


def order_consensus(consensus: Consensus, names: list[str] | None = None) -> OrderedMatrix:
    """The arm-vs-arm consensus matrix over the used categories, rows and columns in the same order (most
    agreed first), so entry (k, k) is category k's agreement M_kk and agreement shows on the diagonal."""
    matrix = np.asarray(consensus.matrix, float)
    used = np.flatnonzero(consensus.used)
    order = used[np.argsort(-consensus.agreement[used], kind="stable")]
    names = [names[k] if names is not None else str(k) for k in order]
    return OrderedMatrix(values=matrix[np.ix_(order, order)], rows=names, columns=names, counts=matrix[np.ix_(order, order)])


def x_label_options(labels, height: int) -> dict:
    """Options that keep a categorical x axis readable: names (more than 4 characters) or many categories are
    written upright, and the plot grows by their length so that its area keeps ``height``."""
    labels = [str(label) for label in labels]
    longest = max((len(label) for label in labels), default=0)
    if longest <= 4 and len(labels) <= 12:
        return {"xrotation": 0, "min_height": height}
    return {"xrotation": 90, "min_height": height + 7 * min(longest, 40)}


def matrix_heatmap(ordered: OrderedMatrix, xlabel: str, ylabel: str, title: str, value_label: str = "fraction of row") -> hv.HeatMap:
    """A heatmap of an :class:`OrderedMatrix` keeping its row / column order (first row at the top)."""
    rows, columns = ordered.rows, ordered.columns
    frame = pd.DataFrame({
        "column": np.tile(columns, len(rows)),
        "row": np.repeat(rows, len(columns)),
        "value": ordered.values.ravel(),
        "cells": np.asarray(ordered.counts).ravel(),
    })
    x = hv.Dimension("column", label=xlabel, values=list(columns))
    y = hv.Dimension("row", label=ylabel, values=list(reversed(rows)))
    return hv.HeatMap(frame, [x, y], [hv.Dimension("value", label=value_label, range=(0, 1)), "cells"]).opts(
        cmap="Blues", colorbar=True, tools=["hover"], title=title, responsive=True, clim=(0, 1),
        **x_label_options(columns, 320),
    )


def consensus_heatmap(consensus: Consensus, names: list[str] | None = None) -> hv.HeatMap:
    ordered = order_consensus(consensus, names)
    return matrix_heatmap(ordered, "type (other arm)", "type (arm)", "Arm-vs-arm consensus matrix", "fraction of the arm's cells")


@dataclass
class LabelComparison:
    """Inferred types against known labels: the ordered confusion and the scores of the assignment."""

    matrix: OrderedMatrix
    metrics: dict[str, float]  # acc, ari, nmi, kl
    labels: str


def compare_types_to_labels(types: np.ndarray, labels, labels_name: str) -> LabelComparison:
    """Confusion of inferred types (N,) against a label column (N,), rows ordered by the matching.

    Labels are ordered by size; each inferred type is placed next to the label it is matched to
    (Hungarian matching, leftover types to their majority label), so a good model shows a diagonal.
    Cells without a label are left out.
    """
    table, type_levels, label_levels = contingency_table(types, labels)
    label_order = np.argsort(-table.sum(axis=0), kind="stable")
    position = np.empty(len(label_order), int)
    position[label_order] = np.arange(len(label_order))
    matched = match_categories(table)
    row_order = sorted(range(len(type_levels)), key=lambda r: (position[matched[r]], -table[r].sum()))
    counts = table[np.ix_(row_order, label_order)]
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    ordered = OrderedMatrix(
        values=fractions,
        rows=[str(type_levels[r]) for r in row_order],
        columns=[str(label_levels[c]) for c in label_order],
        counts=counts,
    )
    return LabelComparison(matrix=ordered, metrics=compare_to_labels(types, labels), labels=labels_name)


def confusion_heatmap(comparison: LabelComparison) -> hv.HeatMap:
    scores = comparison.metrics
    title = f"Types vs {comparison.labels} · ACC {scores['acc']:.3f} · ARI {scores['ari']:.3f} · NMI {scores['nmi']:.3f}"
    return matrix_heatmap(comparison.matrix, comparison.labels, "inferred type", title, "fraction of the type's cells")


# -- cells ----------------------------------------------------------------------------------------------------
#: Most categories a categorical obs column may have to colour the map (cell identifiers and the like are left out).
MAX_CATEGORIES = 1000
#: Height of one entry of the cell map's legend, pixels.
LEGEND_ENTRY_PX = 13


def cell_frame(coordinates: np.ndarray, types: np.ndarray, confidence: np.ndarray, state: np.ndarray,
               obs: pd.DataFrame | None = None, label_columns: list[str] = ()) -> pd.DataFrame:
    """One row per cell: x, y, type (categorical), confidence, state 1..S, and the label columns."""
    n_types = int(types.max()) + 1 if len(types) else 0
    frame = pd.DataFrame({
        "x": coordinates[:, 0],
        "y": coordinates[:, 1],
        "type": pd.Categorical.from_codes(np.asarray(types, int), categories=[str(k) for k in range(n_types)]),
        "confidence": np.asarray(confidence, np.float32),
    })
    for dim in range(state.shape[1]):
        frame[f"state {dim + 1}"] = np.asarray(state[:, dim], np.float32)
    for column in label_columns:
        frame[column] = colour_values(obs[column])
    return frame


def colour_values(values: pd.Series) -> pd.Categorical | np.ndarray | None:
    """An obs column as the map colours it: categorical with text categories (categories, texts, booleans;
    missing values as "(missing)") or float32 numbers; None for a text column with more than
    ``MAX_CATEGORIES`` distinct values (identifiers)."""
    if pd.api.types.is_bool_dtype(values):
        return pd.Categorical(np.where(values.to_numpy(bool), "True", "False"))
    if not isinstance(values.dtype, pd.CategoricalDtype) and pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(dtype=np.float32, na_value=np.nan)
    if not isinstance(values.dtype, pd.CategoricalDtype) and values.nunique(dropna=True) > MAX_CATEGORIES:
        return None
    categorical = pd.Categorical(values)
    categorical = categorical.rename_categories([str(c) for c in categorical.categories])
    if categorical.isna().any():
        categorical = categorical.add_categories("(missing)").fillna("(missing)")
    return categorical


def colourable_columns(obs: pd.DataFrame) -> list[str]:
    """obs columns the map can be coloured by: numbers, booleans, and categories / texts with at most
    ``MAX_CATEGORIES`` distinct values."""
    columns = []
    for name in obs.columns:
        values = obs[name]
        if isinstance(values.dtype, pd.CategoricalDtype) or pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            columns.append(str(name))
        elif values.nunique(dropna=True) <= MAX_CATEGORIES:
            columns.append(str(name))
    return columns


def map_height(legend_entries: int = 0) -> int:
    """Least height of the cell map, pixels: enough for its legend's entries in one column."""
    return max(480, LEGEND_ENTRY_PX * legend_entries + 60)


def padded_range(values: np.ndarray, fraction: float = 0.05) -> tuple[float, float]:
    """(low, high) of ``values`` widened by ``fraction`` of their span on each side (no cell on the frame)."""
    values = np.asarray(values)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return (-1.0, 1.0)
    low, high = float(values.min()), float(values.max())
    pad = (high - low) * fraction or 1.0
    return (low - pad, high + pad)


def _spread(element):
    """Cells a few pixels wide where they are sparse (a short run's map, a zoom), single pixels where dense."""
    return dynspread(element, threshold=0.8, max_px=4, shape="circle")


def _legend(colors: dict[str, str], categories: list[str]) -> hv.Points:
    """The map's legend: one invisible point per category, coloured by it, so that Bokeh lists one entry per
    category (in the order given: types by number, not as texts) from a single element. One element, not one
    per category: every zoom re-renders each element of the overlay, and 40 of them cost more than the image."""
    frame = pd.DataFrame({"x": np.full(len(categories), np.nan), "y": np.full(len(categories), np.nan),
                          "category": list(categories)})
    return hv.Points(frame, ["x", "y"], ["category"]).opts(
        color="category", cmap={c: colors[c] for c in categories}, size=8, show_legend=True)


def cell_map(frame: pd.DataFrame, color_by: str = "type", highlight: str | None = None,
             hover_columns: list[str] | None = None, title: str = "Cells",
             colors: dict[str, str] | None = None) -> hv.Overlay:
    """A datashaded map of every cell in ``frame`` coloured by a categorical column (one colour per category,
    ``colors`` or a stable palette) or a numeric one (the mean of the cells in each pixel, viridis), with a
    thinned layer of invisible points that shows type, labels and confidence on hover.

    With ``highlight`` the cells of that type keep their colours and every other cell is drawn light grey
    beneath them."""
    if color_by not in frame.columns:
        raise ValueError(f"cannot colour by {color_by!r}: not a column of the cell table")
    hover_columns = [c for c in (hover_columns or ["type", "confidence"]) if c in frame.columns]
    vdims = list(dict.fromkeys([color_by, "type", *hover_columns]))
    points = hv.Points(frame, ["x", "y"], vdims)
    shown = points if highlight is None else points.select(type=str(highlight))
    categorical = isinstance(frame[color_by].dtype, pd.CategoricalDtype)
    layers = []
    if highlight is not None:
        layers.append(_spread(datashade(points, cmap=[GREY, GREY], min_alpha=255)).opts(show_legend=False))
    legend = None
    if categorical:
        categories = [str(c) for c in frame[color_by].cat.categories]
        palette = {**category_colors(categories), **(colors or {})}
        present = categories
        if highlight is not None:
            present = [str(c) for c in pd.unique(frame.loc[frame["type"] == str(highlight), color_by].dropna())]
            present = [c for c in categories if c in set(present)]
        # the image's own legend is off: the legend below lists only the categories drawn, once
        layers.append(_spread(datashade(shown, aggregator=ds.count_cat(color_by), color_key=palette, min_alpha=160)).opts(show_legend=False))
        legend = _legend(palette, present[:200]) if present else None
    else:
        values = frame[color_by].to_numpy()
        finite = values[np.isfinite(values)]
        clim = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
        if clim[0] == clim[1]:
            clim = (clim[0], clim[0] + 1.0)
        layers.append(_spread(rasterize(shown, aggregator=ds.mean(color_by))).opts(
            cmap="viridis", colorbar=True, clabel=color_by, clim=clim, tools=["hover"],
        ))
    hover = decimate(hv.Points(frame, ["x", "y"], list(dict.fromkeys(["type", *hover_columns]))), max_samples=HOVER_SAMPLES, random_seed=0).opts(
        tools=["hover"], size=6, fill_alpha=0, line_alpha=0, hover_fill_alpha=0.6, hover_line_alpha=1,
        hover_fill_color="#ffffff", hover_line_color="#222222",
    )
    overlay = layers[0]
    for layer in layers[1:]:
        overlay = overlay * layer
    overlay = overlay * hover
    options = dict(title=title, responsive=True, min_height=480, xlabel="map 1", ylabel="map 2",
                   xlim=padded_range(frame["x"].to_numpy()), ylim=padded_range(frame["y"].to_numpy()),
                   show_legend=legend is not None)
    if legend is not None:
        overlay = overlay * legend
        # one column of small entries; the plot grows with a long legend so that it never sticks out
        options.update(legend_position="right", min_height=map_height(len(legend)),
                       legend_opts={"label_text_font_size": "8pt", "glyph_height": 12, "spacing": 0, "padding": 4})
    return overlay.opts(**options)
