"""Neighbor copies: each arm sees one of the cell's nearest neighbors instead of the cell itself.

A non-parametric type-preserving augmentation for expression data: cells close in the top principal
components of the model input almost always share the type (a k-nearest-neighbor graph is what Leiden
clusters) but differ in their continuous state, library size and sampling noise. Arms that must agree on
the type of a cell while each sees a different neighbor cannot agree on a partition that cuts through a
continuum (a state split of one type has many neighbors on both sides of its boundary), only on one that
separates groups of cells with few neighbors across them. The paper's trained generative augmenter aims
at the same "samples in the latent vicinity of a cell"; this one needs no training.

Each arm's copy is the end of a random walk on the graph (``walk_steps`` hops, each to the current cell itself
or one of its k neighbors). For expression data the default is one hop, a direct neighbor: longer walks travel
along a type's continuum but also leave small types, whose cells then reach the arms as copies of other types,
and the arms disagree on (or merge) those types. Images take two hops.

With more than one hop the walks start at one hop and grow to ``walk_steps`` over the first ``ramp_steps``
training steps. Long walks from the first step, while the categories are still arbitrary, made the arms agree
fastest by merging groups (benchmarks/HISTORY.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..config import NEIGHBOR_COMPONENTS, NEIGHBOR_STEPS_EXPRESSION, CplMixConfig
from .augment import Augmenter

#: Neighbors per cell (scanpy's default; the principal components are config.NEIGHBOR_COMPONENTS).
NEIGHBORS = 15
#: Hops of the random walk that picks each arm's copy (CplMixConfig.neighbor_steps's default for expression data).
WALK_STEPS = NEIGHBOR_STEPS_EXPRESSION
#: Training steps over which the walks grow from one hop to their full length (CplMixConfig.neighbor_ramp_steps).
RAMP_STEPS = CplMixConfig.param["neighbor_ramp_steps"].default
#: Cells per chunk of the distance computation, at most (bounds its memory to chunk x N floats) ...
DISTANCE_CHUNK = 2048
#: ... and at most this many distances per chunk (2**25 float32 = 128 MiB; 1 GiB on CUDA).
DISTANCE_CHUNK_VALUES = 2**25
DISTANCE_CHUNK_VALUES_CUDA = 2**28
#: Cells per chunk of the principal component pass (bounds its memory to chunk x genes floats).
PCA_CHUNK = 8192
#: On the CPU the exact search (N^2 distances) is used up to this many cells; above it pynndescent's
#: approximate graph (scanpy's choice), whose recall is measured on a sample and recorded. CUDA stays exact.
EXACT_MAX_CELLS = 50_000
#: Cells whose approximate neighbors are checked against the exact ones (the recorded recall).
RECALL_SAMPLE = 1000

RowSource = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class NeighborSearch:
    """Each row's k nearest other rows and how they were found.

    ``indices`` (N, k) row indices; ``method`` 'exact' (all distances, in chunks) or 'pynndescent'
    (approximate); ``recall`` the mean fraction of the exact k neighbors found, over ``checked_cells``
    sampled rows (1.0 for the exact search, which is its own reference)."""

    indices: torch.Tensor
    method: str
    recall: float
    checked_cells: int
    components: int
    #: (N, k) Euclidean distance to each neighbor in the principal components (what the graph's weights use)
    distances: torch.Tensor | None = None

    def summary(self) -> dict:
        """What a run records about its neighbor search (JSON-ready)."""
        return {
            "method": self.method,
            "cells": int(self.indices.shape[0]),
            "neighbours": int(self.indices.shape[1]),
            "components": int(self.components),
            "recall": round(float(self.recall), 4),
            "recall_checked_cells": int(self.checked_cells),
        }


@torch.no_grad()
def principal_scores(rows_of: RowSource, n: int, n_components: int = NEIGHBOR_COMPONENTS,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Scores (N, q) of ``n`` rows on their top ``q = min(n_components, N, G)`` principal components, exact
    (eigenvectors of the gene covariance), reading the rows ``rows_of(index)`` -> (r, G) in chunks: memory is
    a chunk of rows, the G x G covariance and the scores, never all rows at once."""
    device = torch.device(device)
    total = gram = None
    for start in range(0, n, PCA_CHUNK):
        block = rows_of(torch.arange(start, min(start + PCA_CHUNK, n), device=device)).float()
        if gram is None:
            gram = torch.zeros(block.shape[1], block.shape[1], dtype=torch.float64, device=device)
            total = torch.zeros(block.shape[1], dtype=torch.float64, device=device)
        gram += (block.T @ block).double()
        total += block.sum(dim=0, dtype=torch.float64)
    mean = total / n
    covariance = gram / n - torch.outer(mean, mean)
    q = min(n_components, n, covariance.shape[0])
    _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    basis = vectors[:, -q:].flip(1)
    # a deterministic sign per component: its largest loading positive
    largest = basis.gather(0, basis.abs().argmax(dim=0, keepdim=True))
    basis = (basis * torch.sign(largest)).float()
    mean32 = mean.float()
    scores = torch.empty(n, q, device=device)
    for start in range(0, n, PCA_CHUNK):
        stop = min(start + PCA_CHUNK, n)
        scores[start:stop] = (rows_of(torch.arange(start, stop, device=device)).float() - mean32) @ basis
    return scores


@torch.no_grad()
def exact_neighbors(scores: torch.Tensor, k: int, queries: torch.Tensor | None = None) -> torch.Tensor:
    """Indices (Q, k) of the k nearest other rows of ``scores`` (N, q) for the rows ``queries`` (Q,) (all by
    default), by all distances in chunks of queries (memory: at most DISTANCE_CHUNK_VALUES distances)."""
    device = scores.device
    queries = torch.arange(scores.shape[0], device=device) if queries is None else queries.to(device)
    squared = scores.square().sum(dim=1)
    out = torch.empty(len(queries), k, dtype=torch.long, device=device)
    values = DISTANCE_CHUNK_VALUES_CUDA if device.type == "cuda" else DISTANCE_CHUNK_VALUES
    chunk = max(1, min(DISTANCE_CHUNK, values // max(scores.shape[0], 1)))
    for start in range(0, len(queries), chunk):
        rows = queries[start : start + chunk]
        distance = squared[rows, None] - 2.0 * scores[rows] @ scores.T + squared[None, :]
        distance[torch.arange(len(rows), device=device), rows] = float("inf")
        out[start : start + len(rows)] = distance.topk(k, dim=1, largest=False).indices
    return out


def approximate_neighbors(scores: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Indices (N, k) of approximately the k nearest other rows of ``scores`` (N, q) float32: pynndescent's
    nearest-neighbor descent (Euclidean), as scanpy finds its neighbors. One thread: pynndescent splits its work
    by numba's thread count, so with more threads the graph, and the start partition found on it, would differ
    from machine to machine for the same seed; one thread keeps it the same everywhere for a small cost (the
    search is a small part of a run: benchmarks/neighbor_threads.py)."""
    from pynndescent import NNDescent  # lazy: loads numba (seconds); only searches above 50,000 cells use it

    index = NNDescent(scores, n_neighbors=k + 1, metric="euclidean", random_state=seed, low_memory=True,
                      compressed=True, verbose=False, n_jobs=1)
    found, _ = index.neighbor_graph
    del index
    n = scores.shape[0]
    is_self = found == np.arange(n)[:, None]
    # drop the row itself (pynndescent lists it first); rows where it is missing drop their farthest instead
    is_self[~is_self.any(axis=1), -1] = True
    first_self = is_self.argmax(axis=1)
    keep = np.ones_like(is_self)
    keep[np.arange(n), first_self] = False
    return found[keep].reshape(n, k).astype(np.int64)


def search_method(n: int, device: torch.device | str) -> str:
    """The search :func:`find_neighbors` uses for ``n`` rows on ``device``: exact on CUDA and for at most
    EXACT_MAX_CELLS rows, pynndescent above that on the CPU."""
    return "exact" if torch.device(device).type == "cuda" or n <= EXACT_MAX_CELLS else "pynndescent"


@torch.no_grad()
def find_neighbors(rows_of: RowSource, n: int, k: int = NEIGHBORS, n_components: int = NEIGHBOR_COMPONENTS,
                    seed: int = 0, device: torch.device | str = "cpu", method: str | None = None) -> NeighborSearch:
    """Each of ``n`` rows' k nearest other rows (Euclidean) in their top ``n_components`` principal
    components; rows are read in chunks with ``rows_of(index (r,)) -> (r, G)``. The search is
    :func:`search_method`'s unless ``method`` ('exact' or 'pynndescent') is given; an approximate search is
    checked against the exact neighbors of RECALL_SAMPLE seeded random rows and the recall recorded."""
    scores = principal_scores(rows_of, n, n_components, device)
    return search_scores(scores, k, seed, method)


@torch.no_grad()
def search_scores(scores: torch.Tensor, k: int = NEIGHBORS, seed: int = 0, method: str | None = None) -> NeighborSearch:
    """Each row's k nearest other rows (Euclidean) among rows already in their principal components ``scores``
    (N, q), on the scores' device: :func:`find_neighbors`' search after its PCA, for a caller that changes the
    scores first."""
    device, n = scores.device, scores.shape[0]
    k = min(k, n - 1)
    method = method or search_method(n, device)
    if method == "exact":
        found = exact_neighbors(scores, k)
        return NeighborSearch(found, "exact", 1.0, 0, scores.shape[1], neighbor_distances(scores, found))
    if method != "pynndescent":
        raise ValueError(f"unknown neighbor search '{method}' (exact, pynndescent)")
    host = scores.cpu().numpy()
    found = torch.as_tensor(approximate_neighbors(host, k, seed), device=device)
    sample = np.sort(np.random.default_rng(seed).choice(n, min(RECALL_SAMPLE, n), replace=False))
    sample_t = torch.as_tensor(sample, device=device)
    exact = exact_neighbors(scores, k, sample_t)
    hits = (found[sample_t].unsqueeze(-1) == exact.unsqueeze(1)).any(-1).float().mean()
    return NeighborSearch(found, "pynndescent", float(hits), len(sample), scores.shape[1],
                           neighbor_distances(scores, found))


@torch.no_grad()
def neighbor_distances(scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (N, k) from each row of ``scores`` (N, q) to its neighbors ``indices`` (N, k),
    in chunks of rows (memory: a chunk x k x q block)."""
    out = torch.empty(indices.shape, dtype=torch.float32, device=scores.device)
    for start in range(0, indices.shape[0], PCA_CHUNK):
        stop = start + PCA_CHUNK
        out[start:stop] = (scores[start:stop, None, :] - scores[indices[start:stop]]).norm(dim=-1)
    return out


@torch.no_grad()
def nearest_neighbors(
    points: torch.Tensor, k: int = NEIGHBORS, n_components: int = NEIGHBOR_COMPONENTS, seed: int = 0
) -> torch.Tensor:
    """Indices (N, k) of each row's k nearest other rows (Euclidean) in the top ``n_components`` principal
    components of ``points`` (N, G) (:func:`find_neighbors` on rows held in memory)."""
    return find_neighbors(lambda index: points[index], points.shape[0], k, n_components, seed,
                           device=points.device).indices


class NeighborAugmenter(Augmenter):
    """Each arm draws, per cell, the end of a ``walk_steps``-hop random walk on the k-nearest-neighbor graph
    (each hop: the current cell itself or one of its k neighbors, uniformly among the k + 1). During the
    first ``ramp_steps`` training steps the walk is shorter: 1 + (walk_steps - 1) * step / ramp_steps hops
    (rounded down).

    Unlike the value-level augmenters it chooses *which stored rows* each arm sees: the trainer calls
    :meth:`source_rows` and gathers those rows (so count data keep each neighbor's own library size)."""

    name = "neighbors"
    chooses_rows = True

    def __init__(self, k: int = NEIGHBORS, walk_steps: int = WALK_STEPS, ramp_steps: int = RAMP_STEPS,
                 components: int = NEIGHBOR_COMPONENTS):
        super().__init__()
        if walk_steps < 1:
            raise ValueError(f"walk_steps must be at least 1, got {walk_steps}")
        if ramp_steps < 0:
            raise ValueError(f"ramp_steps must not be negative, got {ramp_steps}")
        self.k = int(k)
        self.walk_steps = int(walk_steps)
        self.ramp_steps = int(ramp_steps)
        self.components = int(components)
        self.register_buffer("table", torch.zeros(0, self.k + 1, dtype=torch.long), persistent=False)
        self.search: NeighborSearch | None = None  # how fit found the neighbors

    def fit(self, points: torch.Tensor | RowSource, rows: torch.Tensor, n_data: int, seed: int = 0) -> NeighborAugmenter:
        """Find the neighbors among ``rows`` (R,) of the data's ``n_data`` rows, from their model input
        ``points``: (R, G), or a function giving the model input of positions ``index`` into ``rows`` (read in
        chunks). The table maps every data row to itself and its k neighbors, as data row indices
        (n_data, k + 1); rows outside ``rows`` map to themselves only. ``search`` records how they were found."""
        rows_of = points if callable(points) else (lambda index: points[index])
        self.search = find_neighbors(rows_of, len(rows), self.k, self.components, seed=seed, device=rows.device)
        neighbors = rows[self.search.indices]  # (R, k) data rows
        table = torch.arange(n_data, device=rows.device).unsqueeze(1).repeat(1, neighbors.shape[1] + 1)
        table[rows, 1:] = neighbors
        self.table = table
        return self

    def hops_at(self, step: torch.Tensor | int | None) -> torch.Tensor | int:
        """Hops of a walk at training step ``step`` (steps done so far; a device tensor keeps it CUDA-graph
        safe); the full ``walk_steps`` when ``step`` is None or there is no ramp."""
        if step is None or self.ramp_steps == 0 or self.walk_steps == 1:
            return self.walk_steps
        done = step.clamp(max=self.ramp_steps) if torch.is_tensor(step) else min(int(step), self.ramp_steps)
        return 1 + (self.walk_steps - 1) * done // self.ramp_steps

    def source_rows(self, index: torch.Tensor, n_arms: int, step: torch.Tensor | int | None = None) -> torch.Tensor:
        """Data rows (A, B) that the arms see for the batch rows ``index`` (B,): each arm's walk end, with
        :meth:`hops_at` ``step`` hops (the random draws are the same for every length: a hop beyond the
        current length stays put)."""
        hops = self.hops_at(step)
        rows = index.unsqueeze(0).expand(n_arms, -1)
        for hop in range(self.walk_steps):  # one gather per hop, on the device
            choice = torch.randint(self.table.shape[1], rows.shape, device=index.device)
            if torch.is_tensor(hops) or hop >= hops:
                choice = choice * (hop < hops)  # column 0 of the table is the cell itself
            rows = self.table[rows, choice]
        return rows

    def forward(self, values: torch.Tensor, n_arms: int) -> torch.Tensor:  # pragma: no cover - not used
        raise RuntimeError("NeighborAugmenter chooses rows: the trainer calls source_rows")


def rescaled_log_counts(rows_of: RowSource, ratio: float) -> RowSource:
    """Rows log1p(x * s) of ``rows_of`` (counts x scaled by s, then log1p) as log1p(x * s * ``ratio``): the same
    counts scaled to another total per cell, without the raw counts."""
    if ratio == 1.0:
        return rows_of
    return lambda index: torch.log1p(torch.expm1(rows_of(index).float()) * ratio)


#: Largest |z| of a standardised gene, as scanpy's ``sc.pp.scale(max_value=10)``.
STANDARDIZED_CLIP = 10.0


@torch.no_grad()
def standardized(rows_of: RowSource, n: int, clip: float = STANDARDIZED_CLIP, device: torch.device | str = "cpu") -> RowSource:
    """The rows of ``rows_of`` (a RowSource over ``n`` rows) with each column (gene) centred, scaled to unit
    variance and clipped at +-``clip`` (scanpy's ``sc.pp.scale(max_value=10)`` before its PCA): the space in
    which the neighbors of expression data are found. Unscaled, the principal components follow the genes
    that vary most across the large types, and the markers of a type of a few dozen cells barely move them, so
    its cells' nearest neighbors are often cells of a larger type; scaled, every gene counts alike. The
    moments take one pass over the rows in chunks (memory: a chunk and two G-vectors); constant genes give 0."""
    device = torch.device(device)
    total = squares = None
    for start in range(0, n, PCA_CHUNK):
        block = rows_of(torch.arange(start, min(start + PCA_CHUNK, n), device=device)).double()
        if total is None:
            total = torch.zeros(block.shape[1], dtype=torch.float64, device=device)
            squares = torch.zeros_like(total)
        total += block.sum(dim=0)
        squares += block.square().sum(dim=0)
    mean = total / n
    variance = (squares / n - mean.square()) * (n / max(n - 1, 1))  # unbiased, as torch.std
    scale = variance.clamp_min(0).sqrt().clamp_min(1e-6)
    mean, scale = mean.float(), scale.float()
    return lambda index: ((rows_of(index).float() - mean) / scale).clamp_(-clip, clip)
