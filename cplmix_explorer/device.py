"""Which torch device a run uses: 'auto' is CUDA when present, else the CPU (core: nothing but torch)."""

from __future__ import annotations

import re

import torch

from .errors import CplmixError


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """'auto' -> CUDA when present else CPU; 'cpu'; 'cuda' / 'cuda:N' (error when no such GPU)."""
    if isinstance(spec, torch.device):
        return spec
    text = (spec or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise CplmixError(f"unknown device '{spec}' (use auto, cpu, cuda or cuda:N)")
    if not torch.cuda.is_available():
        raise CplmixError(f"device '{spec}' was requested but no CUDA GPU is available on this machine")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise CplmixError(f"device '{spec}' does not exist (this machine has {torch.cuda.device_count()} GPU(s))")
    return torch.device("cuda", index)
