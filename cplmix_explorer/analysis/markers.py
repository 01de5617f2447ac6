"""Marker genes of every type: a one-vs-rest Wilcoxon rank-sum test, as scanpy's ``rank_genes_groups``
with ``method='wilcoxon'`` (its defaults: no tie correction, Benjamini-Hochberg over all genes of a type).

The test runs on the prepared log-expression the encoder sees (``PreparedData.model_input``: for counts
``log1p(counts / library x 1e4)``) over the model's genes, with each cell in its consensus type (the type
``obs['cplmix_type']`` holds). Per type and gene:

    score          z of the rank sum of the type's cells among all cells (positive: higher in the type)
    logfoldchange  log2((expm1(mean_in) + 1e-9) / (expm1(mean_out) + 1e-9)), means of the log-expression
    pval, pval_adj two-sided normal p-value and its Benjamini-Hochberg adjustment over the type's genes
    frac_in/out    fraction of the type's cells / of the other cells with a non-zero value
    mean_in/out    mean log-expression in the type / in the other cells

Memory: genes are processed in chunks; a sparse matrix is ranked column by column from its non-zero
entries (zeros share one average rank), so cells x genes is never made dense at once.

:func:`markers` gives the top genes as a table; :func:`dotplot_figure` draws the classic dot plot
(dot size = fraction of the type's cells expressing, colour = mean expression).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import norm, rankdata

from ..data.preprocess import LOG1P_NORMALIZE, PreparedData
from ..errors import CplmixError

#: Markers per type shown by default (table, dot plot, CLI).
DEFAULT_TOP = 5
#: Dense values held at once while ranking a chunk of genes (cells x genes of one chunk).
_DENSE_BUDGET = 1 << 24
#: Genes per chunk when the matrix is sparse (one column slice of the CSR matrix per chunk).
_SPARSE_CHUNK = 256
COLUMNS = ["type", "name", "rank", "gene", "score", "logfoldchange", "pval", "pval_adj", "frac_in", "frac_out",
           "mean_in", "mean_out", "n_cells"]


@dataclass
class MarkerStatistics:
    """The test for every type (rows, 0..K-1) and gene (columns); rows of types without cells are NaN."""

    genes: list[str]
    n_cells: np.ndarray  # (K,) cells per type
    score: np.ndarray  # (K, G)
    logfoldchange: np.ndarray
    pval: np.ndarray
    pval_adj: np.ndarray
    frac_in: np.ndarray
    frac_out: np.ndarray
    mean_in: np.ndarray
    mean_out: np.ndarray

    @property
    def n_types(self) -> int:
        return len(self.n_cells)

    @property
    def types(self) -> np.ndarray:
        """Types with cells (the rows the table shows)."""
        return np.flatnonzero(self.n_cells > 0)

    def order(self, type_index: int) -> np.ndarray:
        """Genes of one type from the best marker down: by score, ties (e.g. genes every cell of the type
        expresses above all other cells) by the larger log fold change."""
        return np.lexsort((-np.nan_to_num(self.logfoldchange[type_index], nan=-np.inf), -self.score[type_index]))

    def top_genes(self, type_index: int, n: int = DEFAULT_TOP) -> list[str]:
        """The ``n`` best marker genes of one type (empty for a type without cells)."""
        if self.n_cells[type_index] == 0:
            return []
        return [self.genes[g] for g in self.order(type_index)[:n]]

    def table(self, top: int | None = DEFAULT_TOP, names: list[str] | None = None) -> pd.DataFrame:
        """One row per (type, marker): the ``top`` best genes of every type with cells (None: all genes),
        columns :data:`COLUMNS`; ``names`` (K,) fills the ``name`` column (default: the type index)."""
        top = check_top(top, allow_none=True)
        frames = []
        for t in self.types:
            order = self.order(t)[: top or None]
            frames.append(pd.DataFrame({
                "type": int(t),
                "name": names[t] if names is not None else str(t),
                "rank": np.arange(1, len(order) + 1),
                "gene": [self.genes[g] for g in order],
                "score": self.score[t, order],
                "logfoldchange": self.logfoldchange[t, order],
                "pval": self.pval[t, order],
                "pval_adj": self.pval_adj[t, order],
                "frac_in": self.frac_in[t, order],
                "frac_out": self.frac_out[t, order],
                "mean_in": self.mean_in[t, order],
                "mean_out": self.mean_out[t, order],
                "n_cells": int(self.n_cells[t]),
            }))
        if not frames:
            return pd.DataFrame(columns=COLUMNS)
        return pd.concat(frames, ignore_index=True)[COLUMNS]


def check_top(top, allow_none: bool = False) -> int | None:
    if top is None and allow_none:
        return None
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or not 1 <= int(top) <= 1000:
        raise CplmixError(f"the number of markers per type must be from 1 to 1000, got {top!r}")
    return int(top)


def benjamini_hochberg(pvals: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (as statsmodels' ``fdr_bh``); NaN counts as 1."""
    p = np.where(np.isnan(pvals), 1.0, np.asarray(pvals, np.float64))
    n = len(p)
    if n == 0:
        return p
    order = np.argsort(p, kind="mergesort")
    scaled = p[order] * n / np.arange(1, n + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def _gene_chunks(prepared: PreparedData):
    """(start, stop, values) over gene chunks: values is the chunk's model input, a CSC matrix (from sparse
    data) or a dense float32 array, with exactly the arithmetic of ``PreparedData.model_input``."""
    matrix = prepared.matrix
    n_cells, n_genes = matrix.shape
    scale = None
    if prepared.preprocessing.transform == LOG1P_NORMALIZE:
        scale = (prepared.preprocessing.target_sum / prepared.library_size).astype(np.float32)
    if sp.issparse(matrix):
        matrix = matrix.tocsr()
        step = _SPARSE_CHUNK
    else:
        step = max(1, _DENSE_BUDGET // max(n_cells, 1))
    for start in range(0, n_genes, step):
        stop = min(start + step, n_genes)
        if sp.issparse(matrix):
            block = matrix[:, start:stop].tocsc()
            block.sum_duplicates()
            data = block.data.astype(np.float32, copy=False)
            if scale is not None:
                rows = block.indices
                data = np.log1p(data * scale[rows])
            block = sp.csc_matrix((data, block.indices, block.indptr), shape=block.shape)
            block.eliminate_zeros()
            yield start, stop, block
        else:
            block = np.asarray(matrix[:, start:stop]).astype(np.float32, copy=False)
            if scale is not None:
                block = np.log1p(block * scale[:, None])
            yield start, stop, block


def _sparse_column_stats(block: sp.csc_matrix, assignment: np.ndarray, n_in: np.ndarray):
    """Rank sums (K, g), sums (K, g) and non-zero counts (K, g) of a CSC chunk, ranking each column over
    all cells from its non-zero entries (zeros tie at one average rank)."""
    n_cells = block.shape[0]
    n_types, n_columns = len(n_in), block.shape[1]
    rank_sums = np.zeros((n_types, n_columns))
    sums = np.zeros((n_types, n_columns))
    nonzero = np.zeros((n_types, n_columns))
    for j in range(n_columns):
        lo, hi = block.indptr[j], block.indptr[j + 1]
        values = block.data[lo:hi]
        types = assignment[block.indices[lo:hi]]
        zeros = n_cells - len(values)
        count = np.bincount(types, minlength=n_types)
        nonzero[:, j] = count
        sums[:, j] = np.bincount(types, weights=values, minlength=n_types)
        if len(values):
            ranks = rankdata(values)
            negative = int((values < 0).sum())
            ranks = ranks + np.where(values > 0, zeros, 0)
            zero_rank = negative + (zeros + 1) / 2.0
            rank_sums[:, j] = np.bincount(types, weights=ranks, minlength=n_types) + zero_rank * (n_in - count)
        else:
            rank_sums[:, j] = n_in * (n_cells + 1) / 2.0
    return rank_sums, sums, nonzero


def wilcoxon_markers(prepared: PreparedData, assignment: np.ndarray, n_types: int) -> MarkerStatistics:
    """The one-vs-rest Wilcoxon test of every type against all other cells (module docstring)."""
    assignment = np.asarray(assignment, dtype=np.int64)
    n_cells, n_genes = prepared.matrix.shape
    if assignment.shape != (n_cells,):
        raise CplmixError(f"markers: {len(assignment)} type assignments for {n_cells} cells")
    if n_cells < 2:
        raise CplmixError("markers need at least two cells")
    n_in = np.bincount(assignment, minlength=n_types).astype(np.float64)
    n_out = n_cells - n_in
    indicator = sp.csr_matrix((np.ones(n_cells), (assignment, np.arange(n_cells))), shape=(n_types, n_cells))
    rank_sums = np.zeros((n_types, n_genes))
    sums = np.zeros((n_types, n_genes))
    nonzero = np.zeros((n_types, n_genes))
    for start, stop, block in _gene_chunks(prepared):
        if sp.issparse(block):
            r, s, z = _sparse_column_stats(block, assignment, n_in)
        else:
            r = indicator @ rankdata(block, axis=0)
            s = indicator @ block.astype(np.float64)
            z = indicator @ (block != 0).astype(np.float64)
        rank_sums[:, start:stop], sums[:, start:stop], nonzero[:, start:stop] = r, s, z
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(n_in * n_out * (n_cells + 1) / 12.0)[:, None]
        score = (rank_sums - (n_in * (n_cells + 1) / 2.0)[:, None]) / std
        score[np.isnan(score) | ~np.isfinite(score)] = 0.0
        mean_in = sums / n_in[:, None]
        mean_out = (sums.sum(axis=0, keepdims=True) - sums) / n_out[:, None]
        frac_in = nonzero / n_in[:, None]
        frac_out = (nonzero.sum(axis=0, keepdims=True) - nonzero) / n_out[:, None]
        logfoldchange = np.log2((np.expm1(mean_in) + 1e-9) / (np.expm1(mean_out) + 1e-9))
    pval = 2 * norm.sf(np.abs(score))
    pval_adj = np.vstack([benjamini_hochberg(row) for row in pval]) if n_types else pval
    empty = n_in == 0
    for array in (score, logfoldchange, pval, pval_adj, frac_in, mean_in):
        array[empty] = np.nan
    mean_out[n_out == 0] = np.nan
    frac_out[n_out == 0] = np.nan
    return MarkerStatistics(
        genes=[str(g) for g in prepared.genes], n_cells=n_in.astype(np.int64), score=score,
        logfoldchange=logfoldchange, pval=pval, pval_adj=pval_adj, frac_in=frac_in, frac_out=frac_out,
        mean_in=mean_in, mean_out=mean_out,
    )


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def marker_statistics(model) -> MarkerStatistics:
    """The Wilcoxon markers of a trained model's consensus types, computed once per inference."""
    inference = model.predict()
    with _CACHE_LOCK:
        cached = _CACHE.get(model)
        if cached is not None and cached[0] is inference:
            return cached[1]
    statistics = wilcoxon_markers(model.prepared, inference.consensus_type, int(model.module.n_types))
    with _CACHE_LOCK:
        _CACHE[model] = (inference, statistics)
    return statistics


def markers(model, top: int = DEFAULT_TOP, names: list[str] | None = None) -> pd.DataFrame:
    """The top ``top`` marker genes of every type with cells (one row per type and gene, :data:`COLUMNS`);
    the ``name`` column holds ``names`` (default: the model's type names)."""
    top = check_top(top)
    if names is None:
        names = model.type_names()
    return marker_statistics(model).table(top, names)


# -- the dot plot -----------------------------------------------------------------------------------------
def dotplot_figure(
    statistics: MarkerStatistics,
    top: int = 3,
    names: list[str] | None = None,
    *,
    types: list[int] | None = None,
    figsize: tuple[float, float] | None = None,
    cmap: str = "Reds",
    title: str | None = "Marker genes per type (Wilcoxon, one vs rest)",
) -> Figure:
    """Dot plot: rows = types, columns = the top ``top`` markers of every type (in type order, each gene
    once); dot area = fraction of the type's cells expressing the gene, colour = mean log-expression in the
    type. Drawn with matplotlib's object API (no pyplot; safe in a server thread)."""
    top = check_top(top)
    rows = [int(t) for t in (statistics.types if types is None else types)]
    if not rows:
        raise CplmixError("no type has cells: nothing to draw")
    genes: list[str] = []
    for t in rows:
        for gene in statistics.top_genes(t, top):
            if gene not in genes:
                genes.append(gene)
    position = {g: i for i, g in enumerate(statistics.genes)}
    columns = [position[g] for g in genes]
    fraction = statistics.frac_in[np.ix_(rows, columns)]
    mean = statistics.mean_in[np.ix_(rows, columns)]
    labels = [names[t] if names is not None else str(t) for t in rows]
    if figsize is None:
        width = min(max(4.5, 0.32 * len(genes) + 0.09 * max(len(s) for s in labels) + 2.4), 60.0)
        height = min(max(2.6, 0.34 * len(rows) + 1.9), 60.0)
        figsize = (width, height)
    figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    x, y = np.meshgrid(np.arange(len(genes)), np.arange(len(rows)))
    vmax = float(np.nanmax(mean)) if np.isfinite(mean).any() and np.nanmax(mean) > 0 else 1.0
    points = ax.scatter(x.ravel(), y.ravel(), s=np.nan_to_num(fraction.ravel()) * 160, c=mean.ravel(), cmap=cmap,
                        vmin=0.0, vmax=vmax, edgecolors="0.35", linewidths=0.4)
    ax.set_xticks(np.arange(len(genes)))
    ax.set_xticklabels(genes, rotation=90, fontsize=8)
    ax.set_yticks(np.arange(len(rows)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlim(-0.6, len(genes) - 0.4)
    ax.set_ylim(len(rows) - 0.4, -0.6)  # first type at the top
    ax.grid(True, color="0.92", linewidth=0.6)
    ax.set_axisbelow(True)
    bar = figure.colorbar(points, ax=ax, fraction=0.04, pad=0.01, aspect=20, shrink=0.8)
    bar.set_label("mean log-expression in type", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    sizes = [ax.scatter([], [], s=share * 160, color="0.6", edgecolors="0.35", linewidths=0.4) for share in (0.25, 0.5, 0.75, 1.0)]
    figure.legend(sizes, ["25%", "50%", "75%", "100%"], title="cells\nexpressing", fontsize=7, title_fontsize=7,
                  loc="outside right upper", frameon=False, labelspacing=1.2)
    if title:
        ax.set_title(title, fontsize=10)
    return figure


def dotplot(model, top: int = 3, **options) -> Figure:
    """:func:`dotplot_figure` of a trained model's markers, rows named by the model's type names."""
    return dotplot_figure(marker_statistics(model), top, model.type_names(), **options)


__all__ = ["COLUMNS", "DEFAULT_TOP", "MarkerStatistics", "benjamini_hochberg", "dotplot", "dotplot_figure", "markers",
           "marker_statistics", "wilcoxon_markers"]
