"""Input validation shared by the CLI, the Python API and the app: one clear message per problem."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from ..errors import CplmixError

#: Rows scanned per chunk when checking large matrices (bounded memory).
_CHUNK_ROWS = 16384


@dataclass(frozen=True)
class MatrixSummary:
    """What validation learned about the expression matrix."""

    is_counts: bool  # every value a non-negative integer
    has_negative: bool
    n_empty_cells: int
    n_empty_genes: int


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


def _iter_row_chunks(matrix, chunk_rows: int = _CHUNK_ROWS):
    n_rows = matrix.shape[0]
    for start in range(0, n_rows, chunk_rows):
        block = matrix[start : min(start + chunk_rows, n_rows)]
        if hasattr(block, "to_memory"):  # anndata backed sparse dataset
            block = block.to_memory()
        yield block


def _values_of(block) -> np.ndarray:
    if sp.issparse(block):
        return np.asarray(block.data)
    return np.asarray(block).ravel()


def summarize_matrix(matrix) -> MatrixSummary:
    """Scan the matrix once in row chunks: dtype, finiteness, integrality, sign, empty rows and columns."""
    dtype = np.dtype(matrix.dtype)
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_) or np.issubdtype(dtype, np.complexfloating):
        raise CplmixError(f"the expression matrix must be numeric, found dtype {dtype}")
    is_counts, has_negative = True, False
    n_empty_cells = 0
    gene_nonzero = np.zeros(matrix.shape[1], dtype=bool)
    for block in _iter_row_chunks(matrix):
        values = _values_of(block)
        if np.issubdtype(values.dtype, np.floating):
            finite = np.isfinite(values)
            if not finite.all():
                bad = values[~finite]
                kind = "NaN" if np.isnan(bad).any() else "Inf"
                n_bad = int((~finite).sum())
                raise CplmixError(f"the expression matrix contains {kind} values ({n_bad} entries)")
            if is_counts and not np.all(values == np.floor(values)):
                is_counts = False
        if values.size and values.min() < 0:
            has_negative = True
            is_counts = False
        nonzero_block = sp.csr_matrix(block != 0) if sp.issparse(block) else sp.csr_matrix(np.asarray(block) != 0)
        n_empty_cells += int((np.diff(nonzero_block.indptr) == 0).sum())
        gene_nonzero[nonzero_block.indices] = True
    return MatrixSummary(
        is_counts=is_counts,
        has_negative=has_negative,
        n_empty_cells=n_empty_cells,
        n_empty_genes=int((~gene_nonzero).sum()),
    )


def _integer_looking_with_negatives(matrix) -> bool:
    """True when the values are all integers but some are negative: corrupted counts, not transformed data."""
    for block in _iter_row_chunks(matrix):
        values = _values_of(block)
        if values.size and not np.all(values == np.round(values)):
            return False
    return True


def validate_anndata(
    adata: AnnData,
    layer: str | None = None,
    labels: str | None = None,
    require_counts: bool = False,
) -> MatrixSummary:
    """Check an AnnData before training or inference; raise :class:`CplmixError` naming the first problem.

    Checks: cells and genes present, numeric finite values, no negative counts, unique cell and gene names,
    cells with no counts, the labels column present. Genes with no counts are reported as a warning (they
    are never selected). Returns the :class:`MatrixSummary` used to choose the preprocessing.
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
        duplicated = adata.var_names[adata.var_names.duplicated()].unique()[:3]
        raise CplmixError(
            f"duplicate gene names ({', '.join(map(str, duplicated))}, ...); "
            "make them unique first (adata.var_names_make_unique())"
        )
    if not adata.obs_names.is_unique:
        duplicated = adata.obs_names[adata.obs_names.duplicated()].unique()[:3]
        raise CplmixError(
            f"duplicate cell names ({', '.join(map(str, duplicated))}, ...); "
            "make them unique first (adata.obs_names_make_unique())"
        )
    matrix = expression_matrix(adata, layer)
    summary = summarize_matrix(matrix)
    if summary.has_negative and (require_counts or _integer_looking_with_negatives(matrix)):
        raise CplmixError("the expression matrix holds negative values where counts are expected")
    if require_counts and not summary.is_counts:
        raise CplmixError("the negative-binomial likelihood needs raw counts (non-negative integers) in X")
    if summary.n_empty_cells == adata.n_obs:
        raise CplmixError("every cell has zero expression")
    if summary.n_empty_cells and summary.is_counts:
        raise CplmixError(
            f"{summary.n_empty_cells} cells have no counts; remove them first "
            "(e.g. adata = adata[adata.X.sum(1).A1 > 0])"
        )
    if summary.n_empty_cells:
        warnings.warn(f"{summary.n_empty_cells} cells have all-zero values", stacklevel=2)
    if summary.n_empty_genes:
        warnings.warn(f"{summary.n_empty_genes} genes have no counts in any cell; they are not used", stacklevel=2)
    return summary


def check_types_fit_cells(n_types: int, n_cells: int) -> None:
    """More types than cells cannot be learned."""
    if n_types > n_cells:
        raise CplmixError(f"more types ({n_types}) than cells ({n_cells}); lower --types")
