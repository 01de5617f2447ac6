"""Traversal figures and tables for a paper, without a browser.

- :func:`heatmap_figure` draws a :class:`~cplmix_explorer.analysis.traversal.Traversal` (or a
  :class:`~cplmix_explorer.analysis.traversal.TypeComparison`, one panel per type, side by side, one shared
  colour scale) with matplotlib's object API (no pyplot, no global state, safe in a server thread): rows =
  state value (increasing upwards), columns = genes grouped MG | IEG | HKG | custom with separators and group
  labels, a colour bar naming the normalisation, optional gene labels and a marker at a chosen state value.
- :func:`save_heatmap` writes it as PNG, SVG or PDF (text kept as text: SVG ``fonttype none``, PDF Type 42
  fonts, so labels stay editable in a vector editor).
- :func:`save_table` writes the matrix (rows = state, columns = genes), the per-gene scores, the group
  summary or the tidy long form as CSV or Parquet.

Every file is written atomically (temporary file in the same folder, then rename): an interrupted export
never leaves a half-written file, and an existing file is replaced only by a complete one.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps, rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from ..errors import CplmixError
from ..files import atomic_write_bytes
from .traversal import MINMAX, Traversal, TypeComparison

FIGURE_FORMATS = ("png", "svg", "pdf")
TABLE_FORMATS = ("csv", "parquet")
TABLES = ("matrix", "scores", "summary", "long")
_NORMALIZATION_LABEL = {
    "zscore": "reconstructed expression (z-score vs. all cells)",
    MINMAX: "reconstructed expression (min-max across the sweep)",
}


# -- file names ------------------------------------------------------------------------------------------
def output_format(path: str | os.PathLike, allowed: tuple[str, ...] = FIGURE_FORMATS + TABLE_FORMATS) -> str:
    """The format named by ``path``'s suffix; a clear error for a missing or unknown suffix or a folder."""
    path = Path(path).expanduser()
    if path.name in ("", ".", ".."):
        raise CplmixError(f"'{path}' is not a file name")
    if path.is_dir():
        raise CplmixError(f"'{path}' is a folder; give a file name ending in {_suffixes(allowed)}")
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in allowed:
        shown = f"'.{suffix}'" if suffix else "no suffix"
        raise CplmixError(f"cannot tell the format of '{path.name}' ({shown}); use {_suffixes(allowed)}")
    if path.parent.exists() and not path.parent.is_dir():
        raise CplmixError(f"'{path.parent}' is not a folder")
    return suffix


def _suffixes(formats: tuple[str, ...]) -> str:
    return " ".join(f".{f}" for f in formats)


def safe_file_name(text: str, max_length: int = 100) -> str:
    """``text`` made safe as a file name on every system: letters, digits, ``.``, ``_`` and ``-`` kept,
    everything else (path separators, spaces, ``:``) turned into ``_``; never empty, never hidden."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "traversal"
    return name[:max_length]


def default_file_name(result: Traversal | TypeComparison, suffix: str) -> str:
    """A descriptive, safe file name such as ``traversal_type3_L5_NP_dim0.png`` (the type's name)."""
    results = result.traversals if isinstance(result, TypeComparison) else [result]
    parts = ["traversal"]
    for r in results:
        label = (r.type_label or "").removeprefix(f"{r.type} · ")  # the name without its number, given just before
        parts.append(f"type{r.type}" + (f"_{label}" if label else ""))
    parts.append(f"dim{results[0].dim}")
    return f"{safe_file_name('_'.join(parts))}.{suffix.lstrip('.')}"


def sibling_path(path: str | os.PathLike, tag: str) -> Path:
    """``out/traversal.csv`` + ``scores`` -> ``out/traversal.scores.csv``."""
    path = Path(path).expanduser()
    return path.with_name(f"{path.stem}.{safe_file_name(tag)}{path.suffix}")


# -- the heatmap -----------------------------------------------------------------------------------------
def heatmap_figure(
    result: Traversal | TypeComparison,
    *,
    max_genes_per_group: int | None = 30,
    figsize: tuple[float, float] | None = None,
    cmap: str | None = None,
    gene_labels: bool | str = "auto",
    mark_state: float | None = None,
    colorbar: bool = True,
    title: str | None = None,
    color_limits: tuple[float, float] | None = None,
    state_label: str | None = None,
) -> Figure:
    """A publication heatmap of a traversal (one panel) or a type comparison (a panel per type).

    max_genes_per_group: genes shown per group, the most driven ones (None: all). figsize: inches (width,
    height); default from the number of columns. cmap: a matplotlib colour map name (default ``RdBu_r``
    for z-scores, ``viridis`` for min-max). gene_labels: True, False or "auto" (shown up to 80 columns per
    panel). mark_state: a state value to mark with a line and a triangle (the app's slider position; in a
    comparison, on every panel). color_limits: (low, high); default symmetric around 0 at the 99th
    percentile of |z| for z-scores, (0, 1) for min-max. state_label: the name of the swept dimension on the
    vertical axis (default "state dimension D", as ``cplmix traverse --dim D``).
    """
    results = result.traversals if isinstance(result, TypeComparison) else [result]
    normalization = results[0].normalization
    if any(r.normalization != normalization for r in results):
        raise CplmixError("the traversals to draw together use different normalisations")
    if max_genes_per_group is not None and max_genes_per_group < 1:
        raise CplmixError(f"max_genes_per_group must be at least 1, got {max_genes_per_group}")
    if isinstance(result, TypeComparison):
        matrices = result.display_matrices(max_genes_per_group)
    else:
        matrices = [result.display_matrix(max_genes_per_group)]
    if all(m.values.shape[1] == 0 for m in matrices):
        raise CplmixError("no genes to draw: every gene group is empty for this model's genes")
    if cmap is None:
        cmap = "viridis" if normalization == MINMAX else "RdBu_r"
    _check_cmap(cmap)
    if color_limits is None:
        color_limits = _default_limits(matrices, normalization)
    n_columns = max(m.values.shape[1] for m in matrices)
    show_labels = gene_labels if isinstance(gene_labels, bool) else n_columns <= 80
    if isinstance(gene_labels, str) and gene_labels != "auto":
        raise CplmixError(f"gene_labels must be True, False or 'auto', got '{gene_labels}'")
    if figsize is None:
        width = sum(max(3.0, 0.16 * m.values.shape[1] + 1.4) for m in matrices) + (1.2 if colorbar else 0.3)
        figsize = (min(width, 40.0), 4.8 if show_labels else 4.0)
    try:
        width, height = (float(v) for v in figsize)
    except (TypeError, ValueError):
        raise CplmixError(f"figure size must be (width, height) in inches, got {figsize!r}") from None
    if not (0.5 <= width <= 200 and 0.5 <= height <= 200):
        raise CplmixError(f"figure size {width:g} x {height:g} inches is out of range (0.5 to 200)")

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    ratios = [max(m.values.shape[1], 1) for m in matrices]
    axes = figure.subplots(1, len(matrices), squeeze=False, gridspec_kw={"width_ratios": ratios})[0]
    image = None
    for ax, traversal, matrix in zip(axes, results, matrices):
        image = _draw_panel(ax, traversal, matrix, cmap, color_limits, show_labels, mark_state)
        if len(results) > 1:
            ax.set_title(traversal.type_label or f"type {traversal.type}", fontsize=10, pad=18)
    axes[0].set_ylabel(state_label or f"state dimension {results[0].dim}")
    if colorbar and image is not None:
        bar = figure.colorbar(image, ax=list(axes), fraction=0.04, pad=0.02, aspect=30)
        bar.set_label(_NORMALIZATION_LABEL.get(normalization, normalization), fontsize=8)
        bar.ax.tick_params(labelsize=7)
    heading = title if title is not None else (results[0].title if len(results) == 1 else f"state dimension {results[0].dim}")
    if heading:
        figure.suptitle(heading, fontsize=11)
    return figure


def _check_cmap(name: str) -> None:
    if name not in colormaps:
        raise CplmixError(f"unknown colour map '{name}' (e.g. RdBu_r, viridis, magma, coolwarm)")


def _default_limits(matrices, normalization: str) -> tuple[float, float]:
    if normalization == MINMAX:
        return 0.0, 1.0
    values = np.concatenate([np.abs(m.values.to_numpy()).ravel() for m in matrices])
    values = values[np.isfinite(values)]
    limit = float(np.percentile(values, 99)) if values.size else 1.0
    limit = max(limit, 0.5)
    return -limit, limit


def _draw_panel(ax, traversal: Traversal, matrix, cmap, color_limits, show_labels, mark_state):
    values = matrix.values.to_numpy()
    state = traversal.state
    n_steps, n_columns = values.shape
    half = (state[-1] - state[0]) / (2 * max(n_steps - 1, 1))
    image = ax.imshow(
        values if n_columns else np.full((n_steps, 1), np.nan),
        aspect="auto", origin="lower", interpolation="nearest", cmap=cmap,
        vmin=color_limits[0], vmax=color_limits[1],
        extent=(0, max(n_columns, 1), state[0] - half, state[-1] + half),
    )
    on_top = blended_transform_factory(ax.transData, ax.transAxes)
    for name, start, stop in matrix.groups:
        if start > 0:
            ax.axvline(start, color="black", linewidth=1.2)
        ax.text((start + stop) / 2, 1.01, name, transform=on_top, ha="center", va="bottom", fontsize=9, fontweight="bold")
    if show_labels and n_columns:
        size = 7 if n_columns <= 40 else 5
        ax.set_xticks(np.arange(n_columns) + 0.5)
        ax.set_xticklabels(matrix.values.columns, rotation=90, fontsize=size)
        ax.tick_params(axis="x", length=0)
    else:
        ax.set_xticks([])
    ax.tick_params(axis="y", labelsize=7)
    if mark_state is not None:
        value = float(mark_state)
        ax.axhline(value, color="black", linewidth=1.0, linestyle="--")
        ax.plot([0], [value], marker=">", color="black", markersize=7, clip_on=False, transform=ax.transData)
    if traversal.cell_state is not None:
        ax.axhline(traversal.cell_state, color="dimgray", linewidth=0.8, linestyle=":")
    return image


def figure_bytes(figure: Figure, file_format: str, dpi: int = 300) -> bytes:
    """The figure encoded as PNG / SVG / PDF bytes, with text kept editable in vector formats."""
    if file_format not in FIGURE_FORMATS:
        raise CplmixError(f"unknown figure format '{file_format}' (use {', '.join(FIGURE_FORMATS)})")
    if not 10 <= int(dpi) <= 2400:
        raise CplmixError(f"dpi must be from 10 to 2400, got {dpi}")
    buffer = io.BytesIO()
    metadata = {"Creator": "cplmix-explorer"} if file_format in ("svg", "pdf") else {"Software": "cplmix-explorer"}
    with rc_context({"svg.fonttype": "none", "pdf.fonttype": 42, "svg.hashsalt": "cplmix"}):
        figure.savefig(buffer, format=file_format, dpi=int(dpi), metadata=metadata)
    return buffer.getvalue()


def save_heatmap(
    result: Traversal | TypeComparison, path: str | os.PathLike, *, dpi: int = 300, **figure_options
) -> Path:
    """Write the heatmap to ``path`` (format from the suffix: .png .svg .pdf), atomically; returns the path.
    ``figure_options`` go to :func:`heatmap_figure`."""
    file_format = output_format(path, FIGURE_FORMATS)
    payload = figure_bytes(heatmap_figure(result, **figure_options), file_format, dpi)
    path = Path(path).expanduser()
    atomic_write_bytes(path, payload)
    return path


# -- tables ------------------------------------------------------------------------------------------------
def table(result: Traversal | TypeComparison, what: str = "matrix", *, values: str = "expression", genes: str = "groups") -> pd.DataFrame:
    """A table of a traversal as a flat DataFrame ready to write.

    what: "matrix" (rows = state value, columns = genes; a comparison stacks the types with a ``type``
    column), "scores" (one row per gene: group, amplitude, rho, range, change, spread, mean), "summary" (one
    row per group) or "long" (one row per state x gene). values: "expression" (log-normalised scale) or
    "normalized". genes: "groups" (genes of the gene groups) or "all" (every model gene).
    """
    if what not in TABLES:
        raise CplmixError(f"unknown table '{what}' (use {', '.join(TABLES)})")
    if genes not in ("groups", "all"):
        raise CplmixError(f"genes must be 'groups' or 'all', got '{genes}'")
    if isinstance(result, TypeComparison):
        frames = []
        for r in result.traversals:
            frame = table(r, what, values=values, genes=genes)
            frame.insert(0, "type_label", r.type_label or "")
            frame.insert(0, "type", r.type)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)
    if what == "matrix":
        return result.matrix(genes, values).reset_index()
    if what == "scores":
        scores = result.scores if genes == "all" else result.scores[result.scores["group"] != ""]
        return scores.sort_values("amplitude", ascending=False, kind="stable").reset_index()
    if what == "summary":
        return result.group_summary.reset_index()
    return result.to_long(genes)


def table_bytes(frame: pd.DataFrame, file_format: str) -> bytes:
    if file_format == "csv":
        return frame.to_csv(index=False).encode()
    if file_format == "parquet":
        try:
            import pyarrow  # noqa: F401  # lazy: an optional dependency, checked when Parquet is asked for
        except ImportError:
            raise CplmixError("writing Parquet needs pyarrow (pip install pyarrow); or write .csv") from None
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return buffer.getvalue()
    raise CplmixError(f"unknown table format '{file_format}' (use {', '.join(TABLE_FORMATS)})")


def save_table(result: Traversal | TypeComparison, path: str | os.PathLike, what: str = "matrix", **options) -> Path:
    """Write :func:`table` (``what``, ``options``) to ``path`` as CSV or Parquet (from the suffix), atomically."""
    file_format = output_format(path, TABLE_FORMATS)
    payload = table_bytes(table(result, what, **options), file_format)
    path = Path(path).expanduser()
    atomic_write_bytes(path, payload)
    return path


def export(result: Traversal | TypeComparison, path: str | os.PathLike, *, values: str = "expression",
           genes: str = "groups", dpi: int = 300, **figure_options) -> list[Path]:
    """Write ``path`` in the format its suffix names: a heatmap (.png .svg .pdf), or for a table (.csv
    .parquet) the matrix at ``path`` and the per-gene scores beside it (``NAME.scores.csv``). Returns the
    paths written. Formats and options are checked before anything is written."""
    file_format = output_format(path)
    if file_format in FIGURE_FORMATS:
        return [save_heatmap(result, path, dpi=dpi, **figure_options)]
    matrix = table_bytes(table(result, "matrix", values=values, genes=genes), file_format)
    scores = table_bytes(table(result, "scores", genes=genes), file_format)
    path = Path(path).expanduser()
    scores_path = sibling_path(path, "scores")
    atomic_write_bytes(path, matrix)
    atomic_write_bytes(scores_path, scores)
    return [path, scores_path]
