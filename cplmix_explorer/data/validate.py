"""Input validation shared by the CLI, the Python API and the app: one clear message per problem."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from ..config import cli_flag
from ..errors import CplmixError

#: Rows scanned per chunk when checking large matrices (bounded memory) ...
_CHUNK_ROWS = 16384
#: ... and at most this many matrix entries per chunk (wide dense data: 2**24 float64 values = 128 MiB).
_CHUNK_ENTRIES = 2**24


@dataclass(frozen=True)
class MatrixSummary:
    """What validation learned about the expression matrix."""

    is_counts: bool  # every value a non-negative integer
    has_negative: bool
    n_empty_cells: int
    n_empty_genes: int
    first_empty_cell: int = -1  # row of the first cell without any non-zero value, -1 when none
    first_empty_gene: int = -1  # column of the first gene without any non-zero value, -1 when none
    first_negative: tuple[int, int, float] | None = None  # (row, column, value) of the first negative entry


def expression_matrix(adata: AnnData, layer: str | None = None):
    """The matrix the model reads: ``adata.X`` or ``adata.layers[layer]`` (dense, sparse or backed)."""
    if layer is not None:
        if layer not in adata.layers:
            available = ", ".join(sorted(adata.layers)) or "none"
            raise CplmixError(f"unknown layer '{layer}' (available layers: {available})")
        return adata.layers[layer]
    if adata.X is None:
        raise CplmixError("the AnnData has no X matrix; pass --layer to read a layer instead")
    return adata.X


def _iter_row_chunks(matrix, chunk_rows: int | None = None):
    """Blocks of at most ``chunk_rows`` consecutive rows (default: ``_CHUNK_ROWS``, fewer for wide matrices),
    in memory (sparse or dense); on backed data only one block is read at a time."""
    n_rows, n_columns = matrix.shape
    chunk_rows = chunk_rows or max(1, min(_CHUNK_ROWS, _CHUNK_ENTRIES // max(n_columns, 1)))
    for start in range(0, n_rows, chunk_rows):
        block = matrix[start : min(start + chunk_rows, n_rows)]
        if hasattr(block, "to_memory"):  # anndata backed sparse dataset
            block = block.to_memory()
        yield block


def _values_of(block) -> np.ndarray:
    if sp.issparse(block):
        return np.asarray(block.data)
    return np.asarray(block).ravel()


def _position_of(block, flat_index: int) -> tuple[int, int]:
    """(row, column) in ``block`` of the ``flat_index``-th value returned by :func:`_values_of`."""
    if sp.issparse(block):
        block = sp.csr_matrix(block)
        row = int(np.searchsorted(block.indptr, flat_index, side="right") - 1)
        return row, int(block.indices[flat_index])
    return divmod(int(flat_index), block.shape[1])


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """'1 cell', '3 cells'."""
    return f"{count:,} {singular if count == 1 else (plural_form or singular + 's')}"


class _Names:
    """Cell and gene names for messages (positions when the caller has no AnnData)."""

    def __init__(self, obs_names=None, var_names=None):
        self.obs_names, self.var_names = obs_names, var_names

    def cell(self, row: int) -> str:
        return f"'{self.obs_names[row]}'" if self.obs_names is not None else f"row {row}"

    def gene(self, column: int) -> str:
        return f"'{self.var_names[column]}'" if self.var_names is not None else f"column {column}"


def summarize_matrix(matrix, obs_names=None, var_names=None) -> MatrixSummary:
    """Scan the matrix once in row chunks: dtype, finiteness, integrality, sign, empty rows and columns.

    NaN and Inf raise :class:`CplmixError` naming the first cell and gene that holds one.
    """
    names = _Names(obs_names, var_names)
    dtype = np.dtype(matrix.dtype)
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_) or np.issubdtype(dtype, np.complexfloating):
        raise CplmixError(f"the expression matrix must be numeric, found dtype {dtype}")
    is_counts, has_negative = True, False
    first_negative = None
    n_empty_cells, first_empty_cell = 0, -1
    gene_nonzero = np.zeros(matrix.shape[1], dtype=bool)
    start = 0
    for block in _iter_row_chunks(matrix):
        values = _values_of(block)
        if np.issubdtype(values.dtype, np.floating):
            finite = np.isfinite(values)
            if not finite.all():
                kind = "NaN" if np.isnan(values[~finite]).any() else "Inf"
                where = np.flatnonzero(np.isnan(values) if kind == "NaN" else np.isinf(values))[0]
                row, column = _position_of(block, where)
                raise CplmixError(
                    f"the expression matrix contains {kind} values (first: cell {names.cell(start + row)}, "
                    f"gene {names.gene(column)})"
                )
            if is_counts and not np.all(values == np.floor(values)):
                is_counts = False
        if values.size and values.min() < 0:
            if first_negative is None:
                where = int(np.argmax(values < 0))
                row, column = _position_of(block, where)
                first_negative = (start + row, column, float(values[where]))
            has_negative = True
            is_counts = False
        nonzero_block = sp.csr_matrix(block != 0) if sp.issparse(block) else sp.csr_matrix(np.asarray(block) != 0)
        empty_rows = np.flatnonzero(np.diff(nonzero_block.indptr) == 0)
        if empty_rows.size and first_empty_cell < 0:
            first_empty_cell = start + int(empty_rows[0])
        n_empty_cells += int(empty_rows.size)
        gene_nonzero[nonzero_block.indices] = True
        start += block.shape[0]
    return MatrixSummary(
        is_counts=is_counts,
        has_negative=has_negative,
        n_empty_cells=n_empty_cells,
        n_empty_genes=int((~gene_nonzero).sum()),
        first_empty_cell=first_empty_cell,
        first_empty_gene=int(np.argmin(gene_nonzero)) if not gene_nonzero.all() else -1,
        first_negative=first_negative,
    )


def _integer_looking_with_negatives(matrix) -> bool:
    """True when the values are all integers but some are negative: corrupted counts, not transformed data."""
    for block in _iter_row_chunks(matrix):
        values = _values_of(block)
        if values.size and not np.all(values == np.round(values)):
            return False
    return True


def _duplicates(index) -> str:
    duplicated = index[index.duplicated()].unique()
    shown = ", ".join(f"'{name}'" for name in duplicated[:3])
    more = f" and {len(duplicated) - 3:,} more" if len(duplicated) > 3 else ""
    return f"{shown}{more}"


def validate_anndata(
    adata: AnnData,
    layer: str | None = None,
    labels: str | None = None,
    require_counts: bool = False,
) -> MatrixSummary:
    """Check an AnnData before training or inference; raise :class:`CplmixError` naming the first problem.

    Checks: cells and genes present, numeric finite values, no negative counts, unique cell and gene names,
    cells with no counts, the labels column present. Genes with no counts are reported as a warning (they
    are never selected; not for images, whose blank border pixels are expected). Returns the
    :class:`MatrixSummary` used to choose the preprocessing. Backed (on-disk) AnnData are scanned in row chunks.
    """
    if not isinstance(adata, AnnData):
        raise CplmixError(f"expected an AnnData object, got {type(adata).__name__}")
    if adata.n_obs == 0:
        raise CplmixError("the data has no cells (0 rows)")
    if adata.n_vars == 0:
        raise CplmixError("the data has no genes (0 columns)")
    if labels is not None and labels not in adata.obs.columns:
        available = ", ".join(map(str, adata.obs.columns)) or "none"
        raise CplmixError(f"unknown labels column '{labels}' (obs columns: {available})")
    if not adata.var_names.is_unique:
        raise CplmixError(
            f"duplicate gene names ({_duplicates(adata.var_names)}); make them unique first "
            "(adata.var_names_make_unique())"
        )
    if not adata.obs_names.is_unique:
        raise CplmixError(
            f"duplicate cell names ({_duplicates(adata.obs_names)}); make them unique first "
            "(adata.obs_names_make_unique())"
        )
    matrix = expression_matrix(adata, layer)
    names = _Names(adata.obs_names, adata.var_names)
    summary = summarize_matrix(matrix, adata.obs_names, adata.var_names)
    if summary.has_negative and (require_counts or _integer_looking_with_negatives(matrix)):
        row, column, value = summary.first_negative
        raise CplmixError(
            f"the expression matrix holds negative values where counts are expected (first: cell "
            f"{names.cell(row)}, gene {names.gene(column)}: {value:g})"
        )
    if require_counts and not summary.is_counts:
        raise CplmixError("the negative-binomial likelihood needs raw counts (non-negative integers) in X")
    if summary.n_empty_cells == adata.n_obs:
        raise CplmixError("every cell has zero expression")
    if summary.n_empty_cells and summary.is_counts:
        raise CplmixError(
            f"{plural(summary.n_empty_cells, 'cell')} without any counts (first: {names.cell(summary.first_empty_cell)}); "
            f"pass {cli_flag('drop_empty_cells')} (drop_empty_cells=True in Python) to drop them, or remove them "
            "first, e.g. scanpy.pp.filter_cells(adata, min_counts=1)"
        )
    if summary.n_empty_cells:
        warnings.warn(
            f"{plural(summary.n_empty_cells, 'cell')} with all-zero values (first: {names.cell(summary.first_empty_cell)})",
            stacklevel=2,
        )
    if summary.n_empty_genes and "image_shape" not in adata.uns:
        warnings.warn(
            f"{plural(summary.n_empty_genes, 'gene')} without any non-zero value (first: "
            f"{names.gene(summary.first_empty_gene)}); they carry no information, "
            "e.g. scanpy.pp.filter_genes(adata, min_cells=1) removes them",
            stacklevel=2,
        )
    return summary


def empty_cells(matrix) -> np.ndarray:
    """Boolean mask (N,) of the rows without any non-zero value, scanned in row chunks."""
    masks = []
    for block in _iter_row_chunks(matrix):
        nonzero = sp.csr_matrix(block != 0) if sp.issparse(block) else sp.csr_matrix(np.asarray(block) != 0)
        masks.append(np.diff(nonzero.indptr) == 0)
    return np.concatenate(masks) if masks else np.zeros(0, dtype=bool)


def drop_empty_cells(adata: AnnData, layer: str | None = None) -> tuple[AnnData, int]:
    """``adata`` without its cells that have no counts (all-zero rows of X or ``layer``), and how many were
    dropped (a warning says so); ``adata`` itself is returned unchanged when none is empty, and a copy
    otherwise (the caller's object is never modified)."""
    empty = empty_cells(expression_matrix(adata, layer))
    n_empty = int(empty.sum())
    if n_empty == 0:
        return adata, 0
    if n_empty == adata.n_obs:
        raise CplmixError("every cell has zero expression")
    first = adata.obs_names[int(np.argmax(empty))]
    warnings.warn(f"dropped {plural(n_empty, 'cell')} without any counts (first: '{first}'; {cli_flag('drop_empty_cells')})",
                  stacklevel=2)
    kept = adata[~empty]
    return (kept.to_memory() if adata.isbacked else kept.copy()), n_empty


def check_types_fit_cells(n_types: int, n_cells: int) -> None:
    """More types than cells cannot be learned."""
    if n_types > n_cells:
        raise CplmixError(f"more types ({n_types}) than cells ({n_cells}); lower --types")
