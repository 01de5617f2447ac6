"""Where the categories start: a Leiden partition of the cells' nearest-neighbor graph.

Gradient descent from a random network does not reach the typing the objective prefers: on the simulator, arms
first fitted to the true types and then trained with the objective alone end at a lower loss and keep nearly
every type, where the random start uses about half of the categories (``benchmarks/start_study.py``; figures in
benchmarks/HISTORY.md).
So, before the objective takes over, the engine fits the arms' type heads for ``type_init_steps`` steps to a
partition of the training cells into K groups (:func:`start_partition`): Leiden communities (modularity, the
resolution searched until there are ``start_overcluster`` x K of them) of the same 15-nearest-neighbor graph the
neighbor walks use, its edges weighted as scanpy's ``sc.pp.neighbors`` weighs them (UMAP's fuzzy simplicial set),
joined pair by pair down to K (:func:`merge_by_shared_edges`): at the one resolution that gives exactly K,
modularity cuts large types and lumps small ones. After the warm-up the partition stays a prior
(``type_prior_weight``) that the objective can overrule where the data disagree. This is how the deep
clustering tools of single-cell biology start (DESC from Louvain, scDeepCluster from k-means); the objective
then refines the partition together with the continuous state.

Each arm gets its own Leiden run (its own random seed), aligned to the first arm's categories by maximum
overlap (``start_per_arm``): of ``start_candidates`` runs, those that the other runs reproduce best
(:func:`most_reproduced`). Groups the graph really has come out the same in every run; a cut that only makes
up the number K (a type split in two because K is generous), or a boundary the graph does not settle, can fall
elsewhere in another run. The warm-up and the prior hold each arm to its own run only on the cells on which the
runs agree (``start_agreed_only``); a cell they dispute is held to any of the runs' categories
(``start_any_run``, :func:`targets_from_any_run`) or left free, so the arms are not held apart where the runs
disagree, and the objective and the coupling choose between them. A category of the first run that the other
runs hardly reproduce would then hold no cell of its own, and the arms would drop it (fewer types than asked);
such a category is held from the first run, on all of its cells and for every arm
(:func:`targets_where_runs_agree`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import igraph
import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment

from .consensus import adjusted_rand_index, pair_confusion

#: Resolution range searched for K communities, and the most Leiden runs the search makes (plenty for K <= 1000).
RESOLUTION_RANGE = (1e-4, 1e3)
RESOLUTION_SEARCH_STEPS = 40
#: Where the search starts (scanpy's default resolution) unless given one, e.g. another arm's.
FIRST_RESOLUTION = 1.0
#: Before K is bracketed the next resolution is extrapolated as if communities grew as resolution^COUNT_EXPONENT
#: (about their growth on k-nearest-neighbor graphs; the bracket then corrects any error).
COUNT_EXPONENT = 0.5
#: The search stops when K's bracket is narrower than this ratio of resolutions (the count jumps over K there;
#: the fewest communities above K are then merged down). Narrow: a partition Leiden itself gives at K is
#: preferred to a merged one, which the other arms, started at its resolution, would not share.
RESOLUTION_TOLERANCE = 1.001
#: Leiden iterations per run while the resolution is searched (scanpy's default for igraph's Leiden); the
#: partition kept then goes on from there until it converges (more iterations no longer change it).
LEIDEN_SEARCH_ITERATIONS = 2


@dataclass(frozen=True)
class TypePartition:
    """A partition of cells into categories: ``labels`` (R,) in 0..K-1, largest group first."""

    labels: np.ndarray
    resolution: float  # Leiden resolution that gave the partition
    communities: int  # communities Leiden found at that resolution (merged down to K when more)

    @property
    def n_types(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size else 0

    def summary(self) -> dict:
        """What a run records about its initial partition (JSON-ready; no labels)."""
        sizes = np.bincount(self.labels, minlength=self.n_types)
        return {
            "method": "leiden",
            "cells": int(self.labels.size),
            "resolution": float(self.resolution),
            "communities": int(self.communities),
            "group_sizes": sizes.tolist(),
        }


def neighbor_graph(neighbors: np.ndarray) -> sp.csr_matrix:
    """Symmetric weighted adjacency (R, R) of a k-nearest-neighbor table (R, k) of row indices: 1 between
    mutual neighbors, 1/2 where only one is among the other's neighbors (0.5 (A + A^T), as scikit-learn's
    spectral clustering symmetrises a k-NN connectivity)."""
    n, k = neighbors.shape
    rows = np.repeat(np.arange(n), k)
    adjacency = sp.csr_matrix((np.ones(rows.size), (rows, neighbors.reshape(-1))), shape=(n, n))
    adjacency.data[:] = 1.0  # a neighbor listed twice counts once
    return ((adjacency + adjacency.T) * 0.5).tocsr()


#: Bisection steps for each cell's bandwidth in :func:`fuzzy_connectivities` (UMAP's smooth_knn_dist uses 64).
BANDWIDTH_SEARCH_STEPS = 64
#: Smallest bandwidth, as a fraction of the mean neighbor distance (UMAP's MIN_K_DIST_SCALE).
MIN_BANDWIDTH_SCALE = 1e-3


def fuzzy_connectivities(neighbors: np.ndarray, distances: np.ndarray) -> sp.csr_matrix:
    """Symmetric weighted adjacency (R, R) of a k-nearest-neighbor table (R, k) and its distances (R, k): UMAP's
    fuzzy simplicial set, the weights scanpy's ``sc.pp.neighbors`` gives the graph that ``sc.tl.leiden``
    clusters. Each cell's nearest neighbor gets weight 1 and farther ones exp(-(d - d_nearest) / sigma), with
    the cell's bandwidth sigma bisected so that its weights sum to log2(k + 1); the directed weights w are then
    joined as w + w^T - w * w^T (fuzzy union). Why: with unit weights a cell on a type's edge pulls a community
    across the boundary as strongly as its closest neighbors do; distance-aware weights keep the boundary where
    the gap is."""
    n, k = neighbors.shape
    distances = np.asarray(distances, dtype=np.float64)
    nearest = distances.min(axis=1, keepdims=True)
    excess = np.maximum(distances - nearest, 0.0)
    target = math.log2(k + 1)
    low, high = np.zeros((n, 1)), np.full((n, 1), np.inf)
    sigma = np.ones((n, 1))
    for _ in range(BANDWIDTH_SEARCH_STEPS):
        total = np.exp(-excess / sigma).sum(axis=1, keepdims=True)
        above = total > target
        high = np.where(above, sigma, high)
        low = np.where(above, low, sigma)
        sigma = np.where(np.isinf(high), sigma * 2.0, (low + high) / 2.0)
    floor = MIN_BANDWIDTH_SCALE * max(float(distances.mean()), 1e-12)
    sigma = np.maximum(sigma, floor)
    weights = np.exp(-excess / sigma)
    rows = np.repeat(np.arange(n), k)
    directed = sp.csr_matrix((weights.reshape(-1), (rows, neighbors.reshape(-1))), shape=(n, n))
    directed.sum_duplicates()
    transposed = directed.T.tocsr()
    return (directed + transposed - directed.multiply(transposed)).tocsr()


#: Edges handed to igraph per call (bounds the temporary Python objects to a few hundred MB).
EDGE_CHUNK = 2_000_000


def igraph_graph(n: int, sources: np.ndarray, targets: np.ndarray):
    """An undirected igraph Graph on ``n`` vertices with the edges (sources[i], targets[i]), added in chunks
    of EDGE_CHUNK so that a graph of millions of edges never needs all of them as Python objects at once."""
    graph = igraph.Graph(n=n)
    for start in range(0, len(sources), EDGE_CHUNK):
        stop = start + EDGE_CHUNK
        graph.add_edges(list(zip(sources[start:stop].tolist(), targets[start:stop].tolist())))
    return graph


@dataclass(frozen=True)
class LeidenGraph:
    """The weighted neighbor graph Leiden runs on, built once for every arm's run: the symmetric adjacency
    (scipy, for merging communities) and igraph's graph with the weights as its edge attribute 'weight'
    (converted once, not at every resolution tried)."""

    adjacency: sp.csr_matrix
    graph: object

    @classmethod
    def from_neighbors(cls, neighbors: np.ndarray, distances: np.ndarray | None = None) -> LeidenGraph:
        """The graph of a k-nearest-neighbor table (R, k): weighted by :func:`fuzzy_connectivities` when the
        neighbors' ``distances`` (R, k) are given, else by :func:`neighbor_graph` (1 or 1/2 per edge)."""
        adjacency = neighbor_graph(neighbors) if distances is None else fuzzy_connectivities(neighbors, distances)
        upper = sp.triu(adjacency, k=1).tocoo()
        graph = igraph_graph(neighbors.shape[0], upper.row, upper.col)
        graph.es["weight"] = upper.data.tolist()
        return cls(adjacency, graph)


def next_resolution(n_types: int, low: tuple[float, int | None], high: tuple[float, int | None]) -> float:
    """The next resolution to try between the bracket ``low`` (resolution, communities < K or None when not
    yet run) and ``high`` (communities > K or None): interpolated in log(communities) against log(resolution)
    when both ends are known (kept inside the bracket's middle 80 % so that it always narrows), extrapolated
    with COUNT_EXPONENT from the known end otherwise, and never past the bracket's geometric middle then."""
    (r_low, c_low), (r_high, c_high) = low, high
    middle = math.sqrt(r_low * r_high)
    if c_low is not None and c_high is not None:
        share = (math.log(n_types) - math.log(max(c_low, 1))) / (math.log(c_high) - math.log(max(c_low, 1)))
        share = min(max(share, 0.1), 0.9)
        return math.exp(math.log(r_low) + share * (math.log(r_high) - math.log(r_low)))
    if c_low is not None:
        return min(r_low * (n_types / max(c_low, 1)) ** (1 / COUNT_EXPONENT), middle)
    if c_high is not None:
        return max(r_high * (n_types / c_high) ** (1 / COUNT_EXPONENT), middle)
    return middle


def leiden_partition(neighbors: np.ndarray | LeidenGraph, n_types: int, seed: int = 0,
                     first_resolution: float | None = None, iterations: int | None = None) -> TypePartition:
    """K = ``n_types`` groups of the rows of a k-nearest-neighbor table (R, k) (or its :class:`LeidenGraph`):
    Leiden communities (modularity with a resolution parameter, igraph's implementation) at the resolution
    that gives K of them. The resolution is searched from ``first_resolution`` (another arm's, or
    FIRST_RESOLUTION) by bracketing K and interpolating in log-log (:func:`next_resolution`), with runs of
    ``iterations`` Leiden iterations (LEIDEN_SEARCH_ITERATIONS by default), so that each run, the cost of the
    search on a large graph, is short and narrows the bracket as much as it can; the partition kept is then
    run on to convergence from where its search run ended (kept as the search found it when only that one has
    exactly K communities). When no resolution gives exactly K (the bracket narrows to RESOLUTION_TOLERANCE
    without it), the partition with the fewest communities above K is taken and its smallest community merged
    into the one it shares most edge weight with, until K remain. Deterministic for a seed."""
    prepared = neighbors if isinstance(neighbors, LeidenGraph) else LeidenGraph.from_neighbors(neighbors)
    adjacency, graph = prepared.adjacency, prepared.graph
    n = adjacency.shape[0]
    if not 1 <= n_types <= n:
        raise ValueError(f"cannot split {n} cells into {n_types} groups")
    low: tuple[float, int | None] = (RESOLUTION_RANGE[0], None)  # (resolution, communities < K)
    high: tuple[float, int | None] = (RESOLUTION_RANGE[1], None)  # (resolution, communities > K)
    above: tuple[int, np.ndarray, float] | None = None  # fewest communities >= K so far
    below: tuple[int, np.ndarray, float] | None = None  # most communities < K so far
    resolution = min(max(first_resolution or FIRST_RESOLUTION, low[0]), high[0])

    def leiden(resolution: float, iterations: int, start: np.ndarray | None = None) -> np.ndarray:
        igraph.set_random_number_generator(random.Random(seed))
        return np.asarray(graph.community_leiden(
            objective_function="modularity", weights="weight", resolution=resolution, n_iterations=iterations,
            initial_membership=None if start is None else start.tolist()).membership)

    try:
        for _ in range(RESOLUTION_SEARCH_STEPS):
            membership = leiden(resolution, LEIDEN_SEARCH_ITERATIONS if iterations is None else iterations)
            found = int(membership.max()) + 1
            if found >= n_types and (above is None or found < above[0]):
                above = (found, membership, resolution)
            if found < n_types and (below is None or found > below[0]):
                below = (found, membership, resolution)
            if found == n_types:
                break
            if found < n_types:
                low = (resolution, found)
            else:
                high = (resolution, found)
            if high[0] <= low[0] * RESOLUTION_TOLERANCE:  # the count jumps over K here: merge down to it
                break
            resolution = next_resolution(n_types, low, high)
        found, membership, resolution = above if above is not None else below
        converged = leiden(resolution, -1, membership)  # the kept partition: on from there to convergence
    finally:
        igraph.set_random_number_generator(random)  # igraph's default generator again
    converged_found = int(converged.max()) + 1
    # K communities as Leiden gives them, converged or else as the search found them, before merged ones
    if converged_found == n_types or (found != n_types and (converged_found > n_types or above is None)):
        membership, found = converged, converged_found  # (above is None: the most found, on tiny graphs)
    if found > n_types:
        membership = merge_smallest(membership, adjacency, n_types)
    return TypePartition(labels=relabel_by_size(membership), resolution=resolution, communities=found)


def most_reproduced(partitions: list[np.ndarray], n_types: int) -> tuple[np.ndarray, np.ndarray]:
    """Order Leiden runs of the same graph (partitions (R,) each, categories 0..K-1) by how well the other runs
    reproduce them: each run's mean adjusted Rand index with the others. Returns (order, most reproduced first;
    each run's mean ARI). Ties keep the runs' order, so two runs stay as they were.

    Why: a cut that only one run makes is a draw of its seed, and the runs that share most of their cuts with the
    others hold the cuts the graph settles; on the development suite the most reproduced of 8 runs agreed better
    with the published types than the run of a fixed seed (consensus clustering's medoid partition)."""
    count = len(partitions)
    agreement = np.eye(count)
    for i in range(count):
        for j in range(i + 1, count):
            agreement[i, j] = agreement[j, i] = adjusted_rand_index(pair_confusion(partitions[i], partitions[j], n_types))
    reproduced = (agreement.sum(axis=1) - 1.0) / max(count - 1, 1)
    return np.argsort(-reproduced, kind="stable"), reproduced


def align_to(reference: np.ndarray, labels: np.ndarray, n_types: int) -> np.ndarray:
    """Relabel ``labels`` (R,) so that each category takes the id of the ``reference`` category (R,) it
    overlaps most, one to one (Hungarian matching on the K x K overlap counts)."""
    overlap = np.zeros((n_types, n_types))
    np.add.at(overlap, (labels, reference), 1)
    own, matched = linear_sum_assignment(overlap, maximize=True)
    mapping = np.empty(n_types, dtype=np.int64)
    mapping[own] = matched
    return mapping[labels]


#: A start category is "not reproduced" by the other Leiden runs when they agree on fewer than this share of its
#: cells (on the development suite such categories have no agreed cell at all, the others at least a quarter).
UNREPRODUCED_SHARE = 0.1


def targets_where_runs_agree(runs: np.ndarray, n_types: int) -> tuple[np.ndarray, list[int]]:
    """Each run's start category (runs (R, N), aligned to the first run) on the cells where every run agrees,
    -1 (no start) elsewhere; and the first run's categories that the others do not reproduce
    (:data:`UNREPRODUCED_SHARE`), which are held from the first run on all of their cells in every run's targets,
    so that no category the user asked for is left without a cell to hold it."""
    runs = np.asarray(runs)
    first = runs[0]
    agreed = np.all(runs == first, axis=0)
    targets = np.where(agreed, runs, -1)
    cells = np.bincount(first, minlength=n_types)
    agreed_cells = np.bincount(first[agreed], minlength=n_types)
    unreproduced = np.flatnonzero((cells > 0) & (agreed_cells < UNREPRODUCED_SHARE * cells))
    held_from_first = np.isin(first, unreproduced)
    targets[:, held_from_first] = first[held_from_first]
    return targets, unreproduced.tolist()


def targets_from_any_run(runs: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where :func:`targets_where_runs_agree` leaves a cell without a start (``held`` (R, N) -1), hold each run's
    arm to any of the runs' categories: returns the targets (R, N), each run's own category there, and the
    alternatives (R, R-1, N), the other runs' categories where they differ from its own (-1 elsewhere).

    Why: a cell left free is typed by the objective alone, which may put it where no run does (mouse bladder,
    seed 0: 47 % of the cells the runs dispute); held to any run's category, the objective still chooses, but among
    the runs' answers."""
    runs, held = np.asarray(runs), np.asarray(held)
    free = held < 0
    targets = np.where(free, runs, held)
    count = len(runs)
    alternatives = np.full((count, max(count - 1, 0), runs.shape[1]), -1, dtype=np.int64)
    for run in range(count):
        others = [other for other in range(count) if other != run]
        for slot, other in enumerate(others):
            alternatives[run, slot] = np.where(free[run] & (runs[other] != runs[run]), runs[other], -1)
    return targets, alternatives


def group_edge_weights(labels: np.ndarray, adjacency: sp.csr_matrix, n_groups: int) -> np.ndarray:
    """(G, G) total edge weight between groups ``labels`` (R,) in 0..G-1 of a symmetric adjacency (R, R); the
    diagonal holds each group's internal weight, counted in both directions."""
    indicator = sp.csr_matrix((np.ones(labels.size), (np.arange(labels.size), labels)), shape=(labels.size, n_groups))
    return (indicator.T @ adjacency @ indicator).toarray()


def merge_smallest(membership: np.ndarray, adjacency: sp.csr_matrix, n_groups: int) -> np.ndarray:
    """Merge the smallest group into the group it shares most edge weight with (the largest other group
    when it has no edge to any), until ``n_groups`` remain; returns new labels (R,)."""
    labels = membership.copy()
    while True:
        present, labels = np.unique(labels, return_inverse=True)
        if len(present) <= n_groups:
            return labels
        between = group_edge_weights(labels, adjacency, len(present))
        sizes = np.bincount(labels)
        smallest = int(np.argmin(sizes))
        between[smallest, smallest] = -1.0
        if between[smallest].max() > 0:
            target = int(np.argmax(between[smallest]))
        else:
            target = int(np.argmax(np.where(np.arange(len(sizes)) == smallest, -1, sizes)))
        labels = np.where(labels == smallest, target, labels)


def start_partition(graph: LeidenGraph, n_types: int, seed: int = 0, first_resolution: float | None = None,
                    overcluster: float = 1.0) -> TypePartition:
    """K = ``n_types`` start categories of the graph's cells: Leiden communities at the resolution that gives
    ``overcluster`` x K of them (:func:`leiden_partition`), joined down to K by :func:`merge_by_shared_edges`.

    Why: modularity compares every community with the same null model, so at the one resolution that gives K
    communities of types of very different sizes it cuts the large types in pieces and lumps small types
    together (the resolution limit). At a higher resolution the small types stand on their own; a piece of a
    large type then sends much of its edge weight to its sister pieces, a small type little to any other
    group, so the pieces are joined again first. 1 (no over-clustering) is Leiden at K itself."""
    n_cells = graph.adjacency.shape[0]
    wanted = min(max(int(math.ceil(overcluster * n_types)), n_types), n_cells)
    partition = leiden_partition(graph, wanted, seed=seed, first_resolution=first_resolution)
    if partition.n_types <= n_types:
        return partition
    labels = relabel_by_size(merge_by_shared_edges(partition.labels, graph.adjacency, n_types))
    return TypePartition(labels=labels, resolution=partition.resolution, communities=partition.communities)


def merge_by_shared_edges(membership: np.ndarray, adjacency: sp.csr_matrix, n_groups: int) -> np.ndarray:
    """Join two groups at a time until ``n_groups`` remain: each time the pair in which the smaller group (by
    its total edge weight, its volume) sends the largest share of its edge weight to the other; returns new
    labels (R,) 0..n_groups-1. A group that is part of another is joined to it whatever its size; groups that
    touch little stay apart."""
    present, labels = np.unique(membership, return_inverse=True)
    n = len(present)
    between = group_edge_weights(labels, adjacency, n)
    volume = between.sum(axis=1)
    alive = np.ones(n, dtype=bool)
    joined_to = np.arange(n)

    def shares(group: int) -> np.ndarray:
        row = between[group] / np.maximum(np.minimum(volume[group], volume), 1e-12)
        row[~alive] = -np.inf
        row[group] = -np.inf
        return row

    score = between / np.maximum(np.minimum.outer(volume, volume), 1e-12)
    np.fill_diagonal(score, -np.inf)
    while alive.sum() > n_groups:
        keep, gone = np.unravel_index(int(np.argmax(score)), score.shape)
        between[keep] += between[gone]
        between[:, keep] += between[:, gone]
        volume[keep] += volume[gone]
        alive[gone] = False
        joined_to[joined_to == gone] = keep
        score[gone] = -np.inf
        score[:, gone] = -np.inf
        score[keep] = shares(keep)
        score[:, keep] = score[keep]
    return np.unique(joined_to[labels], return_inverse=True)[1]


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Labels 0..G-1 with 0 the largest group (ties by first appearance), so a partition reads the same
    whatever ids the clustering gave."""
    present, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    first = np.full(len(present), labels.size)
    np.minimum.at(first, inverse, np.arange(labels.size))
    order = np.lexsort((first, -counts))
    rank = np.empty(len(present), dtype=np.int64)
    rank[order] = np.arange(len(present))
    return rank[inverse]

