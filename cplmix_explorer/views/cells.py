"""Cells: a datashaded 2-D map of every cell (its types and states, or the latent), and inferred types against known
labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import panel as pn
import param

from ..analysis.embedding import PCA as PCA_METHOD
from ..analysis.embedding import UMAP as UMAP_METHOD
from ..analysis.embedding import UMAP_LATENT as UMAP_LATENT_METHOD
from ..analysis.expression import gene_expression
from . import plots
from .state import ExplorerState

UMAP, UMAP_LATENT, PCA = "UMAP of types and states", "UMAP of the latent", "PCA of the latent"
METHODS = {UMAP: UMAP_METHOD, UMAP_LATENT: UMAP_LATENT_METHOD, PCA: PCA_METHOD}
NO_HIGHLIGHT = "(none)"
#: Prefix of the colour choice that shows a gene's expression ("gene Gad1").
GENE_PREFIX = "gene "


class CellsView(pn.viewable.Viewer):
    """Map of all cells coloured by type, confidence, a state dimension, any obs column (categories in
    colours, numbers on a colour scale) or a gene's expression (searchable gene box); a type can be
    highlighted; hover shows a cell's type and labels. Below: the confusion of inferred types with a label
    column, ordered by matching, with ACC, ARI and NMI."""

    state = param.ClassSelector(class_=ExplorerState)

    def __init__(self, state=None, **params):
        super().__init__(state=ExplorerState.of(state), **params)
        self.embedding = pn.widgets.Select(label="Map", options=list(METHODS), value=UMAP, width=210)
        self.color_by = pn.widgets.Select(label="Colour by", options=["type"], value="type", width=200)
        # suggestions as you type, whatever the case (as cellxgene's gene search); Enter takes the first one,
        # which is the typed name itself when it is a gene: the names start with the text and are sorted
        self.gene = pn.widgets.AutocompleteInput(
            label="Colour by gene", options=[], placeholder="a gene name, then Enter", case_sensitive=False,
            search_strategy="starts_with", min_characters=2, restrict=False, width=200,
        )
        self.gene_note = pn.pane.Markdown("", visible=False, margin=(0, 10))
        self.highlight = pn.widgets.Select(label="Highlight type", options=[NO_HIGHLIGHT], value=NO_HIGHLIGHT, width=160)
        self.labels = pn.widgets.Select(label="Compare with labels", options=[], width=200)
        self._frames: dict[tuple[int, str], pd.DataFrame] = {}
        self._titles: dict[str, str] = {}
        self.state.param.watch(self._refresh_options, ["inference", "adata", "names_tick"])
        # value is set when a suggestion is picked or Enter is pressed (not on every key, which sets value_input)
        self.gene.param.watch(self._gene_chosen, "value")
        self._refresh_options()

    # -- data ---------------------------------------------------------------------------------------------
    def cell_table(self, method: str | None = None) -> pd.DataFrame | None:
        """One row per cell (x, y, type, confidence, states, labels); cached per inference and map. Columns
        for other obs columns and genes are added when first coloured by."""
        state = self.state
        if state.inference is None:
            return None
        method = method or self.embedding.value
        key = (id(state.inference), method)
        if key not in self._frames:
            self._frames.clear()  # one model at a time: drop the previous model's table
            inference = state.inference
            cell_map = state.model.cell_map(METHODS[method], run_dir=state.run_dir)
            self._titles[method] = cell_map.title
            self._frames[key] = plots.cell_frame(
                cell_map.coordinates, inference.consensus_type, inference.consensus_confidence, inference.state_mean[0],
                state.model.adata.obs, state.label_columns,
            )
        frame = self._frames[key]
        names = state.type_names()[: len(frame["type"].cat.categories)]  # types shown by their names
        if list(frame["type"].cat.categories) != names:
            frame["type"] = frame["type"].cat.rename_categories(names)
        return frame

    def colour_column(self, frame: pd.DataFrame, color_by: str) -> str:
        """Make sure ``frame`` holds the column ``color_by`` names (an obs column or a gene), return its name."""
        if color_by in frame.columns:
            return color_by
        model = self.state.model
        if color_by.startswith(GENE_PREFIX):
            gene = color_by[len(GENE_PREFIX):]
            for old in [c for c in frame.columns if c.startswith(GENE_PREFIX)]:
                del frame[old]  # one gene at a time: a million cells x many genes would add up
            frame[color_by] = gene_expression(model.adata, model.prepared, gene)
        else:
            values = plots.colour_values(model.adata.obs[color_by])
            frame[color_by] = values
        return color_by

    def _refresh_options(self, *_events) -> None:
        state = self.state
        if state.inference is None:
            return
        labels = state.label_columns
        n_states = state.inference.state_mean.shape[2]
        others = [c for c in plots.colourable_columns(state.model.adata.obs) if c not in labels and c != "type"]
        options = ["type", *labels, "confidence", *[f"state {d + 1}" for d in range(n_states)], *others]
        if self.color_by.value.startswith(GENE_PREFIX) and self.color_by.value[len(GENE_PREFIX):] in self._gene_names():
            options.append(self.color_by.value)
        self.color_by.options = options
        if self.color_by.value not in options:
            self.color_by.value = "type"
        self.gene.options = sorted(self._gene_names(), key=str.lower)  # a shorter name before its extensions
        used = np.unique(state.inference.consensus_type)
        names = state.type_names()
        self.highlight.options = [NO_HIGHLIGHT, *[names[t] for t in used]]
        if self.highlight.value not in self.highlight.options:
            self.highlight.value = NO_HIGHLIGHT
        self.labels.options = labels
        if labels and self.labels.value not in labels:
            preferred = state.config.labels if state.config.labels in labels else labels[0]
            self.labels.value = preferred
        self.labels.visible = bool(labels)

    def _gene_names(self) -> list[str]:
        model = self.state.model
        return [] if model is None else [str(g) for g in model.adata.var_names]

    def _gene_chosen(self, event) -> None:
        """A gene picked or typed in full in the gene box becomes the colour (an entry "gene NAME" of Colour
        by); a name that is no gene of the data is said so under the box and changes nothing."""
        typed = (event.new or "").strip()
        names = self.gene.options
        gene = typed if typed in set(names) else None
        if gene is None:  # typed rather than picked: match the name whatever its case
            gene = next((name for name in names if name.lower() == typed.lower()), None)
        self.gene_note.object = f"No gene named `{typed}` in this data." if typed and gene is None else ""
        self.gene_note.visible = bool(self.gene_note.object)
        if not gene:
            return
        choice = f"{GENE_PREFIX}{gene}"
        if self.color_by.value == choice:
            return
        options = [o for o in self.color_by.options if not o.startswith(GENE_PREFIX)] + [choice]
        self.color_by.options = options
        self.color_by.value = choice

    # -- elements -----------------------------------------------------------------------------------------
    def map_element(self, method: str, color_by: str, highlight: str, inference=None, names=None):
        frame = self.cell_table(method)
        if frame is None:
            return pn.pane.Markdown("Train a model or open a run to map its cells.")
        color_by = self.colour_column(frame, color_by)
        hover = ["type", *self.state.label_columns, "confidence"]
        if color_by not in hover:
            hover.append(color_by)
        title = f"{len(frame):,} cells · {self._titles.get(method, method)} · colour: {color_by}"
        if highlight != NO_HIGHLIGHT:
            title += f" · highlighted: {highlight}"
        element = plots.cell_map(frame, color_by, None if highlight == NO_HIGHLIGHT else highlight, hover, title)
        values = frame[color_by]
        entries = len(values.cat.categories) if isinstance(values.dtype, pd.CategoricalDtype) else 0
        return pn.pane.HoloViews(element, sizing_mode="stretch_width", min_height=plots.map_height(entries) + 40)

    def comparison(self, labels: str | None, inference=None):
        """The confusion of inferred (consensus) types with ``labels`` and its scores, or None."""
        state = self.state
        if state.inference is None or not labels or labels not in state.model.adata.obs.columns:
            return None
        comparison = plots.compare_types_to_labels(state.inference.consensus_type, state.model.adata.obs[labels].to_numpy(), labels)
        names = state.type_names()
        comparison.matrix.rows = [names[int(row)] for row in comparison.matrix.rows]
        return comparison

    def confusion_element(self, labels: str | None, inference=None, names=None):
        comparison = self.comparison(labels)
        if comparison is None:
            return pn.pane.Markdown("Load data with a label column (categorical obs) to compare the types with it.")
        scores = comparison.metrics
        text = (
            f"**Consensus types vs `{labels}`**: ACC {scores['acc']:.3f} · ARI {scores['ari']:.3f} · "
            f"NMI {scores['nmi']:.3f} · KL {scores['kl']:.3f} (rows: inferred types, ordered by their matched label)"
        )
        return pn.Column(
            pn.pane.Markdown(text),
            pn.pane.HoloViews(plots.confusion_heatmap(comparison), sizing_mode="stretch_width", min_height=420),
            sizing_mode="stretch_width",
        )

    def __panel__(self):
        inference = self.state.param.inference
        names = self.state.param.names_tick
        cell_map = pn.bind(self.map_element, self.embedding, self.color_by, self.highlight, inference=inference, names=names)
        confusion = pn.bind(self.confusion_element, self.labels, inference=inference, names=names)
        controls = pn.Row(self.embedding, self.color_by, pn.Column(self.gene, self.gene_note, margin=0), self.highlight,
                          self.labels)
        # lazy: computed when the tab is first drawn, not while the page loads
        return pn.Column(controls, pn.panel(cell_map, lazy=True), pn.panel(confusion, lazy=True), sizing_mode="stretch_width")
