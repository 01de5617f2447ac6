"""Layers whose weights are stacked over arms, so that A arms run as one batched matrix product.

Activations carry a leading arm axis: (A, B, features). With ``shared=True`` a layer holds one set of
weights (leading size 1) broadcast over the arms, which is the shared-parameters ablation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


class StackedLinear(nn.Module):
    """A independent linear maps: (A, B, in) -> (A, B, out), one ``baddbmm`` for all arms."""

    def __init__(self, n_arms: int, in_features: int, out_features: int, shared: bool = False):
        super().__init__()
        self.n_arms = n_arms
        self.in_features = in_features
        self.out_features = out_features
        n_weights = 1 if shared else n_arms
        self.weight = nn.Parameter(torch.empty(n_weights, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n_weights, 1, out_features))
        self.reset_parameters()

    @property
    def shared(self) -> bool:
        return self.weight.shape[0] == 1 and self.n_arms > 1

    def reset_parameters(self) -> None:
        # Same distribution as nn.Linear's default (Kaiming-uniform with a = sqrt(5)), per arm.
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """(A, B, in) -> bias + scale * x @ W, (A, B, out)."""
        if self.weight.shape[0] == x.shape[0]:
            return torch.baddbmm(self.bias, x, self.weight, alpha=scale)
        out = torch.matmul(x, self.weight)  # shared weights broadcast over arms
        return (out * scale if scale != 1.0 else out) + self.bias

    def extra_repr(self) -> str:
        return f"arms={self.n_arms}, in={self.in_features}, out={self.out_features}, shared={self.shared}"


#: Reduces a per-arm tensor summed over the local batch to the sum over the global batch (differentiably);
#: set by the distributed engine so that batch statistics are those of the global batch.
BatchReducer = Callable[[torch.Tensor], torch.Tensor]


class StackedBatchNorm(nn.Module):
    """BatchNorm without affine parameters over the batch axis of (A, B, F), statistics per arm.

    ``shared``: the arms are one network (shared parameters), so the statistics are those of all arms' rows
    together, and every arm's running statistics are the same. ``reducer`` (optional) turns local batch sums
    into global-batch sums (SyncBatchNorm semantics).
    """

    def __init__(self, n_arms: int, n_features: int, momentum: float = 0.1, eps: float = 1e-5, shared: bool = False):
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.shared = shared
        self.register_buffer("running_mean", torch.zeros(n_arms, 1, n_features))
        self.register_buffer("running_var", torch.ones(n_arms, 1, n_features))
        self.reducer: BatchReducer | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return (x - self.running_mean) * torch.rsqrt(self.running_var + self.eps)
        dims = (0, 1) if self.shared else (1,)  # (1, 1, F) or (A, 1, F) statistics
        rows = x.shape[1] * (x.shape[0] if self.shared else 1)
        if self.reducer is None:
            count = rows
            mean = x.mean(dim=dims, keepdim=True)
            var = (x - mean).square().mean(dim=dims, keepdim=True)
        else:
            count_local = torch.full((1,), float(rows), device=x.device, dtype=x.dtype)
            count = self.reducer(count_local)
            mean = self.reducer(x.sum(dim=dims, keepdim=True)) / count
            var = self.reducer((x - mean).square().sum(dim=dims, keepdim=True)) / count
        with torch.no_grad():
            unbiased = var * (count / max(count - 1, 1)) if isinstance(count, int) else var * count / (count - 1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(unbiased.detach(), self.momentum)
        return (x - mean) * torch.rsqrt(var + self.eps)
