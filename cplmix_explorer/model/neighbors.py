"""Neighbour copies: each arm sees one of the cell's nearest neighbours instead of the cell itself.

A non-parametric type-preserving augmentation for expression data: cells close in the top principal
components of the model input almost always share the type (a k-nearest-neighbour graph is what Leiden
clusters) but differ in their continuous state, library size and sampling noise. Arms that must agree on
the type of a cell while each sees a different neighbour cannot agree on a partition that cuts through a
continuum (a state split of one type has many neighbours on both sides of its boundary), only on one that
separates groups of cells with few neighbours across them. The paper's trained generative augmenter aims
at the same "samples in the latent vicinity of a cell"; this one needs no training.

Each arm's copy is the end of a short random walk on the graph (``walk_steps`` hops, each to the current
cell itself or one of its k neighbours): a walk stays inside a type (types are the graph's weakly connected
groups) but travels along the type's continuum, so two arms see the same type at different states. With one
hop the arms' copies are so close in state that a split of a large type along its state still looks
type-preserving to the coupling. On the Zeisel 2015 classes six hops raised the 2-arm ARI from 0.618 to 0.769
(benchmarks/results/zeisel_quality_class_augmentneighbors*.md).

The walks start at one hop and grow to ``walk_steps`` over the first ``ramp_steps`` training steps. Long walks
from the first step, while the categories are still arbitrary, made the arms agree fastest by merging groups:
on four well-separated simulated types 6-hop walks recovered all four on 3 of 6 seeds (two types merged,
one category unused on the others), walks grown over 300 steps on every seed tried.
"""

from __future__ import annotations

import torch

from ..config import NEIGHBOR_STEPS_EXPRESSION, CplMixConfig
from .augment import Augmenter

#: Principal components the neighbours are found in, and the neighbours per cell (scanpy's defaults).
NEIGHBOUR_COMPONENTS = 50
NEIGHBOURS = 15
#: Hops of the random walk that picks each arm's copy (CplMixConfig.neighbor_steps's default for expression data).
WALK_STEPS = NEIGHBOR_STEPS_EXPRESSION
#: Training steps over which the walks grow from one hop to their full length (CplMixConfig.neighbor_ramp_steps).
RAMP_STEPS = CplMixConfig.param["neighbor_ramp_steps"].default
#: Cells per chunk of the distance computation (bounds its memory to chunk x N floats).
DISTANCE_CHUNK = 2048


@torch.no_grad()
def nearest_neighbours(
    points: torch.Tensor, k: int = NEIGHBOURS, n_components: int = NEIGHBOUR_COMPONENTS, seed: int = 0
) -> torch.Tensor:
    """Indices (N, k) of each row's k nearest other rows (Euclidean) in the top ``n_components`` principal
    components of ``points`` (N, G), computed exactly in chunks on the points' device."""
    n = points.shape[0]
    k = min(k, n - 1)
    centred = points - points.mean(dim=0, keepdim=True)
    q = min(n_components, *centred.shape)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # pca_lowrank draws a random start; keep the global stream untouched
    try:
        _, _, basis = torch.pca_lowrank(centred, q=q, center=False, niter=4)
    finally:
        torch.random.set_rng_state(generator_state)
    scores = centred @ basis  # (N, q)
    squared = scores.square().sum(dim=1)
    out = torch.empty(n, k, dtype=torch.long, device=points.device)
    for start in range(0, n, DISTANCE_CHUNK):
        stop = min(start + DISTANCE_CHUNK, n)
        distance = squared[start:stop, None] - 2.0 * scores[start:stop] @ scores.T + squared[None, :]
        distance[torch.arange(stop - start, device=points.device), torch.arange(start, stop, device=points.device)] = float("inf")
        out[start:stop] = distance.topk(k, dim=1, largest=False).indices
    return out


class NeighbourAugmenter(Augmenter):
    """Each arm draws, per cell, the end of a ``walk_steps``-hop random walk on the k-nearest-neighbour graph
    (each hop: the current cell itself or one of its k neighbours, uniformly among the k + 1). During the
    first ``ramp_steps`` training steps the walk is shorter: 1 + (walk_steps - 1) * step / ramp_steps hops
    (rounded down).

    Unlike the value-level augmenters it chooses *which stored rows* each arm sees: the trainer calls
    :meth:`source_rows` and gathers those rows (so count data keep each neighbour's own library size)."""

    name = "neighbors"
    chooses_rows = True

    def __init__(self, k: int = NEIGHBOURS, walk_steps: int = WALK_STEPS, ramp_steps: int = RAMP_STEPS):
        super().__init__()
        if walk_steps < 1:
            raise ValueError(f"walk_steps must be at least 1, got {walk_steps}")
        if ramp_steps < 0:
            raise ValueError(f"ramp_steps must not be negative, got {ramp_steps}")
        self.k = int(k)
        self.walk_steps = int(walk_steps)
        self.ramp_steps = int(ramp_steps)
        self.register_buffer("table", torch.zeros(0, self.k + 1, dtype=torch.long), persistent=False)

    def fit(self, points: torch.Tensor, rows: torch.Tensor, n_data: int, seed: int = 0) -> NeighbourAugmenter:
        """Find the neighbours among ``rows`` (R,) of the data's ``n_data`` rows, from their model input
        ``points`` (R, G). The table maps every data row to itself and its k neighbours, as data row
        indices (n_data, k + 1); rows outside ``rows`` map to themselves only."""
        neighbours = rows[nearest_neighbours(points, self.k, seed=seed)]  # (R, k) data rows
        table = torch.arange(n_data, device=rows.device).unsqueeze(1).repeat(1, neighbours.shape[1] + 1)
        table[rows, 1:] = neighbours
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
        raise RuntimeError("NeighbourAugmenter chooses rows: the trainer calls source_rows")


#: Largest |z| of a standardised gene, as scanpy's ``sc.pp.scale(max_value=10)``.
STANDARDIZED_CLIP = 10.0


@torch.no_grad()
def standardize_genes_(points: torch.Tensor, clip: float = STANDARDIZED_CLIP) -> torch.Tensor:
    """Centre each column (gene) of ``points`` (N, G) and scale it to unit variance, clipped at +-``clip``, in
    place (scanpy's ``sc.pp.scale(max_value=10)`` before its PCA): the space in which the neighbours of
    expression data are found. Unscaled, the principal components follow the genes that vary most across the
    large types, and the markers of a type of a few dozen cells barely move them, so its cells' nearest
    neighbours are often cells of a larger type; scaled, every gene counts alike. Constant genes stay 0."""
    mean = points.mean(dim=0, keepdim=True)
    std = points.std(dim=0, keepdim=True)
    return points.sub_(mean).div_(std.clamp_min_(1e-6)).clamp_(-clip, clip)
