"""Reading user data: a bundled dataset name, an ``.h5ad`` path, or an AnnData already in memory."""

from __future__ import annotations

import os
from pathlib import Path

import anndata
from anndata import AnnData

from ..errors import CplmixError
from .bundled import DATASETS, load


def read_data(source: str | os.PathLike | AnnData, backed: bool = False) -> AnnData:
    """The AnnData named by ``source``; bad paths and unreadable files raise :class:`CplmixError`.

    ``.h5ad`` files are HDF5 and read as data only (nothing is unpickled). ``backed=True`` opens the file
    read-only without loading X into memory.
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
    try:
        return anndata.read_h5ad(path, backed="r" if backed else None)
    except PermissionError:
        raise CplmixError(f"cannot read '{text}': permission denied") from None
    except Exception as error:  # h5py/anndata raise many types for damaged files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CplmixError(f"cannot read '{text}' as .h5ad: {reason}") from None
