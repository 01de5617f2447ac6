"""Multi-process training on PyTorch's own engine (torchrun + DistributedDataParallel).

The objective is the single-process objective on the *global* batch: the coupling distance's batch
variance and every BatchNorm's statistics are computed over the global batch with a differentiable
all-reduce (so gradients flow through the other processes' cells, as in SyncBatchNorm), and DDP averages
the gradients. Each process draws its own shard (a slice) of every global batch. Checkpoints, events and
output files come from rank 0 only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import CplmixError


class _AllReduceSum(torch.autograd.Function):
    """y = sum over processes of x; the gradient of every process's x is the sum over processes of the
    gradients of y (each process's loss depends on everyone's x)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


@dataclass
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over all processes, differentiable (the backward pass sums the gradients likewise)."""
        return _AllReduceSum.apply(tensor)

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean over all processes of a tensor (not differentiable; for reported metrics)."""
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor / self.world_size

    def minimum(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return tensor

    def broadcast_object(self, value, source: int = 0):
        holder = [value]
        dist.broadcast_object_list(holder, src=source)
        return holder[0]

    def barrier(self) -> None:
        dist.barrier()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_environment(device_spec: str = "auto") -> DistributedContext:
    """Join the process group torchrun set up: NCCL on GPUs, gloo on CPUs, chosen automatically."""
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    wants_cpu = device_spec == "cpu"
    if not wants_cpu and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise CplmixError(f"process {local_rank} has no GPU (this machine has {torch.cuda.device_count()})")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device_spec.startswith("cuda"):
        raise CplmixError(f"device '{device_spec}' was requested but no CUDA GPU is available on this machine")
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device, backend=backend)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
