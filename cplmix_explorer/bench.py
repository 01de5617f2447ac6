"""Throughput benchmark of the real training step on generated count data (``cplmix bench``)."""

from __future__ import annotations

import platform
import resource
import time

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData

from .config import CplMixConfig
from .data.preprocess import prepare
from .train.engine import Trainer, build_model, resolve_device


def generated_counts(n_cells: int, n_genes: int, seed: int = 0, chunk: int = 20000) -> AnnData:
    """Poisson counts (CSR) with log-normal gene rates, about 10-20 % non-zero, for timing."""
    rng = np.random.default_rng(seed)
    rates = np.exp(rng.normal(-2.0, 1.0, n_genes))
    blocks = []
    for start in range(0, n_cells, chunk):
        rows = min(chunk, n_cells - start)
        depth = rng.lognormal(0.0, 0.3, (rows, 1))
        blocks.append(sp.csr_matrix(rng.poisson(rates[None, :] * depth).astype(np.float32)))
    matrix = sp.vstack(blocks, format="csr")
    empty = np.diff(matrix.indptr) == 0
    if empty.any():  # every cell needs at least one count
        matrix = matrix.tolil()
        matrix[np.flatnonzero(empty), 0] = 1.0
        matrix = matrix.tocsr()
    return AnnData(X=matrix)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def run_benchmark(
    genes: int = 5000,
    types: int = 115,
    state_dim: int = 2,
    arms: int = 2,
    batch_size: int = 256,
    steps: int = 200,
    warmup: int = 20,
    device: str = "auto",
    cells: int | None = None,
    fast_path: str = "auto",
    augment: str = "none",
    dense: bool = False,
    seed: int = 0,
) -> dict:
    """Train the real model on generated data and report throughput after ``warmup`` steps.

    Returns a JSON-ready dict with it_per_s, cells_per_s, the shape, the device and peak memory.
    """
    resolved = resolve_device(device)
    cells = cells or max(4 * batch_size, 10000)
    adata = generated_counts(cells, genes, seed)
    if dense:
        adata.X = adata.X.toarray()
    config = CplMixConfig().update(
        n_types=types, state_dim=state_dim, n_arms=arms, batch_size=batch_size, device=str(resolved),
        n_genes=genes, validation_fraction=0.0, augment=augment, fast_path=fast_path, seed=seed,
        eval_every=10**9, log_every=25,
    )
    prepared = prepare(adata, config)
    trainer = Trainer(build_model(config, prepared.n_genes), prepared, config)
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
    if resolved.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(resolved) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
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
        "storage": "dense" if dense else "csr",
        "device": str(resolved),
        "device_name": device_description(resolved),
        "fast_path": trainer.fast_path,
        "augment": trainer.augment_name,
        "peak_memory_mb": peak_mb,
        "data_on_device_mb": trainer.data.nbytes / 2**20,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
