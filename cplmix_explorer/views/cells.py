"""Cells: a datashaded 2-D map of every cell from the model's latent, and inferred types against known labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import panel as pn
import param

from . import plots
from .state import ExplorerState

PCA, UMAP = "PCA of the latent", "UMAP of the latent"
NO_HIGHLIGHT = "(none)"


class CellsView(pn.viewable.Viewer):
    """Map of all cells coloured by type, a label column, confidence or a state dimension; a type can be
    highlighted; hover shows a cell's type and labels. Below: the confusion of inferred types with a label
    column, ordered by matching, with ACC, ARI and NMI."""

    state = param.ClassSelector(class_=ExplorerState)

    def __init__(self, state=None, **params):
        super().__init__(state=ExplorerState.of(state), **params)
        methods = [PCA] + ([UMAP] if plots.umap_available() else [])
        self.embedding = pn.widgets.Select(label="Map", options=methods, value=PCA, width=200)
        self.color_by = pn.widgets.Select(label="Colour by", options=["type"], value="type", width=200)
        self.highlight = pn.widgets.Select(label="Highlight type", options=[NO_HIGHLIGHT], value=NO_HIGHLIGHT, width=160)
        self.labels = pn.widgets.Select(label="Compare with labels", options=[], width=200)
        self._frames: dict[tuple[int, str], pd.DataFrame] = {}
        self.state.param.watch(self._refresh_options, ["inference", "adata", "names_tick"])
        self._refresh_options()

    # -- data ---------------------------------------------------------------------------------------------
    def cell_table(self, method: str | None = None) -> pd.DataFrame | None:
        """One row per cell (x, y, type, confidence, states, labels); cached per inference and map."""
        state = self.state
        if state.inference is None:
            return None
        method = method or self.embedding.value
        key = (id(state.inference), method)
        if key not in self._frames:
            self._frames.clear()  # one model at a time: drop the previous model's table
            inference = state.inference
            coordinates = plots.embed_2d(inference.latent[0], "umap" if method == UMAP else "pca")
            self._frames[key] = plots.cell_frame(
                coordinates, inference.consensus_type, inference.consensus_confidence, inference.state_mean[0],
                state.model.adata.obs, state.label_columns,
            )
        frame = self._frames[key]
        names = state.type_names()[: len(frame["type"].cat.categories)]  # types shown by their names
        if list(frame["type"].cat.categories) != names:
            frame["type"] = frame["type"].cat.rename_categories(names)
        return frame

    def _refresh_options(self, *_events) -> None:
        state = self.state
        if state.inference is None:
            return
        labels = state.label_columns
        n_states = state.inference.state_mean.shape[2]
        options = ["type", *labels, "confidence", *[f"state {d + 1}" for d in range(n_states)]]
        self.color_by.options = options
        if self.color_by.value not in options:
            self.color_by.value = "type"
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

    # -- elements -----------------------------------------------------------------------------------------
    def map_element(self, method: str, color_by: str, highlight: str, inference=None, names=None):
        frame = self.cell_table(method)
        if frame is None:
            return pn.pane.Markdown("Train a model or open a run to map its cells.")
        hover = ["type", *self.state.label_columns, "confidence"]
        title = f"{len(frame):,} cells · {method}"
        element = plots.cell_map(frame, color_by, None if highlight == NO_HIGHLIGHT else highlight, hover, title)
        return pn.pane.HoloViews(element, sizing_mode="stretch_width", min_height=480)

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
        controls = pn.Row(self.embedding, self.color_by, self.highlight, self.labels)
        # lazy: computed when the tab is first drawn, not while the page loads
        return pn.Column(controls, pn.panel(cell_map, lazy=True), pn.panel(confusion, lazy=True), sizing_mode="stretch_width")
