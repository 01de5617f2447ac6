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
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..config import CplMixConfig
from ..data.preprocess import Preprocessing
from ..errors import CplmixError
from ..files import atomic_write_bytes
from ..model.network import RELU_STATE_BOTTLENECK, SHARED_STATE_ENCODER

FORMAT = "cplmix-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.safetensors"
PREVIOUS_NAME = "checkpoint.prev.safetensors"
_OPTIMIZER_HYPERPARAMETERS = ("lr", "initial_lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")
#: safetensors' own limit on the JSON header; a longer declared header is refused before it is parsed.
MAX_HEADER_BYTES = 100_000_000
_DIGEST_KEYS = ("sha256", "metadata_sha256")
#: Options added to CplMixConfig after checkpoints of this format were first written, with the value those
#: checkpoints were trained with; filled in on reading, so that an older run loads as it was trained even where
#: the option's default is now different.
OPTIONS_OLDER_CHECKPOINTS_LACK = {
    "state_encoder": SHARED_STATE_ENCODER,
    "state_bottleneck": RELU_STATE_BOTTLENECK,
    "type_init": "random",  # resumed older runs go on as they started
    "coupling_spread": "absolute",
    "neighbor_scale_genes": False,
    "type_prior_weight": 0.0,
    "leiden_weights": "uniform",
    "neighbor_components": 50,  # runs before the option used scanpy's 50 whatever their K
    "start_agreed_only": False,  # each arm was held to its own Leiden run on every cell
    "depth_covariate": False,  # the decoder read only the type and the state
    "start_overcluster": 1.0,  # the start was Leiden at K itself
    "start_candidates": 1,  # one Leiden run per arm, as drawn
    "state_kl_warmup": 0.0,  # the state KL weighed beta from the first step
    "start_any_run": False,  # a cell the runs placed differently was left free
    "target_sum": 1e4,  # counts were scaled to 10^4 per cell (the recipe stores the value used)
    "neighbor_target_sum": 1e4,  # the graph was found in the model input, counts scaled to 10^4
    "lr_decay": 0.0,  # the learning rate stayed constant
}


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


def _metadata_digest(metadata: dict[str, str]) -> str:
    """SHA-256 of the header entries (except the digests), so a flipped byte in the JSON is detected too."""
    kept = {k: v for k, v in metadata.items() if k not in _DIGEST_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optimizer.{index}.{key}"] = tensor.detach().cpu().contiguous()
    groups = [
        {k: (list(v) if isinstance(v, tuple) else float(v) if torch.is_tensor(v) else v)  # a CUDA graph's lr tensor
         for k, v in group.items() if k in (*_OPTIMIZER_HYPERPARAMETERS, "params")}
        for group in state["param_groups"]
    ]
    return tensors, {"param_groups": groups}


def restore_optimizer(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load saved Adam moments and hyperparameters into ``optimizer``, keeping its own execution flags
    (fused / capturable / foreach), so a CPU checkpoint resumes on a CUDA fast path and back."""
    current = optimizer.state_dict()
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    if len(saved["param_groups"]) != len(current["param_groups"]) or any(
        not 0 <= int(index) < len(parameters)
        or any(v.dim() and v.shape != parameters[int(index)].shape for v in values.values())
        for index, values in saved["state"].items()
    ):
        raise CplmixError("the saved optimizer state does not match the model's parameters")
    # copies: torch's load_state_dict keeps same-device tensors as they are, and Adam updates them in place
    current["state"] = {
        index: {k: v.clone() if torch.is_tensor(v) else v for k, v in values.items()}
        for index, values in saved["state"].items()
    }
    for group, saved_group in zip(current["param_groups"], saved["param_groups"]):
        group.update({k: saved_group[k] for k in _OPTIMIZER_HYPERPARAMETERS if k in saved_group})
        if "initial_lr" not in saved_group and "lr" in saved_group:  # older checkpoints: their rate was constant
            group["initial_lr"] = saved_group["lr"]
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
    metadata["metadata_sha256"] = _metadata_digest(metadata)
    payload = save_safetensors(tensors, metadata=metadata)
    if not (keep_previous and path.exists()):
        atomic_write_bytes(path, payload)
        return path
    # the new file is complete on disk before the current one becomes the previous one; a kill between the
    # two renames leaves only the previous file, which load_run_checkpoint falls back to
    temporary = path.with_name(f".{path.name}.new")
    atomic_write_bytes(temporary, payload)
    os.replace(path, path.with_name(PREVIOUS_NAME))
    os.replace(temporary, path)
    return path


def _header_metadata(payload: bytes) -> dict[str, str]:
    """The ``__metadata__`` string map of a safetensors header, checked before anything else is parsed."""
    if len(payload) < 8:
        raise ValueError("file too short")
    header_size = int.from_bytes(payload[:8], "little")
    if header_size <= 0 or header_size > MAX_HEADER_BYTES or 8 + header_size > len(payload):
        raise ValueError("header length out of range")
    header = json.loads(payload[8 : 8 + header_size])
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("header metadata is not a map of strings")
    return metadata


class _Invalid(ValueError):
    """A header entry of the wrong shape (turned into a one-line error naming the file)."""


def _json_entry(metadata: dict[str, str], key: str, kind: type | tuple, default: str | None = None):
    text = metadata.get(key, default)
    if text is None:
        raise _Invalid(f"no '{key}' entry")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise _Invalid(f"'{key}' is not valid JSON") from None
    if not isinstance(value, kind):
        raise _Invalid(f"'{key}' is not a JSON object")
    return value


def _count_entry(metadata: dict[str, str], key: str, default: str | None = None) -> int:
    text = metadata.get(key, default)
    if text is None or not re.fullmatch(r"[0-9]{1,18}", text):
        raise _Invalid(f"'{key}' is not a non-negative integer")
    return int(text)


def _check_rng_state(rng_state: dict[str, torch.Tensor]) -> None:
    expected = {"cpu": torch.get_rng_state().numel()}
    for key, tensor in rng_state.items():
        if key not in ("cpu", "cuda") or tensor.dtype != torch.uint8 or tensor.dim() != 1:
            raise _Invalid(f"random state '{key}' is not a byte vector")
        if key in expected and tensor.numel() != expected[key]:
            raise _Invalid(f"random state '{key}' has {tensor.numel()} bytes, not {expected[key]}")


def _optimizer_state(optimizer_meta: dict | None, tensors: dict[str, torch.Tensor]) -> dict | None:
    if optimizer_meta is None:
        return None
    groups = optimizer_meta.get("param_groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise _Invalid("'optimizer' has no list of parameter groups")
    for group in groups:
        params = group.get("params")
        if not isinstance(params, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in params):
            raise _Invalid("an optimizer parameter group has no list of parameter indices")
        for key in _OPTIMIZER_HYPERPARAMETERS:
            value = group.get(key)
            numbers = value if key == "betas" and isinstance(value, list) else [value]
            if key in group and not all(isinstance(v, (int, float)) for v in numbers):
                raise _Invalid(f"optimizer hyperparameter '{key}' is not a number")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            match = re.fullmatch(r"optimizer\.([0-9]{1,9})\.(\w+)", key)
            if match is None:
                raise _Invalid(f"unexpected tensor '{key}'")
            state.setdefault(int(match.group(1)), {})[match.group(2)] = value
    return {"state": state, "param_groups": groups}


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load and verify one checkpoint file; anything that is not an intact cplmix checkpoint raises
    :class:`CplmixError` (nothing in it is executed: the tensors are raw bytes, the header plain JSON whose
    every entry is type-checked)."""
    path = Path(path)
    if not path.is_file():
        raise CplmixError(f"no checkpoint at '{path}'")
    try:
        payload = path.read_bytes()
    except OSError as error:
        raise CplmixError(f"cannot read checkpoint '{path}': {error.strerror or error}") from None
    try:
        metadata = _header_metadata(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise CplmixError(f"'{path}' is not a cplmix checkpoint ({error}; refusing to load it)") from None
    if metadata.get("format") != FORMAT:
        raise CplmixError(f"'{path}' is not a cplmix checkpoint (format {metadata.get('format')!r}; refusing to load it)")
    if "metadata_sha256" in metadata and _metadata_digest(metadata) != metadata["metadata_sha256"]:
        raise CplmixError(f"checkpoint '{path}' is damaged (header checksum mismatch)")
    try:
        if _count_entry(metadata, "format_version", "0") > FORMAT_VERSION:
            raise CplmixError(f"'{path}' was written by a newer cplmix-explorer (format {metadata['format_version']})")
    except _Invalid as error:
        raise CplmixError(f"checkpoint '{path}' has an invalid header: {error}") from None
    try:
        tensors = load_safetensors(payload)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as error:
        raise CplmixError(f"checkpoint '{path}' is damaged: {str(error).splitlines()[0]}") from None
    if _digest(tensors) != metadata.get("sha256"):
        raise CplmixError(f"checkpoint '{path}' is damaged (checksum mismatch)")
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    rng_state = {k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")}
    try:
        step = _count_entry(metadata, "step")
        config = {**OPTIONS_OLDER_CHECKPOINTS_LACK, **_json_entry(metadata, "config", dict)}
        if "type_bottleneck_dim" not in config:  # older runs' type encoder was as wide as the state encoder
            config["type_bottleneck_dim"] = config.get("bottleneck_dim")
        preprocessing = _json_entry(metadata, "preprocessing", dict)
        extra = _json_entry(metadata, "extra", dict, "{}")
        optimizer_meta = _json_entry(metadata, "optimizer", (dict, type(None)), "null")
        optimizer_state = _optimizer_state(optimizer_meta, tensors)
        _check_rng_state(rng_state)
        category_ids = model_state.get("category_ids")
        if category_ids is None or category_ids.dim() != 1 or category_ids.numel() < 1:
            raise _Invalid("the model has no type categories")
    except _Invalid as error:
        raise CplmixError(f"checkpoint '{path}' has an invalid header: {error}") from None
    try:
        CplMixConfig.from_dict(config)
        Preprocessing.from_dict(preprocessing)
    except CplmixError as error:
        raise CplmixError(f"checkpoint '{path}' has an invalid configuration: {error}") from None
    return Checkpoint(
        model_state=model_state,
        config=config,
        preprocessing=preprocessing,
        step=step,
        optimizer_state=optimizer_state,
        rng_state=rng_state,
        extra=extra,
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
        latest_error = error
    try:
        checkpoint = read_checkpoint(previous)
    except CplmixError as error:
        raise CplmixError(f"no intact checkpoint in '{run_dir}': {latest_error}; {error}") from None
    warnings.warn(f"{latest_error}; using the previous checkpoint (step {checkpoint.step})", stacklevel=2)
    return checkpoint
