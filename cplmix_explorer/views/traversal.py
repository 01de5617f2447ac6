"""Traversal: sweep one state dimension of a type (or compare two types) and see which genes respond.

The sweep itself is :func:`cplmix_explorer.analysis.traversal.traverse` / ``compare_types``; the exported
figures are drawn on the server by :mod:`cplmix_explorer.analysis.export` (matplotlib, no browser).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from ..analysis import export as exporting
from ..analysis.traversal import DEFAULT_GROUPS, MINMAX, ZSCORE, Traversal, TypeComparison, compare_types, traverse
from ..config import TraversalOptions
from ..data.gene_sets import HOUSEKEEPING, IMMEDIATE_EARLY, MARKERS, PRIMARY_RESPONSE
from ..errors import CplmixError
from ..files import atomic_write_bytes
from .safety import sanitize_filename
from .state import ExplorerState, format_exception
from .widgets import option_widget

NO_COMPARISON = -1  # the "compare with" choice meaning: no second type
GROUP_CHOICES = [MARKERS, IMMEDIATE_EARLY, HOUSEKEEPING, PRIMARY_RESPONSE]
#: Largest custom gene list accepted from an upload.
MAX_GENE_LIST_BYTES = 1 * 2**20
#: Column names of the gene-group table as the app shows them.
SUMMARY_COLUMNS = {
    "type_label": "label", "median_amplitude": "median amplitude", "median_abs_rho": "median |rho|",
    "median_rho": "median rho", "fraction_monotone": "monotone", "max_amplitude": "largest amplitude", "top_gene": "its gene",
}
GROUP_COLORS = {MARKERS: "#1f77b4", IMMEDIATE_EARLY: "#d62728", HOUSEKEEPING: "#2ca02c", PRIMARY_RESPONSE: "#9467bd"}


def parse_gene_list(text: str) -> list[str]:
    """Gene symbols typed or uploaded: separated by commas, semicolons, tabs, spaces or new lines; ``#``
    starts a comment; duplicates dropped, order kept."""
    genes: list[str] = []
    for line in str(text).splitlines():
        line = line.split("#", 1)[0]
        for token in line.replace(",", " ").replace(";", " ").replace("\t", " ").split():
            if token not in genes:
                genes.append(token)
    return genes


def gene_group_request(groups: list[str], custom: list[str]) -> list:
    """What :func:`traverse` takes as ``genes``: the chosen shipped groups in order, then a custom group."""
    request: list = [g for g in GROUP_CHOICES if g in groups]
    if custom:
        request.append(("custom", custom))
    if not request:
        raise CplmixError("choose at least one gene group (MG, IEG, HKG) or type some genes")
    return request


def traversal_heatmap(result: Traversal | TypeComparison, max_genes_per_group: int = 30) -> hv.Layout | hv.Overlay:
    """The traversal as interactive heatmaps (one per type): rows = state value, columns = genes grouped
    MG | IEG | HKG | custom with separators and group names; hover shows gene, state and value."""
    results = result.traversals if isinstance(result, TypeComparison) else [result]
    matrices = result.display_matrices(max_genes_per_group) if isinstance(result, TypeComparison) else [result.display_matrix(max_genes_per_group)]
    normalization = results[0].normalization
    values = np.concatenate([m.values.to_numpy().ravel() for m in matrices])
    values = values[np.isfinite(values)]
    if normalization == MINMAX:
        limits, cmap, label = (0.0, 1.0), "viridis", "min-max across the sweep"
    else:
        limit = max(float(np.percentile(np.abs(values), 99)) if values.size else 1.0, 0.5)
        limits, cmap, label = (-limit, limit), "RdBu_r", "z-score vs. all cells"
    panels = []
    for traversal, matrix in zip(results, matrices):
        genes = list(matrix.values.columns)
        frame = pd.DataFrame({
            "gene": np.tile(genes, traversal.steps),
            "state": np.repeat(np.round(traversal.state, 4), len(genes)),
            "value": matrix.values.to_numpy().ravel(),
            "group": np.tile(matrix.group_of_column, traversal.steps),
        })
        gene_dim = hv.Dimension("gene", values=genes)
        heatmap = hv.HeatMap(frame, [gene_dim, hv.Dimension("state", label=state_name(traversal.dim))],
                             [hv.Dimension("value", label=label), "group"]).opts(
            cmap=cmap, clim=limits, colorbar=True, tools=["hover"], xrotation=90, responsive=True, min_height=480,
            title=view_title(traversal) if len(results) == 1 else (traversal.type_label or f"type {traversal.type}"),
            xlabel="  |  ".join(f"{name} ({stop - start})" for name, start, stop in matrix.groups),
            fontsize={"xticks": gene_font_size(len(genes) * len(results)), "yticks": 10, "xlabel": 11, "ylabel": 11, "title": 12},
        )
        overlay = heatmap
        for name, start, stop in matrix.groups:
            if start > 0:
                overlay = overlay * hv.VLine(start - 0.5).opts(color="black", line_width=2)
        panels.append(overlay)
    return panels[0] if len(panels) == 1 else hv.Layout(panels).cols(len(panels))


def state_name(dim: int) -> str:
    """A state dimension as the app names it everywhere: 'state 1', 'state 2', ... (the Cells tab's names)."""
    return f"state {int(dim) + 1}"


def view_title(traversal: Traversal) -> str:
    """'type 3 (Oligo), state 1': the sweep's title with the app's 1-based state names."""
    name = f"type {traversal.type}" + (f" ({traversal.type_label})" if traversal.type_label else "")
    if traversal.cell is not None:
        name += f", cell {traversal.cell}"
    return f"{name}, {state_name(traversal.dim)}"


def gene_font_size(n_columns: int) -> str:
    """Gene names under the heatmap: readable (11 px) up to 60 columns, smaller for more so they do not overlap."""
    return "11pt" if n_columns <= 40 else "9pt" if n_columns <= 80 else "7pt"


def format_state(value: float) -> str:
    """A state value as the slider and the profile show it (three decimals)."""
    return f"{float(value):.3f}"


#: What the top-genes table says for a gene in none of the chosen groups.
OTHER_GENES = "(other)"


def profile_at(result: Traversal | TypeComparison, state_value: float, max_genes_per_group: int = 30) -> pd.DataFrame:
    """The decoded profile at the sweep row nearest ``state_value``: one row per displayed gene with its
    group, the reconstruction (log-normalised scale) and the display value; per type for comparisons."""
    results = result.traversals if isinstance(result, TypeComparison) else [result]
    matrices = result.display_matrices(max_genes_per_group) if isinstance(result, TypeComparison) else [result.display_matrix(max_genes_per_group)]
    frames = []
    for traversal, matrix in zip(results, matrices):
        row = traversal.nearest_step(state_value)
        genes = list(matrix.values.columns)
        frames.append(pd.DataFrame({
            "type": traversal.type_label or f"type {traversal.type}",
            "gene": genes,
            "group": matrix.group_of_column,
            "expression": traversal.expression.iloc[row][genes].to_numpy(),
            "display": matrix.values.iloc[row].to_numpy(),
            "state": traversal.state[row],
        }))
    return pd.concat(frames, ignore_index=True)


def profile_plot(profile: pd.DataFrame, dim: int = 0) -> hv.Overlay:
    """Bars of the decoded expression of each shown gene at one state value (of state ``dim``), coloured by
    gene group."""
    state = float(profile["state"].iloc[0]) if len(profile) else float("nan")
    title = f"Decoded profile at {state_name(dim)} = {format_state(state)}"
    frame = profile.assign(key=profile["type"] + " · " + profile["gene"]) if profile["type"].nunique() > 1 else profile.assign(key=profile["gene"])
    colors = {g: GROUP_COLORS.get(g, "#7f7f7f") for g in frame["group"].unique()}
    bars = hv.Bars(frame, hv.Dimension("key", label="gene", values=list(frame["key"])),
                   [hv.Dimension("expression", label="decoded log-expression"), "group", "display"]).opts(
        color=hv.dim("group").categorize(colors, default="#7f7f7f"), tools=["hover"], xrotation=90,
        responsive=True, min_height=300, title=title, xlabel="",
        fontsize={"xticks": gene_font_size(len(frame)), "title": 12},
    )
    return hv.Overlay([bars]).opts(title=title)


class TraversalView(pn.viewable.Viewer):
    """Choose a type (and another to compare), a state dimension, gene groups; slide along the state.

    In a notebook: ``view = TraversalView("runs/zeisel"); view`` and ``view.export("fig.pdf")``.
    """

    state = param.ClassSelector(class_=ExplorerState)
    result = param.Parameter(default=None, doc="The current Traversal or TypeComparison.")

    def __init__(self, state=None, *, defer: bool = False, **params):
        """``defer=True`` (the app's tab): sweep only once :meth:`activate` is called, when the tab is shown."""
        super().__init__(state=ExplorerState.of(state), **params)
        self._deferred = bool(defer)
        self.type = pn.widgets.Select(label="Type", options={}, width=220)
        self.compare = pn.widgets.Select(label="Compare with", options={"(none)": NO_COMPARISON}, value=NO_COMPARISON, width=220)
        self.dim = pn.widgets.Select(label="State dimension", options={state_name(0): 0}, width=140)
        defaults = TraversalOptions()  # the options of `cplmix traverse`, with the same defaults
        self.normalize = pn.widgets.RadioButtonGroup(label="Colour", options={"z-score": ZSCORE, "min-max": MINMAX}, value=defaults.normalize,
                                                     color="primary", variant="outline", width=170)  # room for both labels
        self.groups = pn.widgets.CheckButtonGroup(label="Gene groups", options=GROUP_CHOICES, value=list(DEFAULT_GROUPS),
                                                  color="primary", variant="outline")
        self.custom = pn.widgets.TextAreaInput(label="Custom genes", placeholder="e.g. Fos, Arc, Npas4 (or upload a list)", height=70,
                                              sizing_mode="stretch_width")
        self.custom_file = pn.widgets.FileInput(accept=".txt,.csv,.tsv", sizing_mode="stretch_width")
        self.max_genes = option_widget(defaults, "max_genes", widget=pn.widgets.IntSlider, label="Genes per group", start=5, end=100,
                                       step=5, width=200)
        # three decimals, as the profile's title: the slider moves row by row of the sweep and shows the row's value
        self.slider = pn.widgets.FloatSlider(label="State value", start=0.0, end=1.0, value=0.5, step=0.001, format="0.000",
                                             sizing_mode="stretch_width")
        self.warnings = pn.pane.Alert("", alert_type="warning", visible=False, sizing_mode="stretch_width")
        self.message = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width")
        self.group_notes = pn.pane.Markdown("", sizing_mode="stretch_width", styles={"font-size": "0.9em"})
        self.downloads = {fmt: pn.widgets.FileDownload(
            label=f"Export {fmt.upper()}", color="default", callback=lambda fmt=fmt: self.export_bytes(fmt),
            filename=f"traversal.{fmt}", width=120, disabled=True,
        ) for fmt in ("png", "svg", "pdf", "csv")}
        self.heatmap = pn.pane.HoloViews(sizing_mode="stretch_width", min_height=440)
        self.profile = pn.pane.HoloViews(sizing_mode="stretch_width", min_height=280)
        self.top_genes = pn.pane.DataFrame(sizing_mode="stretch_width", max_height=440, index=False, float_format="{:.3f}".format,
                                           styles={"overflow": "auto"})
        self.summary = pn.pane.DataFrame(sizing_mode="stretch_width", index=False, float_format="{:.3f}".format,
                                         styles={"overflow-x": "auto"})
        self.marker_value = hv.streams.Stream.define("Marker", value=0.5)()
        self._updating = False
        self.custom_file.param.watch(self._on_gene_file, "value")
        for widget in (self.type, self.compare, self.dim, self.normalize, self.groups, self.max_genes):
            widget.param.watch(self._recompute, "value")
        self.custom.param.watch(self._recompute, "value")
        self.slider.param.watch(self._on_slider, "value_throttled")
        self.state.param.watch(self._on_model, ["inference"])
        self.state.param.watch(self._on_names, ["names_tick"])
        self._on_model()

    # -- choices ------------------------------------------------------------------------------------------
    def _type_names(self) -> dict[str, int]:
        """Types with cells, by size, shown by their names (``ExplorerState.type_names``)."""
        state = self.state
        counts = np.bincount(state.inference.consensus_type, minlength=state.model.module.n_types)
        names = state.type_names()
        return {f"{names[t]} ({counts[t]:,} cells)": int(t) for t in np.argsort(-counts, kind="stable") if counts[t] >= 3}

    def _on_names(self, *_events) -> None:
        """A type was renamed: new option texts, same choices, titles redrawn."""
        if self.state.model is None:
            return
        types, chosen, compared = self._type_names(), self.type.value, self.compare.value
        self._updating = True
        try:
            self.type.options = types
            self.type.value = chosen
            self.compare.options = {"(none)": NO_COMPARISON, **types}
            self.compare.value = compared
        finally:
            self._updating = False
        self._recompute()

    def _on_model(self, *_events) -> None:
        if self.state.model is None:
            self.result = None
            self._render()
            return
        types = self._type_names()
        self._updating = True
        try:
            self.type.options = types
            self.type.value = next(iter(types.values())) if types else None
            self.compare.options = {"(none)": NO_COMPARISON, **types}
            self.compare.value = NO_COMPARISON
            n_dims = self.state.model.module.state_dim
            self.dim.options = {state_name(d): d for d in range(n_dims)}
            self.dim.value = 0
        finally:
            self._updating = False
        self._recompute()

    def _on_gene_file(self, event) -> None:
        if not event.new:
            return
        if len(event.new) > MAX_GENE_LIST_BYTES:
            self._show(f"gene list '{sanitize_filename(self.custom_file.filename or '')}' is larger than 1 MB")
            return
        try:
            text = event.new.decode("utf-8")
        except UnicodeDecodeError:
            self._show("the gene list is not a UTF-8 text file (one gene symbol a line)")
            return
        self.custom.value = "\n".join(parse_gene_list(text))

    # -- computing ----------------------------------------------------------------------------------------
    def compute(self) -> Traversal | TypeComparison:
        """The sweep for the current choices (raises CplmixError for a choice the model cannot sweep)."""
        model = self.state.model
        if model is None:
            raise CplmixError("no model: train one or open a run")
        genes = gene_group_request(self.groups.value, parse_gene_list(self.custom.value))
        options = {"genes": genes, "normalize": self.normalize.value}
        if self.compare.value not in (None, NO_COMPARISON) and self.compare.value != self.type.value:
            result = compare_types(model, [self.type.value, self.compare.value], self.dim.value, **options)
        else:
            result = traverse(model, self.type.value, self.dim.value, **options)
        names = self.state.type_names()
        for traversal in result.traversals if isinstance(result, TypeComparison) else [result]:
            traversal.type_label = names[traversal.type]  # titles, tables and file names show the types' names
        return result

    def activate(self) -> None:
        """Compute the sweep a deferred view has held back (called when its tab is first shown)."""
        if self._deferred:
            self._deferred = False
            self._recompute()

    def _recompute(self, *_events) -> None:
        if self._deferred or self._updating or self.state.model is None or self.type.value is None:
            return
        try:
            self.result = self.compute()
            self._show("")
        except Exception as error:
            self.result = None
            self._show(format_exception(error))
        self._render()

    # -- display ------------------------------------------------------------------------------------------
    @property
    def reference(self) -> Traversal | None:
        result = self.result
        return result.traversals[0] if isinstance(result, TypeComparison) else result

    def _render(self) -> None:
        reference = self.reference
        for download in self.downloads.values():
            download.disabled = reference is None
        self.group_notes.object = "" if reference is None else " · ".join(g.summary() for g in reference.groups.values())
        results = [] if self.result is None else (self.result.traversals if isinstance(self.result, TypeComparison) else [self.result])
        cautions = [f"type {t.type}: {w}" if len(results) > 1 else w for t in results for w in t.warnings]
        self.warnings.param.update(object="**Read with care:** " + " · ".join(cautions) if cautions else "", visible=bool(cautions))
        if reference is None:
            self.heatmap.object = None
            self.profile.object = None
            self.top_genes.object = None
            self.summary.object = None
            return
        low, high = float(reference.state[0]), float(reference.state[-1])
        wanted = self.slider.value if low <= self.slider.value <= high else float(np.median(reference.state))
        value = float(reference.state[reference.nearest_step(wanted)])  # a row of the sweep: what the profile shows
        self.slider.param.update(start=low, end=high, step=(high - low) / max(reference.steps - 1, 1), value=value,
                                 name=f"{state_name(reference.dim).capitalize()} value")
        self.marker_value.event(value=value)
        heatmap = traversal_heatmap(self.result, self.max_genes.value)
        marker = hv.DynamicMap(lambda value: hv.HLine(value).opts(color="black", line_width=2, line_dash="dashed"),
                               streams=[self.marker_value])
        if isinstance(heatmap, hv.Layout):
            heatmap = hv.Layout([panel * marker for panel in heatmap]).cols(len(heatmap))
        else:
            heatmap = heatmap * marker
        self.heatmap.object = heatmap
        self._update_profile(value)
        top = self.result.traversals if isinstance(self.result, TypeComparison) else [self.result]
        frames = []
        for traversal in top:
            table = traversal.top_genes(15)[["rank", "group", "amplitude", "rho", "change"]].reset_index()  # gene, rank, ...
            table = table.assign(group=table["group"].replace("", OTHER_GENES))  # genes in none of the chosen groups
            if len(top) > 1:
                table.insert(0, "type", traversal.type_label or f"type {traversal.type}")
            frames.append(table)
        self.top_genes.object = pd.concat(frames)
        summary = self.result.group_summary if isinstance(self.result, TypeComparison) else reference.group_summary.reset_index()
        self.summary.object = summary.rename(columns=SUMMARY_COLUMNS)
        stem = exporting.default_file_name(self.result, "x")[:-2]
        for fmt, download in self.downloads.items():
            download.filename = sanitize_filename(f"{stem}.{fmt}", default=f"traversal.{fmt}")

    def _on_slider(self, event) -> None:
        reference = self.reference
        if reference is None:
            return
        value = float(reference.state[reference.nearest_step(float(event.new))])
        self.marker_value.event(value=value)
        self._update_profile(value)

    def _update_profile(self, value: float) -> None:
        self.profile.object = profile_plot(profile_at(self.result, value, self.max_genes.value), self.reference.dim)

    def _show(self, text: str) -> None:
        self.message.object = text
        self.message.visible = bool(text)

    # -- exports ------------------------------------------------------------------------------------------
    def export_bytes(self, file_format: str) -> io.BytesIO:
        """The current heatmap as PNG / SVG / PDF (with the slider's value marked) or its matrix as CSV."""
        self.activate()
        if self.result is None:
            raise CplmixError("nothing to export: choose a type first")
        if file_format == "csv":
            payload = exporting.table_bytes(exporting.table(self.result, "matrix"), "csv")
        else:
            reference = self.reference
            title = view_title(reference) if not isinstance(self.result, TypeComparison) else state_name(reference.dim)
            figure = exporting.heatmap_figure(self.result, max_genes_per_group=self.max_genes.value, mark_state=self.slider.value,
                                              title=title, state_label=state_name(reference.dim))
            payload = exporting.figure_bytes(figure, file_format, dpi=200)
        return io.BytesIO(payload)

    def export(self, path: str | os.PathLike) -> Path:
        """Write the current heatmap (.png .svg .pdf) or matrix (.csv) to ``path`` (notebooks, scripts)."""
        file_format = exporting.output_format(path, ("png", "svg", "pdf", "csv"))
        payload = self.export_bytes(file_format).getvalue()
        path = Path(path).expanduser()
        atomic_write_bytes(path, payload)
        return path

    def __panel__(self):
        choices = pn.Row(self.type, self.compare, self.dim, pn.Column(pn.pane.Markdown("Colour", margin=(0, 5)), self.normalize),
                         self.max_genes, sizing_mode="stretch_width")
        genes = pn.Row(pn.Column(pn.pane.Markdown("**Gene groups**", margin=(0, 5)), self.groups), self.custom, self.custom_file,
                       sizing_mode="stretch_width")
        exports = pn.Row(*self.downloads.values())
        empty = pn.pane.Markdown("Train a model or open a run to traverse its states.", visible=self.state.model is None)
        self.state.param.watch(lambda event: setattr(empty, "visible", event.new is None), "model")
        return pn.Column(
            empty, choices, genes, self.message, self.warnings, self.group_notes, self.slider, self.heatmap, self.profile, exports,
            pn.pane.Markdown("**Gene groups**: markers should stay flat, IEG / HKG move (amplitude: change along the sweep "
                             "in cell-to-cell standard deviations; rho: monotonicity, |rho| ≥ 0.9 counts as monotone)"),
            self.summary,
            pn.pane.Markdown(f"**Top responding genes** among all the model's genes; {OTHER_GENES}: in none of the chosen groups"),
            self.top_genes,
            sizing_mode="stretch_width",
        )
