"""Throughput benchmark of the real training step on generated count data (``cplmix bench``)."""

from __future__ import annotations

import platform
import resource
import time

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData

from ..config import BENCH_CONFIG_DEFAULTS, BenchOptions, CplMixConfig
from ..data.preprocess import prepare
from ..model.inference import DEFAULT_CHUNK, infer
from ..threads import apply_threads
from ..device import resolve_device
from ..train.engine import Trainer, build_module


def generated_counts(n_cells: int, n_genes: int, seed: int = 0, chunk: int = 20000, distinct_cells: int | None = None) -> AnnData:
    """Poisson counts (CSR) with log-normal gene rates, about 10-20 % non-zero, for timing.

    With ``distinct_cells`` only that many cells are drawn and the others are copies of randomly chosen
    ones: the same sparsity at a fraction of the generation time (10^6 cells in seconds)."""
    rng = np.random.default_rng(seed)
    rates = np.exp(rng.normal(-2.0, 1.0, n_genes))
    n_drawn = n_cells if distinct_cells is None else min(distinct_cells, n_cells)
    blocks = []
    for start in range(0, n_drawn, chunk):
        rows = min(chunk, n_drawn - start)
        depth = rng.lognormal(0.0, 0.3, (rows, 1))
        blocks.append(sp.csr_matrix(rng.poisson(rates[None, :] * depth).astype(np.float32)))
    matrix = sp.vstack(blocks, format="csr")
    empty = np.diff(matrix.indptr) == 0
    if empty.any():  # every cell needs at least one count
        matrix = matrix.tolil()
        matrix[np.flatnonzero(empty), 0] = 1.0
        matrix = matrix.tocsr()
    if n_drawn < n_cells:
        rows = np.concatenate([np.arange(n_drawn), rng.integers(0, n_drawn, n_cells - n_drawn)])
        matrix = matrix[rows]
    return AnnData(X=matrix)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated GPU memory (CUDA) or peak resident set size of this process (CPU), MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


_OPTIONS = BenchOptions()
_CONFIG = CplMixConfig().update(**BENCH_CONFIG_DEFAULTS)


def run_benchmark(
    genes: int = _CONFIG.n_genes,
    types: int = _CONFIG.n_types,
    state_dim: int = _CONFIG.state_dim,
    arms: int = _CONFIG.n_arms,
    batch_size: int = _CONFIG.batch_size,
    steps: int = _OPTIONS.steps,
    warmup: int = _OPTIONS.warmup,
    device: str = "auto",
    cells: int | None = _OPTIONS.cells,
    fast_path: str = "auto",
    augment: str = "none",
    dense: bool = _OPTIONS.dense,
    seed: int = 0,
    distinct_cells: int | None = None,
    inference: bool = False,
    inference_chunk: int = DEFAULT_CHUNK,
    state_encoder: str | None = None,
    threads: int | None = None,
) -> dict:
    """Train the real model on generated data and report throughput after ``warmup`` steps.

    Returns a JSON-ready dict with it_per_s, cells_per_s, the shape, the device and peak memory (training),
    and type_init_seconds: the one-off cost of the initial partition (neighbors and Leiden) at this shape; the
    timed steps themselves start from a random network (type_init='random'), so that they are all the
    objective's steps, as every step after the initial ``type_init_steps``.
    With ``inference`` it then assigns every cell in chunks and adds inference_seconds, inference_cells_per_s
    and inference_peak_memory_mb. ``state_encoder``: 'separate' or 'shared' (default: the configuration's).
    ``threads``: CPU threads (default: the cores available, as training; see :mod:`cplmix_explorer.threads`).
    """
    threads_used = apply_threads(threads)
    resolved = resolve_device(device)
    cells = cells or max(4 * batch_size, 10000)
    adata = generated_counts(cells, genes, seed, distinct_cells=distinct_cells)
    nnz = adata.X.nnz
    if dense:
        adata.X = adata.X.toarray()
    config = CplMixConfig().update(
        n_types=types, state_dim=state_dim, n_arms=arms, batch_size=batch_size, device=str(resolved),
        n_genes=genes, validation_fraction=0.0, augment=augment, fast_path=fast_path, seed=seed,
        eval_every=10**9, log_every=25, type_init="random",
    )
    if state_encoder is not None:
        config.update(state_encoder=state_encoder)
    prepared = prepare(adata, config)
    trainer = Trainer(build_module(config, prepared.n_genes, prepared.library_size), prepared, config)
    trainer.evaluate_at_end = False
    if resolved.type == "cuda":
        torch.cuda.reset_peak_memory_stats(resolved)
    trainer.fit(warmup)
    if resolved.type == "cuda":
        torch.cuda.synchronize(resolved)
    start = time.perf_counter()
    trainer.fit(warmup + steps)
    if resolved.type == "cuda":
        torch.cuda.synchronize(resolved)
    seconds = time.perf_counter() - start
    it_per_s = steps / seconds
    peak_mb = peak_memory_mb(resolved)  # of training alone
    partition_started = time.perf_counter()
    trainer.prepare_type_init()
    type_init_seconds = time.perf_counter() - partition_started
    result = {
        "it_per_s": it_per_s,
        "cells_per_s": it_per_s * trainer.batch_size,
        "seconds": seconds,
        "steps": steps,
        "warmup_steps": warmup,
        "genes": genes,
        "types": types,
        "state_dim": state_dim,
        "arms": arms,
        "batch_size": trainer.batch_size,
        "cells": cells,
        "non_zeros": int(nnz),
        "storage": "dense" if dense else "csr",
        "device": str(resolved),
        "device_name": device_description(resolved),
        "threads": threads_used,
        "fast_path": trainer.fast_path,
        "augment": trainer.augment_name,
        "state_encoder": config.state_encoder,
        "peak_memory_mb": peak_mb,
        "type_init_seconds": type_init_seconds,
        "data_on_device_mb": trainer.data.nbytes / 2**20,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    if inference:
        result.update(time_inference(trainer, inference_chunk))
    return result


def time_inference(trainer: Trainer, chunk_size: int = DEFAULT_CHUNK) -> dict:
    """Assign every cell of the trainer's data in chunks (eval mode) and time it."""
    device = trainer.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = infer(trainer.module, trainer.data, chunk_size=chunk_size)
    seconds = time.perf_counter() - start  # infer ends with the results on the host (synchronised)
    n_cells = len(result.consensus_type)
    return {
        "inference_cells": n_cells,
        "inference_chunk": chunk_size,
        "inference_seconds": seconds,
        "inference_cells_per_s": n_cells / seconds,
        "inference_peak_memory_mb": peak_memory_mb(device),
    }
