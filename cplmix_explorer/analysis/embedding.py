"""The 2-D map of a run's cells, computed from the model once and kept in the run folder.

What the map is made from (its basis): by default the model's own description of a cell, its type posterior
q(c|x) (the arms' mean) next to its continuous state (arm 0's state mean given its type): each type is an
island and the state spreads its cells inside. The encoder bottleneck (the latent) stays available: the type
head reads the types from it linearly, so with many types in its few dimensions the types lie side by side
there and a cell's nearest cells are often of other types (``benchmarks/map_basis.py``).

UMAP (umap-learn, the map scanpy users know) is fitted on at most ``MAP_SAMPLE`` randomly chosen cells; every
other cell is placed at the distance-weighted mean of the map positions of its ``PLACE_NEIGHBORS`` nearest
sampled cells in the latent (pynndescent, the search UMAP itself uses), keeping only neighbors that lie on
the nearest one's island of the map, so a cell between two islands is not drawn in the gap. The fit's cost
is thus bounded whatever the number of cells and the placement grows linearly with it. PCA of the latent
(exact, from the D x D covariance) stays available and is used for runs too small for UMAP's neighborhoods.

A run folder keeps its map as ``map.npy`` (N x 2 float32) with ``map.json`` (method, cells, sample, seed and
a key of the model's weights and the cells), both written atomically; a map whose key no longer matches the
model (trained further, pruned, other data) is recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import CplmixError
from ..files import atomic_write_bytes

UMAP, UMAP_LATENT, PCA = "umap", "umap_latent", "pca"
METHODS = (UMAP, UMAP_LATENT, PCA)
#: What each method maps: the type posterior and the state ("types and states"), or the latent.
TYPES_AND_STATES, LATENT = "types and states", "the latent"
BASIS = {UMAP: TYPES_AND_STATES, UMAP_LATENT: LATENT, PCA: LATENT}
#: Cells UMAP is fitted on at most; the others are placed from their nearest sampled cells.
MAP_SAMPLE = 50_000
#: Sampled neighbors (in the latent) a placed cell's position is averaged over.
PLACE_NEIGHBORS = 10
#: UMAP's neighborhood size (umap-learn's and scanpy's default) and its minimum distance (scanpy's default).
UMAP_NEIGHBORS = 15
UMAP_MIN_DIST = 0.5
#: Below this many cells the map is PCA: UMAP's 15-cell neighborhoods would span the whole dataset.
MIN_UMAP_CELLS = 64
#: Largest sample whose neighbors are found exactly (above: pynndescent, as UMAP itself).
EXACT_NEIGHBORS_MAX = 8192
#: Cells placed per block (bounds the placement's working memory).
PLACE_CHUNK = 100_000
MAP_FILE = "map.npy"
MAP_INFO_FILE = "map.json"
MAP_FORMAT = 2  # 2: the default UMAP maps types and states (1: the latent)


@dataclass
class CellMap:
    """(N, 2) coordinates of every cell and how they were made."""

    coordinates: np.ndarray
    method: str  # "umap" or "pca": how it was drawn
    cells: int
    sample: int  # cells the map was fitted on (the rest placed); N for PCA
    seed: int
    key: str = ""  # identifies the model weights and cells the map belongs to
    seconds: float = 0.0
    basis: str = LATENT  # what was mapped: TYPES_AND_STATES or LATENT

    @property
    def title(self) -> str:
        name = f"UMAP of {self.basis}" if self.method == UMAP else f"PCA of {self.basis}"
        if self.method == UMAP and self.sample < self.cells:
            name += f" (fitted on {self.sample:,} cells, others placed)"
        return name

    def info(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "coordinates"}


def pca_2d(latent: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, 2) projection on the latent's top two principal axes (signs fixed, deterministic)."""
    latent = np.asarray(latent, np.float64)
    centred = latent - latent.mean(axis=0)
    if latent.shape[1] < 2:
        return np.column_stack([centred[:, 0], np.zeros(len(latent))]).astype(np.float32)
    values, vectors = np.linalg.eigh(centred.T @ centred)  # D x D: cheap for a million cells
    components = vectors[:, np.argsort(values)[::-1][:2]]
    components *= np.sign(components[np.argmax(np.abs(components), axis=0), [0, 1]])
    return (centred @ components).astype(np.float32)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise CplmixError(f"unknown map method {method!r} (choose from {', '.join(METHODS)})")


def compute_map(latent: np.ndarray, method: str = UMAP, seed: int = 0, sample: int = MAP_SAMPLE,
                progress: bool = False) -> CellMap:
    """The 2-D map of (N, D) coordinates (``method``'s basis, :data:`BASIS`; see the module's description)."""
    check_method(method)
    basis = BASIS[method]
    latent = np.ascontiguousarray(latent, dtype=np.float32)
    n_cells = len(latent)
    start = time.perf_counter()
    if method == PCA or n_cells < MIN_UMAP_CELLS:
        coordinates = pca_2d(latent)
        return CellMap(coordinates, PCA, n_cells, n_cells, seed, seconds=time.perf_counter() - start, basis=basis)
    rng = np.random.default_rng(seed)
    sample = int(min(max(sample, MIN_UMAP_CELLS), n_cells))
    chosen = np.sort(rng.choice(n_cells, sample, replace=False)) if sample < n_cells else np.arange(n_cells)
    fitted, index = _umap_fit(latent[chosen], seed)
    coordinates = np.empty((n_cells, 2), np.float32)
    coordinates[chosen] = fitted
    if sample < n_cells:
        rest = np.setdiff1d(np.arange(n_cells), chosen, assume_unique=True)
        coordinates[rest] = place(latent[rest], latent[chosen], index, fitted, progress=progress)
    return CellMap(coordinates, UMAP, n_cells, sample, seed, seconds=time.perf_counter() - start, basis=basis)


def _umap_fit(latent: np.ndarray, seed: int):
    """UMAP of ``latent`` on its 15-nearest-neighbor graph; returns the (n, 2) map and the search index
    (pynndescent's, None for small samples, whose neighbors are found exactly)."""
    import umap  # lazy: umap loads numba (seconds); only a cell map needs it

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)  # n_jobs overridden by random_state, etc.
        if len(latent) <= EXACT_NEIGHBORS_MAX:
            index = None
            neighbors, distances = exact_neighbors(latent, UMAP_NEIGHBORS)
        else:
            from pynndescent import NNDescent  # lazy: numba again, only for samples above the exact search

            index = NNDescent(latent, n_neighbors=UMAP_NEIGHBORS, random_state=seed, low_memory=True, n_jobs=1)
            neighbors, distances = index.neighbor_graph
        reducer = umap.UMAP(n_neighbors=UMAP_NEIGHBORS, min_dist=UMAP_MIN_DIST, random_state=seed,
                            precomputed_knn=(neighbors, distances, index), n_jobs=1)
        fitted = reducer.fit_transform(latent).astype(np.float32)
    return fitted, index


def exact_neighbors(latent: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest rows (itself first) and their Euclidean distances, by blocks of rows."""
    latent = np.asarray(latent, np.float32)
    k = min(k, len(latent))
    norms = (latent**2).sum(axis=1)
    indices = np.empty((len(latent), k), np.int32)
    distances = np.empty((len(latent), k), np.float32)
    for start in range(0, len(latent), chunk):
        block = latent[start : start + chunk]
        squared = norms[start : start + chunk, None] - 2 * block @ latent.T + norms[None]
        rows = np.arange(len(block))
        squared[rows, start + rows] = -np.inf  # each cell is its own first neighbor
        nearest = np.argpartition(squared, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(squared, nearest, axis=1), axis=1)
        nearest = np.take_along_axis(nearest, order, axis=1)
        indices[start : start + len(block)] = nearest
        found = np.take_along_axis(squared, nearest, axis=1)
        found[:, 0] = 0.0
        distances[start : start + len(block)] = np.sqrt(np.maximum(found, 0.0))
    return indices, distances


def place(latent: np.ndarray, sampled: np.ndarray, index, fitted: np.ndarray, neighbors: int = PLACE_NEIGHBORS,
          progress: bool = False) -> np.ndarray:
    """Map positions of cells not in the fit: the inverse-distance weighted mean of their nearest sampled
    cells' positions (``sampled``'s rows, searched with ``index`` or exactly without one), over the
    neighbors that lie within a small radius of the nearest one's position."""
    extent = np.ptp(fitted, axis=0)
    radius = 0.05 * float(np.hypot(*extent)) or 1.0
    out = np.empty((len(latent), 2), np.float32)
    k = int(min(neighbors, len(fitted)))
    if index is not None:
        index.prepare()
    blocks = range(0, len(latent), PLACE_CHUNK)
    for start in tqdm(blocks, desc="placing cells on the map", unit="block", disable=not progress, leave=False):
        block = latent[start : start + PLACE_CHUNK]
        found, distances = index.query(block, k=k) if index is not None else _exact_query(block, sampled, k)
        positions = fitted[found]  # (n, k, 2)
        near = np.linalg.norm(positions - positions[:, :1], axis=2) <= radius
        weights = near / (distances + 1e-6)
        weights /= weights.sum(axis=1, keepdims=True)
        out[start : start + len(block)] = np.einsum("nk,nkc->nc", weights, positions)
    return out


def _exact_query(block: np.ndarray, reference: np.ndarray, k: int, chunk: int = 4096):
    """The ``k`` nearest rows of ``reference`` to each row of ``block`` and their distances."""
    norms = (reference**2).sum(axis=1)
    found = np.empty((len(block), k), np.int64)
    distances = np.empty((len(block), k), np.float32)
    for start in range(0, len(block), chunk):
        rows = block[start : start + chunk]
        squared = (rows**2).sum(axis=1)[:, None] - 2 * rows @ reference.T + norms[None]
        nearest = np.argpartition(squared, k - 1, axis=1)[:, :k]
        found[start : start + len(rows)] = nearest
        distances[start : start + len(rows)] = np.sqrt(np.maximum(np.take_along_axis(squared, nearest, axis=1), 0))
    order = np.argsort(distances, axis=1)
    return np.take_along_axis(found, order, axis=1), np.take_along_axis(distances, order, axis=1)


# -- the run folder's copy ------------------------------------------------------------------------------------
def map_key(weights: dict, obs_names) -> str:
    """A key of a model's weights (name -> array) and the cells' names: the map of another model or other
    cells does not match it."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(weights):
        value = np.ascontiguousarray(weights[name])
        digest.update(name.encode())
        digest.update(str(value.dtype).encode() + str(value.shape).encode())
        digest.update(value.tobytes())
    names = np.asarray([str(n) for n in obs_names], dtype=object)
    digest.update(str(len(names)).encode())
    digest.update("\n".join(names).encode())
    return digest.hexdigest()


def read_map(folder: str | os.PathLike, key: str, method: str = UMAP) -> CellMap | None:
    """The map kept in ``folder`` when it belongs to ``key`` and was made by ``method``, else None."""
    folder = Path(folder)
    try:
        info = json.loads((folder / MAP_INFO_FILE).read_text())
        if info.get("format") != MAP_FORMAT or info.get("key") != key or info.get("requested") != method:
            return None
        coordinates = np.load(folder / MAP_FILE, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if coordinates.shape != (info.get("cells"), 2) or not np.isfinite(coordinates).all():
        return None
    fields = {k: info[k] for k in ("method", "cells", "sample", "seed", "key", "seconds", "basis")}
    return CellMap(coordinates.astype(np.float32, copy=False), **fields)


def write_map(folder: str | os.PathLike, cell_map: CellMap, requested: str = UMAP) -> None:
    """``map.npy`` then ``map.json`` (each atomically): a reader sees the old pair, or the new map with
    the old description (whose key then does not match), never a half-written file."""
    folder = Path(folder)
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(cell_map.coordinates, np.float32), allow_pickle=False)
    atomic_write_bytes(folder / MAP_FILE, buffer.getvalue())
    info = {"format": MAP_FORMAT, "requested": requested, **cell_map.info()}
    atomic_write_bytes(folder / MAP_INFO_FILE, (json.dumps(info, indent=2) + "\n").encode())


def keep_map(folder: str | os.PathLike, cell_map: CellMap, method: str = UMAP) -> None:
    """Write ``cell_map`` into ``folder`` unless it already holds it (a read-only folder is left as it is)."""
    folder = Path(folder)
    try:
        info = json.loads((folder / MAP_INFO_FILE).read_text())
        if (info.get("format") == MAP_FORMAT and info.get("key") == cell_map.key and info.get("requested") == method
                and (folder / MAP_FILE).exists()):
            return
    except (OSError, ValueError):
        pass
    if folder.is_dir():
        try:
            write_map(folder, cell_map, method)
        except OSError:
            pass


def run_map(features, key: str, folder: str | os.PathLike | None = None, method: str = UMAP,
            seed: int = 0, sample: int = MAP_SAMPLE, progress: bool = False) -> CellMap:
    """The map of ``features()`` (N, D), the coordinates of ``method``'s basis: read from ``folder`` when it
    holds this key's map (the features are then not computed), else computed and (with a writable ``folder``)
    kept there."""
    check_method(method)
    if folder is not None:
        kept = read_map(folder, key, method)
        if kept is not None:
            return kept
    cell_map = compute_map(features(), method, seed=seed, sample=sample, progress=progress)
    cell_map.key = key
    if folder is not None:
        keep_map(folder, cell_map, method)  # a read-only folder (a shipped demo): used without being kept
    return cell_map
