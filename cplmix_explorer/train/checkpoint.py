"""Checkpoints: one safetensors file holding weights, optimizer state and random streams, with the
configuration, preprocessing (gene list) and bookkeeping as JSON in its header.

Nothing is unpickled on load (safetensors holds raw tensors only), so a crafted file cannot run code. Files
are written atomically (temporary file, fsync, rename); the previous checkpoint is kept beside the new one
and a SHA-256 of the tensor contents, stored in the header, detects corrupt or truncated files, in which
case the previous good checkpoint is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..errors import CplmixError

FORMAT = "cplmix-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.safetensors"
PREVIOUS_NAME = "checkpoint.prev.safetensors"
_OPTIMIZER_HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")


@dataclass
class Checkpoint:
    """What a checkpoint holds, loaded onto the CPU."""

    model_state: dict[str, torch.Tensor]
    config: dict[str, Any]
    preprocessing: dict[str, Any]
    step: int
    optimizer_state: dict | None = None
    rng_state: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    sha = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key]
        sha.update(key.encode())
        sha.update(str(tensor.dtype).encode())
        sha.update(str(tuple(tensor.shape)).encode())
        sha.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return sha.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optimizer.{index}.{key}"] = tensor.detach().cpu().contiguous()
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items() if k in (*_OPTIMIZER_HYPERPARAMETERS, "params")}
        for group in state["param_groups"]
    ]
    return tensors, {"param_groups": groups}


def restore_optimizer(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load saved Adam moments and hyperparameters into ``optimizer``, keeping its own execution flags
    (fused / capturable / foreach), so a CPU checkpoint resumes on a CUDA fast path and back."""
    current = optimizer.state_dict()
    current["state"] = saved["state"]
    for group, saved_group in zip(current["param_groups"], saved["param_groups"]):
        group.update({k: saved_group[k] for k in _OPTIMIZER_HYPERPARAMETERS if k in saved_group})
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict(current)


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    config: dict[str, Any],
    preprocessing: dict[str, Any],
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    rng_state: dict[str, torch.Tensor] | None = None,
    extra: dict[str, Any] | None = None,
    keep_previous: bool = True,
) -> Path:
    """Write a checkpoint atomically; an existing file at ``path`` becomes ``checkpoint.prev.safetensors``."""
    path = Path(path)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optimizer_meta = None
    if optimizer is not None:
        optimizer_state, optimizer_meta = optimizer_tensors(optimizer)
        tensors.update(optimizer_state)
    for key, value in (rng_state or {}).items():
        tensors[f"rng.{key}"] = value.detach().cpu().contiguous()
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "step": str(int(step)),
        "config": json.dumps(config, sort_keys=True),
        "preprocessing": json.dumps(preprocessing),
        "optimizer": json.dumps(optimizer_meta),
        "extra": json.dumps(extra or {}),
        "sha256": _digest(tensors),
    }
    payload = save_safetensors(tensors, metadata=metadata)
    if keep_previous and path.exists():
        os.replace(path, path.with_name(PREVIOUS_NAME))
    atomic_write_bytes(path, payload)
    return path


def _header_metadata(payload: bytes) -> dict[str, str]:
    if len(payload) < 8:
        raise ValueError("file too short")
    header_size = int.from_bytes(payload[:8], "little")
    if header_size <= 0 or 8 + header_size > len(payload):
        raise ValueError("header length out of range")
    header = json.loads(payload[8 : 8 + header_size])
    return header.get("__metadata__") or {}


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load and verify one checkpoint file; anything that is not an intact cplmix checkpoint raises
    :class:`CplmixError` (nothing in it is executed)."""
    path = Path(path)
    if not path.is_file():
        raise CplmixError(f"no checkpoint at '{path}'")
    payload = path.read_bytes()
    try:
        metadata = _header_metadata(payload)
    except (ValueError, UnicodeDecodeError):
        raise CplmixError(f"'{path}' is not a cplmix checkpoint (not a safetensors file; refusing to load it)") from None
    if metadata.get("format") != FORMAT:
        raise CplmixError(f"'{path}' is not a cplmix checkpoint (format {metadata.get('format')!r})")
    if int(metadata.get("format_version", "0")) > FORMAT_VERSION:
        raise CplmixError(f"'{path}' was written by a newer cplmix-explorer (format {metadata['format_version']})")
    try:
        tensors = load_safetensors(payload)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise CplmixError(f"checkpoint '{path}' is damaged: {str(error).splitlines()[0]}") from None
    if _digest(tensors) != metadata.get("sha256"):
        raise CplmixError(f"checkpoint '{path}' is damaged (checksum mismatch)")
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    rng_state = {k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")}
    optimizer_meta = json.loads(metadata.get("optimizer", "null"))
    optimizer_state = None
    if optimizer_meta is not None:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        optimizer_state = {"state": state, "param_groups": optimizer_meta["param_groups"]}
    return Checkpoint(
        model_state=model_state,
        config=json.loads(metadata["config"]),
        preprocessing=json.loads(metadata["preprocessing"]),
        step=int(metadata["step"]),
        optimizer_state=optimizer_state,
        rng_state=rng_state,
        extra=json.loads(metadata.get("extra", "{}")),
        path=str(path),
    )


def load_run_checkpoint(run_dir: str | os.PathLike) -> Checkpoint:
    """The newest intact checkpoint of a run folder, falling back to the previous one when the newest is
    damaged (a warning says so)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CplmixError(f"no run folder at '{run_dir}'")
    latest, previous = run_dir / CHECKPOINT_NAME, run_dir / PREVIOUS_NAME
    if not latest.exists() and not previous.exists():
        raise CplmixError(f"'{run_dir}' holds no checkpoint ({CHECKPOINT_NAME})")
    try:
        return read_checkpoint(latest)
    except CplmixError as error:
        if not previous.exists():
            raise
        warnings.warn(f"{error}; using the previous checkpoint", stacklevel=2)
        return read_checkpoint(previous)
