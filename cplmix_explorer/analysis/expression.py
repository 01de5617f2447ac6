"""One gene's expression in every cell, for colouring the cell map: read one column, never the whole matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..data.preprocess import LOG1P_NORMALIZE, PreparedData
from ..data.validate import _iter_row_chunks, expression_matrix
from ..errors import CplmixError


def gene_expression(adata: AnnData, prepared: PreparedData, gene: str) -> np.ndarray:
    """(N,) float32 expression of ``gene`` as the model sees its input: log1p of the counts normalised to the
    model's target sum by each cell's library size for count data, the values as they are otherwise.

    A model gene is read from the prepared matrix (in memory); any other gene of ``adata`` from its X (or
    the model's layer), one block of rows at a time when the data is backed."""
    genes = pd.Index(prepared.genes)
    position = genes.get_indexer([gene])[0]
    if position >= 0:
        column = _column(prepared.matrix, position)
    else:
        names = pd.Index(adata.var_names.astype(str))
        position = names.get_indexer([gene])[0] if names.is_unique else (np.flatnonzero(names == gene)[:1].tolist() or [-1])[0]
        if position < 0:
            raise CplmixError(f"unknown gene '{gene}'")
        column = _column(expression_matrix(adata, prepared.preprocessing.layer), position)
    column = column.astype(np.float32, copy=False)
    if prepared.preprocessing.transform == LOG1P_NORMALIZE and prepared.library_size is not None:
        scale = prepared.preprocessing.target_sum / np.maximum(prepared.library_size, 1e-12)
        column = np.log1p(column * scale.astype(np.float32))
    return column


def _column(matrix, position: int) -> np.ndarray:
    """Column ``position`` of a dense, sparse or backed matrix as a dense vector."""
    if isinstance(matrix, np.ndarray):
        return np.asarray(matrix[:, position]).ravel()
    if sp.issparse(matrix):
        return np.asarray(matrix[:, [position]].toarray()).ravel()
    blocks = []
    for block in _iter_row_chunks(matrix):  # backed: one block of rows in memory at a time
        part = block[:, [position]]
        blocks.append(np.asarray(part.toarray() if sp.issparse(part) else part).ravel())
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
