"""A prepared dataset held on the training device; mini-batches are gathered and densified there.

Sparse (CSR) data stays sparse on the device. A batch of rows is densified with fixed-shape operations
(rows padded to the longest row's number of non-zeros), so the gather needs no host synchronisation and
can be captured in a CUDA graph. The count transform (library-size normalisation + log1p) is applied per
batch on the device.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ..data.preprocess import LOG1P_NORMALIZE, PreparedData


class DeviceData:
    """Rows of a :class:`PreparedData` on ``device``: gather (B,) row indices -> (B, G) dense values.

    With ``keep_counts=False`` count data is stored already transformed (log1p of normalised counts; zeros
    stay zeros, so CSR stays sparse) and batches need no per-step transform; with ``keep_counts=True`` the
    raw counts are kept for count-level augmentation and the negative-binomial likelihood.
    """

    def __init__(
        self, prepared: PreparedData, device: torch.device, rows: np.ndarray | None = None, keep_counts: bool = False
    ):
        matrix = prepared.matrix if rows is None else prepared.matrix[rows]
        library = prepared.library_size if rows is None or prepared.library_size is None else prepared.library_size[rows]
        self.device = torch.device(device)
        self.n_cells, self.n_genes = matrix.shape
        self.is_counts_transform = prepared.preprocessing.transform == LOG1P_NORMALIZE
        self.target_sum = float(prepared.preprocessing.target_sum)
        #: stored values are raw counts that :meth:`transform` must turn into model input
        self.holds_counts = self.is_counts_transform and keep_counts
        row_scale = None
        if self.is_counts_transform and not keep_counts:
            row_scale = self.target_sum / np.asarray(library, np.float64)
        self.library = None if library is None else torch.as_tensor(np.asarray(library, np.float32), device=self.device)
        self.sparse = sp.issparse(matrix)
        if self.sparse:
            matrix = sp.csr_matrix(matrix)  # no copy when already CSR
            # Each array is written once, with one trailing zero so padded positions past the last row stay in
            # range; on the CPU the tensors share these arrays (no second copy of the data).
            self.indptr = torch.as_tensor(matrix.indptr.astype(np.int64), device=self.device)
            indices = np.empty(matrix.nnz + 1, np.int32)
            indices[:-1], indices[-1] = matrix.indices, 0
            self.indices = torch.as_tensor(indices, device=self.device)
            self.values = torch.as_tensor(_stored_values(matrix, row_scale), device=self.device)
            row_nnz = np.diff(matrix.indptr)
            self.max_row_nnz = max(int(row_nnz.max()) if row_nnz.size else 0, 1)
            self._offsets = torch.arange(self.max_row_nnz, device=self.device)
        else:
            if row_scale is not None:
                matrix = _log_normalize_dense(matrix, row_scale)
            self.dense = torch.as_tensor(np.ascontiguousarray(matrix, dtype=np.float32), device=self.device)

    @property
    def nbytes(self) -> int:
        tensors = [self.indptr, self.indices, self.values] if self.sparse else [self.dense]
        if self.library is not None:
            tensors.append(self.library)
        return sum(t.numel() * t.element_size() for t in tensors)

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index`` (B,) as a dense float32 (B, G) tensor of stored values (counts or as-is values)."""
        if not self.sparse:
            return self.dense.index_select(0, index)
        n_rows = index.shape[0]
        start = self.indptr.index_select(0, index)
        length = self.indptr.index_select(0, index + 1) - start
        position = start[:, None] + self._offsets[None, :]
        inside = self._offsets[None, :] < length[:, None]
        # padded positions read the trailing zero (and add it to column 0)
        position = torch.where(inside, position, self.values.numel() - 1).view(-1)
        # index_select on flat positions: faster on the CPU than advanced indexing
        columns = self.indices.index_select(0, position).view(n_rows, -1).long()
        values = self.values.index_select(0, position).view(n_rows, -1)
        out = torch.zeros(n_rows, self.n_genes, device=self.device, dtype=torch.float32)
        return out.scatter_add_(1, columns, values)

    def library_of(self, index: torch.Tensor) -> torch.Tensor | None:
        """Total counts over all input genes of rows ``index``: (B,), or None for non-count data."""
        return None if self.library is None else self.library.index_select(0, index)

    def transform(self, values: torch.Tensor, library: torch.Tensor | None) -> torch.Tensor:
        """Stored values (..., G) -> model input: log1p(values / library * target_sum) for raw counts."""
        if not self.holds_counts:
            return values
        scale = self.target_sum / library.clamp_min(1e-6)
        return torch.log1p(values * scale.unsqueeze(-1))

    def model_input(self, index: torch.Tensor) -> torch.Tensor:
        """Transformed rows (B, G), what the encoder sees without augmentation."""
        return self.transform(self.gather(index), self.library_of(index))


#: Rows per chunk when transforming on the host (bounds the temporary memory).
HOST_CHUNK_ROWS = 8192


def _stored_values(matrix: sp.csr_matrix, row_scale: np.ndarray | None) -> np.ndarray:
    """The CSR values as float32 (nnz + 1,) with a trailing zero: log1p(value * row_scale[row]) when
    ``row_scale`` (N,) is given (zeros stay zeros, so the matrix stays sparse), else the values as they are."""
    values = np.empty(matrix.nnz + 1, np.float32)
    values[-1] = 0.0
    if row_scale is None:
        values[:-1] = matrix.data
        return values
    indptr = matrix.indptr
    for start in range(0, matrix.shape[0], HOST_CHUNK_ROWS):
        stop = min(start + HOST_CHUNK_ROWS, matrix.shape[0])
        first, last = indptr[start], indptr[stop]
        scale = np.repeat(row_scale[start:stop].astype(np.float32), np.diff(indptr[start : stop + 1]))
        np.multiply(matrix.data[first:last], scale, out=values[first:last], casting="unsafe")
        np.log1p(values[first:last], out=values[first:last])
    return values


def _log_normalize_dense(matrix, row_scale: np.ndarray) -> np.ndarray:
    """log1p(matrix * row_scale[:, None]) as float32 (N, G), in row chunks."""
    out = np.empty(matrix.shape, dtype=np.float32)
    for start in range(0, matrix.shape[0], HOST_CHUNK_ROWS):
        stop = min(start + HOST_CHUNK_ROWS, matrix.shape[0])
        block = np.asarray(matrix[start:stop], np.float32) * row_scale[start:stop, None].astype(np.float32)
        out[start:stop] = np.log1p(block)
    return out
