"""Markers: each type's top marker genes (one-vs-rest Wilcoxon, as scanpy's rank_genes_groups) as a table and
a dot plot, with downloads, and renaming types (the names every other view shows).

The statistics are :func:`cplmix_explorer.analysis.markers.marker_statistics` (the CLI's ``cplmix markers``
and ``CplMixVAE.markers`` call the same function); the dot plot is drawn on the server with matplotlib.
"""

from __future__ import annotations

import io

import panel as pn
import param

from ..analysis import export as exporting
from ..analysis.markers import DEFAULT_TOP, dotplot_figure, marker_statistics
from ..errors import CplmixError
from .state import ExplorerState, format_exception

#: Most markers per type the dot plot shows (the table shows as many as asked).
DOTPLOT_TOP = 5
TABLE_COLUMNS = {"name": "type", "rank": "rank", "gene": "gene", "score": "score (z)", "logfoldchange": "log2 FC",
                 "pval_adj": "adj. p", "frac_in": "in type", "frac_out": "in rest"}


class MarkersView(pn.viewable.Viewer):
    """Top markers per type (table and dot plot), CSV / PNG / SVG downloads, and a rename form."""

    state = param.ClassSelector(class_=ExplorerState)

    def __init__(self, state=None, *, defer: bool = False, **params):
        """``defer=True`` (the app's tab): compute only once :meth:`activate` is called, when the tab is shown."""
        super().__init__(state=ExplorerState.of(state), **params)
        self._deferred = bool(defer)
        self.top = pn.widgets.IntInput(label="Markers per type", value=DEFAULT_TOP, start=1, end=50, width=140)
        self.rename_type = pn.widgets.Select(label="Type to rename", options={}, width=240)
        self.new_name = pn.widgets.TextInput(label="New name", placeholder="e.g. Pvalb basket (empty: automatic name)", width=280)
        self.rename_button = pn.widgets.Button(label="Rename", color="primary", width=100, align="end")
        self.message = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width")
        self.note = pn.pane.Markdown("", sizing_mode="stretch_width", styles={"font-size": "0.9em"})
        self.table = pn.pane.DataFrame(None, index=False, sizing_mode="stretch_width", max_height=520,
                                       float_format="{:.3g}".format)
        # at the figure's own size (inches x dpi): gene and type names stay readable however many there are
        self.figure = pn.pane.Matplotlib(None, dpi=96, format="png", sizing_mode="fixed")
        self.downloads = {fmt: pn.widgets.FileDownload(
            label=f"Download {label}", color="default", callback=lambda fmt=fmt: io.BytesIO(self.export_bytes(fmt)),
            filename=f"markers.{fmt}", width=170, disabled=True,
        ) for fmt, label in (("csv", "table (CSV)"), ("png", "dot plot (PNG)"), ("svg", "dot plot (SVG)"))}
        self.rename_button.on_click(self._on_rename)
        self.top.param.watch(self._render, "value")
        self.state.param.watch(self._render, ["inference", "names_tick"])
        self._render()

    def activate(self) -> None:
        """Compute what a deferred view has held back (called when its tab is first shown)."""
        if self._deferred:
            self._deferred = False
            self._render()

    # -- content ------------------------------------------------------------------------------------------
    def marker_table(self):
        """The shown table (all columns of ``CplMixVAE.markers``) for the current model and choices."""
        model = self.state.model
        if model is None:
            raise CplmixError("no model: train one or open a run")
        return marker_statistics(model).table(self.top.value, self.state.type_names())

    def figure_object(self):
        model = self.state.model
        if model is None:
            raise CplmixError("no model: train one or open a run")
        return dotplot_figure(marker_statistics(model), min(self.top.value, DOTPLOT_TOP), self.state.type_names())

    def export_bytes(self, file_format: str) -> bytes:
        """The table as CSV or the dot plot as PNG / SVG, for the download buttons."""
        self.activate()
        if file_format == "csv":
            return exporting.table_bytes(self.marker_table(), "csv")
        return exporting.figure_bytes(self.figure_object(), file_format, dpi=200)

    def _render(self, *_events) -> None:
        if self._deferred:
            return
        model = self.state.model
        for download in self.downloads.values():
            download.disabled = model is None
        if model is None:
            self.table.object, self.figure.object, self.note.object = None, None, "Train a model or open a run to see its markers."
            self.rename_type.options = {}
            return
        try:
            names = self.state.type_names()
            table = self.marker_table()
            self.table.object = table[list(TABLE_COLUMNS)].rename(columns=TABLE_COLUMNS)
            self.figure.object = self.figure_object()
            counts = table.drop_duplicates("type").set_index("type")["n_cells"]
            current = self.rename_type.value
            self.rename_type.options = {f"{names[t]} ({counts[t]:,} cells)": int(t) for t in counts.index}
            if current in self.rename_type.options.values():
                self.rename_type.value = current
            self.note.object = (
                "Genes ranked by a Wilcoxon rank-sum test of each type's cells against all other cells on the "
                "log-expression (as scanpy's `rank_genes_groups`, method `wilcoxon`); *adj. p*: Benjamini-Hochberg; "
                f"*in type* / *in rest*: fraction of cells expressing the gene. Dot plot: up to {DOTPLOT_TOP} markers per type."
            )
        except Exception as error:
            self._show(format_exception(error))

    def _on_rename(self, _event=None) -> None:
        try:
            if self.rename_type.value is None:
                raise CplmixError("choose a type to rename")
            self.state.rename_type(int(self.rename_type.value), self.new_name.value)
            self.new_name.value = ""
            self._show("")
        except Exception as error:
            self._show(format_exception(error))

    def _show(self, text: str) -> None:
        self.message.object = text
        self.message.visible = bool(text)

    def __panel__(self):
        rename = pn.Row(self.rename_type, self.new_name, self.rename_button, sizing_mode="stretch_width")
        return pn.Column(
            pn.Row(self.top, *self.downloads.values(), sizing_mode="stretch_width"), self.message, self.note,
            pn.pane.Markdown("**Rename a type** (the name shows in every tab, in result.h5ad and in exports)", margin=(10, 5, 0, 5)),
            rename, pn.Column(self.figure, scroll=True, sizing_mode="stretch_width"), self.table, sizing_mode="stretch_width",
        )


__all__ = ["MarkersView"]
