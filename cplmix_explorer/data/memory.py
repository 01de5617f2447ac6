"""Memory known before it is spent: what training on an ``.h5ad`` file needs, from its header alone.

:func:`h5ad_shape` reads the shape, the number of stored values and their dtypes from the HDF5 header (X is
not loaded); :func:`estimate_training_memory` turns them into the resident memory of each stage of a run
(reading, preparation, the data the engine holds, the neighbor search, the Leiden start, training,
inference), and :func:`check_training_memory` refuses a run whose largest stage does not fit in the memory
available (:func:`available_memory`: the smaller of the machine's available memory and the cgroup's limit
less its usage, or the ``CPLMIX_MEMORY_LIMIT`` environment variable, e.g. ``8G``) with one line saying what
to do. Files whose X is larger than :data:`BACKED_MIN_BYTES` are read backed (X stays on disk and is scanned
in row chunks), which is also what the estimate assumes for them.

The per-stage figures are upper estimates with the constants below, checked against the peak resident
memory measured by ``benchmarks/atlas.py`` (docs/scale.md).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import psutil

from ..config import NEIGHBOR_COMPONENTS
from ..errors import CplmixError

#: X larger than this (stored values + indices, or dense values) is read backed by default.
BACKED_MIN_BYTES = 1 << 30
#: Environment variable that sets the memory limit (bytes, or a number with K, M, G or T), for machines
#: whose limit the process cannot see and for tests.
MEMORY_LIMIT_ENV = "CPLMIX_MEMORY_LIMIT"
#: Resident memory of the interpreter with torch, anndata and the libraries loaded.
BASE_BYTES = 700 * 2**20
#: Bytes per cell of the neighbor search beyond the principal component scores: pynndescent's graph and
#: search trees, and the walks' table (N x 16 int64) (checked at 1e5 cells: docs/scale.md).
NEIGHBOR_BYTES_PER_CELL = 1200
#: Resident memory that the approximate search adds once (numba's compiled code and compiler), and the cells
#: above which it is used on the CPU (model.neighbors.EXACT_MAX_CELLS).
APPROXIMATE_SEARCH_BYTES = 500 * 2**20
APPROXIMATE_ABOVE_CELLS = 50_000
#: Bytes per cell of the Leiden start: the symmetric graph (scipy), igraph's copy and the edge weights.
LEIDEN_BYTES_PER_CELL = 2500
#: Bytes per cell of the results of inference (types, confidence, states and latent of every arm) and the
#: result file's tables.
RESULT_BYTES_PER_CELL = 400
#: Working memory of a training step beyond the data (autograd buffers, Adam's state, the batch copies).
TRAINING_BYTES = 300 * 2**20
#: Model genes kept by highly-variable selection hold at most this multiple of their share of the non-zeros
#: (variable genes are more often expressed than the average gene).
SELECTED_DENSITY_FACTOR = 1.5
#: Principal components of the neighbor search, at least (config.neighbor_components gives a run's).
COMPONENTS = NEIGHBOR_COMPONENTS


@dataclass(frozen=True)
class H5adShape:
    """What the header of an ``.h5ad`` says about its matrix."""

    n_cells: int
    n_genes: int
    nnz: int  # stored values (n_cells * n_genes for a dense matrix)
    sparse: bool
    value_bytes: int  # bytes per stored value
    index_bytes: int  # bytes per column index (0 when dense)

    @property
    def x_bytes(self) -> int:
        """Bytes of X in memory (values, column indices and row pointers)."""
        pointers = (self.n_cells + 1) * 8 if self.sparse else 0
        return self.nnz * (self.value_bytes + self.index_bytes) + pointers

    @property
    def density(self) -> float:
        return self.nnz / max(self.n_cells * self.n_genes, 1)


def h5ad_shape(path: str | os.PathLike, layer: str | None = None) -> H5adShape | None:
    """The shape, stored values and dtypes of X (or ``layers[layer]``) of an ``.h5ad`` file, from its header;
    None when the file has no such matrix (validation then says what is missing)."""
    try:
        with h5py.File(path, "r") as handle:
            node = handle.get("X") if layer is None else handle.get(f"layers/{layer}")
            if node is None:
                return None
            if isinstance(node, h5py.Dataset):
                n_cells, n_genes = node.shape
                return H5adShape(int(n_cells), int(n_genes), int(n_cells) * int(n_genes), False, node.dtype.itemsize, 0)
            n_cells, n_genes = (int(v) for v in node.attrs["shape"])
            data, indices = node["data"], node["indices"]
            return H5adShape(n_cells, n_genes, int(data.shape[0]), True, data.dtype.itemsize, indices.dtype.itemsize)
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise CplmixError(f"cannot read the matrix header of '{path}': {error}") from None


def should_read_backed(shape: H5adShape, backed: bool | None = None) -> bool:
    """Read backed when asked (``backed`` True / False), else when X is larger than BACKED_MIN_BYTES."""
    return shape.x_bytes > BACKED_MIN_BYTES if backed is None else bool(backed)


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated resident bytes of each stage of a training run (each includes what stays from before)."""

    stages: dict[str, int]
    backed: bool
    shape: H5adShape

    @property
    def peak(self) -> int:
        return max(self.stages.values())

    @property
    def peak_stage(self) -> str:
        return max(self.stages, key=self.stages.get)

    def to_dict(self) -> dict:
        return {"peak_bytes": self.peak, "peak_stage": self.peak_stage, "backed": self.backed,
                "stages_bytes": dict(self.stages), "cells": self.shape.n_cells, "genes": self.shape.n_genes,
                "nnz": self.shape.nnz, "density": round(self.shape.density, 4)}


def estimate_training_memory(shape: H5adShape, n_genes: int, *, backed: bool, on_gpu: bool = False,
                             n_arms: int = 2, state_dim: int = 2, bottleneck_dim: int = 10,
                             components: int = COMPONENTS, n_types: int = 10) -> MemoryEstimate:
    """Resident memory of each stage of ``cplmix train`` on a matrix of ``shape`` keeping ``n_genes`` genes.

    read: X in memory unless backed. prepare: the selected genes as CSR float32 (or dense float32), grown
    block by block (at most 1.25 x its size while it grows). data: the engine's copy of the selected values
    (float32 values + int32 columns; on a GPU it lives there instead). neighbors: ``components`` principal component scores
    and the search. leiden: the neighbor graph in scipy and igraph. training: the walks' table, the start
    categories and a step's working memory. inference: the per-cell results, and what the cell map is made from
    (each cell's K type probabilities and its state)."""
    n = shape.n_cells
    kept = min(n_genes, shape.n_genes)
    read = 0 if backed else shape.x_bytes
    if shape.sparse:
        share = kept / max(shape.n_genes, 1)
        selected_nnz = shape.nnz if kept >= shape.n_genes else int(min(1.0, SELECTED_DENSITY_FACTOR * share) * shape.nnz)
        selected = selected_nnz * 8 + (n + 1) * 8
        engine = 0 if on_gpu else selected_nnz * 8 + (n + 1) * 8
    else:
        selected = n * kept * 4
        engine = 0 if on_gpu else n * kept * 4
    held = BASE_BYTES + read + selected + n * 8  # library sizes, obs tables
    search = APPROXIMATE_SEARCH_BYTES if n > APPROXIMATE_ABOVE_CELLS and not on_gpu else 0  # stays once loaded
    later = held + engine + search + n * 16 * 8  # ... and the walks' table
    stages = {
        "read": BASE_BYTES + read + n * 200,
        "prepare": BASE_BYTES + read + int(selected * 1.25) + n * 8,
        "data": held + engine,
        "neighbours": held + engine + search + n * components * 4 + n * NEIGHBOR_BYTES_PER_CELL,
        "leiden": later + n * LEIDEN_BYTES_PER_CELL,
        "training": later + n * n_arms * 8 + TRAINING_BYTES,
        "inference": later + n * (RESULT_BYTES_PER_CELL + n_arms * (state_dim + bottleneck_dim + 4) * 4
                                  + (n_types + state_dim) * 4),
    }
    return MemoryEstimate(stages=stages, backed=backed, shape=shape)


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str) -> int:
    """'8G', '512M', '1.5G' or a plain number of bytes -> bytes; a one-line error for anything else."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), flags=re.IGNORECASE)
    if match is None:
        raise CplmixError(f"{MEMORY_LIMIT_ENV}={text!r} is not a size (e.g. 8G, 512M or a number of bytes)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _cgroup_room() -> int | None:
    """The cgroup (v2, else v1) memory limit less its current usage, None without a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 2**60:
            return None
        return max(int(limit) - usage, 0)
    return None


def available_memory() -> tuple[int, str]:
    """Bytes this process may still use and where the figure comes from: ``CPLMIX_MEMORY_LIMIT`` when set,
    else the smaller of the machine's available memory (psutil) and the cgroup's room."""
    text = os.environ.get(MEMORY_LIMIT_ENV)
    if text:
        return parse_bytes(text), MEMORY_LIMIT_ENV
    available, source = int(psutil.virtual_memory().available), "available memory"
    room = _cgroup_room()
    if room is not None and room < available:
        available, source = room, "the cgroup's memory limit"
    return available, source


def gigabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e9:.1f} GB"


def check_training_memory(estimate: MemoryEstimate, n_genes: int, on_gpu: bool) -> None:
    """Raise a one-line :class:`CplmixError` when the estimate's largest stage exceeds the memory available."""
    available, source = available_memory()
    if estimate.peak <= available:
        return
    shape = estimate.shape
    advice = []
    kept = min(n_genes, shape.n_genes)
    if kept > 500:
        advice.append(f"fewer genes (--genes {max(kept // 2, 500)})")
    if not estimate.backed:
        advice.append("--backed (X stays on disk)")
    if not on_gpu:
        advice.append("a GPU (--device cuda holds the training data there)")
    advice.append("or torchrun on a machine with more memory (docs/scale.md)")
    raise CplmixError(
        f"training on {shape.n_cells:,} cells x {shape.n_genes:,} genes ({shape.nnz:,} stored values, "
        f"{shape.density:.0%} non-zero) needs about {gigabytes(estimate.peak)} of memory (at its "
        f"{estimate.peak_stage} stage) but {gigabytes(available)} is available ({source}); use "
        + ", ".join(advice)
    )


def estimate_for_file(path: str | os.PathLike, n_genes: int, layer: str | None = None, backed: bool | None = None,
                      on_gpu: bool = False, **shape_options) -> MemoryEstimate:
    """:func:`estimate_training_memory` for an ``.h5ad`` file read as :func:`should_read_backed` decides."""
    shape = h5ad_shape(path, layer)
    if shape is None:
        raise CplmixError(f"'{path}' has no {'X' if layer is None else f'layer {layer!r}'}")
    return estimate_training_memory(shape, n_genes, backed=should_read_backed(shape, backed), on_gpu=on_gpu,
                                    **shape_options)

