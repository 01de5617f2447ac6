"""Reading user data: a bundled dataset name, an ``.h5ad`` path, or an AnnData already in memory."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import anndata
import h5py
import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from anndata.io import sparse_dataset, write_elem

from ..errors import CplmixError
from .bundled import DATASETS, load
from .validate import _iter_row_chunks


def read_data(source: str | os.PathLike | AnnData, backed: bool = False) -> AnnData:
    """The AnnData named by ``source``; bad paths and unreadable files raise :class:`CplmixError`.

    ``.h5ad`` files are HDF5 and read as data only (nothing is unpickled). ``backed=True`` opens the file
    read-only without loading X into memory (obs, var and uns are loaded): :func:`~.preprocess.prepare`
    then scans X in row chunks and keeps only the selected genes in memory. Bundled datasets and AnnData
    objects are returned as they are.
    """
    if isinstance(source, AnnData):
        return source
    text = os.fspath(source)
    if text in DATASETS:
        return load(text)
    path = Path(text).expanduser()
    if not path.exists():
        raise CplmixError(f"no such file or bundled dataset: '{text}' (bundled: {', '.join(sorted(DATASETS))})")
    if path.is_dir():
        raise CplmixError(f"'{text}' is a directory, not an .h5ad file")
    if path.suffix.lower() != ".h5ad":
        raise CplmixError(f"'{text}' is not an .h5ad file (AnnData's HDF5 format)")
    _check_h5ad_structure(path, text)
    try:
        with warnings.catch_warnings():
            # duplicate names are reported by validation as one error; anndata's own warning would repeat it
            warnings.filterwarnings("ignore", message=r".*names are not unique", category=UserWarning)
            return anndata.read_h5ad(path, backed="r" if backed else None)
    except PermissionError:
        raise CplmixError(f"cannot read '{text}': permission denied") from None
    except Exception as error:  # h5py/anndata raise many types for damaged files
        raise CplmixError(f"cannot read '{text}' as .h5ad: {_first_line(error)}") from None


def _check_h5ad_structure(path: Path, text: str) -> None:
    """An HDF5 file holding an AnnData (obs and var groups), else a one-line error."""
    try:
        if not h5py.is_hdf5(path):
            raise CplmixError(f"cannot read '{text}': not an HDF5 file (damaged, truncated or another format)")
        with h5py.File(path, "r") as handle:
            missing = [key for key in ("obs", "var") if key not in handle]
    except PermissionError:
        raise CplmixError(f"cannot read '{text}': permission denied") from None
    except CplmixError:
        raise
    except Exception as error:
        raise CplmixError(f"cannot read '{text}' as .h5ad: {_first_line(error)}") from None
    if missing:
        raise CplmixError(f"'{text}' is an HDF5 file but not an AnnData .h5ad (no {' or '.join(missing)} group)")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def write_h5ad(path: Path, adata: AnnData, x_chunks=None) -> None:
    """Write ``adata`` atomically; ``x_chunks`` (a backed matrix) becomes its X, copied in row chunks."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        adata.write_h5ad(temporary)
        if x_chunks is not None:
            _append_x(temporary, x_chunks)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _append_x(path: Path, matrix) -> None:
    """Write a backed (sparse or dense) matrix as X of the .h5ad at ``path``, one block of rows at a time."""
    with h5py.File(path, "a") as handle:
        start, written = 0, None
        for block in _iter_row_chunks(matrix):
            if sp.issparse(block):
                block = sp.csr_matrix(block)
                if written is None:
                    write_elem(handle, "X", block)  # resizable: anndata writes sparse parts with maxshape None
                    written = sparse_dataset(handle["X"])
                else:
                    written.append(block)
            else:
                block = np.asarray(block)
                if written is None:
                    written = handle.create_dataset("X", shape=matrix.shape, dtype=block.dtype, chunks=True)
                    written.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
                written[start : start + len(block)] = block
            start += block.shape[0]
