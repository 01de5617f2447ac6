"""Type-preserving augmentation: each arm sees its own copy of a cell (method.md, "Augmentation").

An augmenter maps a batch of stored values (B, G) (raw counts for count data, else the values used as they
are) to one copy per arm (A, B, G), on the device, inside the training step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Augmenter(nn.Module):
    """Base class: ``forward(values (B, G), n_arms) -> copies (A, B, G)`` on the same device."""

    name = "base"
    #: True when the augmenter works on raw counts (the engine then keeps counts on the device)
    needs_counts = False
    #: True when the augmenter chooses which stored rows each arm sees (``source_rows``) instead of
    #: transforming the batch's values
    chooses_rows = False

    def forward(self, values: torch.Tensor, n_arms: int) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class IdentityAugmenter(Augmenter):
    """Every arm sees the cell as it is (the arms still differ by weights and dropout)."""

    name = "none"

    def forward(self, values: torch.Tensor, n_arms: int) -> torch.Tensor:
        return values.unsqueeze(0).expand(n_arms, -1, -1)


class CountNoiseAugmenter(Augmenter):
    """Binomial thinning of counts (each read kept with probability 1 - strength) followed by gene dropout
    (each non-zero entry zeroed with probability strength / 2); an independent draw per arm."""

    name = "noise"
    needs_counts = True

    def __init__(self, strength: float = 0.1):
        super().__init__()
        self.strength = float(strength)

    def forward(self, values: torch.Tensor, n_arms: int) -> torch.Tensor:
        counts = values.unsqueeze(0).expand(n_arms, -1, -1)
        keep = torch.full_like(counts, 1.0 - self.strength)
        thinned = torch.binomial(counts.contiguous(), keep)
        dropout = torch.rand_like(thinned) >= self.strength / 2
        return thinned * dropout


class ValueNoiseAugmenter(Augmenter):
    """For non-count values: entries zeroed with probability strength / 2, plus Gaussian jitter with a
    standard deviation of ``strength`` times each gene's batch standard deviation; a draw per arm."""

    name = "noise"

    def __init__(self, strength: float = 0.1):
        super().__init__()
        self.strength = float(strength)

    def forward(self, values: torch.Tensor, n_arms: int) -> torch.Tensor:
        copies = values.unsqueeze(0).expand(n_arms, -1, -1)
        spread = values.std(dim=0, keepdim=True).unsqueeze(0)
        jitter = torch.randn_like(copies) * spread * self.strength
        dropout = torch.rand_like(copies) >= self.strength / 2
        return (copies + jitter) * dropout


class AffineImageAugmenter(Augmenter):
    """Small random affine transforms of images (rotation, scale, translation), one draw per arm and image.

    ``strength`` s sets the ranges: rotation within +-100*s degrees, scale within 1 +- s, translation within
    +-s of the image size. Values are flattened images (B, H*W) of ``image_shape`` (H, W).
    """

    name = "affine"

    def __init__(self, image_shape: tuple[int, int], strength: float = 0.1):
        super().__init__()
        self.image_shape = tuple(int(v) for v in image_shape)
        self.strength = float(strength)

    def forward(self, values: torch.Tensor, n_arms: int) -> torch.Tensor:
        height, width = self.image_shape
        batch = values.shape[0]
        images = values.unsqueeze(0).expand(n_arms, -1, -1).reshape(n_arms * batch, 1, height, width)
        n = images.shape[0]
        s = self.strength

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(n, device=values.device, dtype=values.dtype) * (high - low) + low

        angle = uniform(-1.0, 1.0) * math.radians(100.0 * s)
        scale = uniform(1.0 - s, 1.0 + s)
        shift_x, shift_y = uniform(-2 * s, 2 * s), uniform(-2 * s, 2 * s)  # grid coordinates span [-1, 1]
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [torch.stack([cos, -sin, shift_x], dim=-1), torch.stack([sin, cos, shift_y], dim=-1)], dim=1
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return warped.reshape(n_arms, batch, height * width)


def resolve_auto(image_shape: tuple[int, int] | None, n_arms: int) -> str:
    """What ``augment='auto'`` means for a run: neighbor walks when there is a second arm to couple with,
    whatever the data's size (the neighbors are found in chunks, approximately above a size, see
    :mod:`.neighbors`); otherwise affine warps for images and none for expression data.

    Why walks: arms that see the same cell can agree on any deterministic partition of it, also one that cuts
    a type along its continuous state; arms that see different cells of one neighborhood can only agree on
    groups with few neighbors across them. On images, too, a warped copy of the digit itself lets the arms
    agree on the digit's style, another digit of the neighborhood does not (measurements:
    benchmarks/HISTORY.md)."""
    if n_arms > 1:
        return "neighbors"
    if image_shape is not None:
        return "affine"
    return "none"
