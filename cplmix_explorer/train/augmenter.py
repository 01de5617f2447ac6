"""Training the generative augmenter (:mod:`cplmix_explorer.model.generative` holds its networks, objective
and folder format): ``cplmix augmenter train DATA --out DIR``."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from ..config import DATA_OPTIONS, AugmenterConfig, CplMixConfig
from ..data.io import read_data
from ..data.preprocess import prepare
from ..errors import CplmixError
from ..model.generative import (
    ARCHITECTURE_OPTIONS,
    FORMAT,
    FORMAT_VERSION,
    LOSS_NAMES,
    AugmentationGenerator,
    Discriminator,
    GenerativeAugmenter,
    check_out_dir_free,
    discriminator_loss,
    generator_loss,
    save_generative_augmenter,
)
from .device_data import DeviceData
from .engine import resolve_device


@dataclass
class AugmenterTraining:
    augmenter: GenerativeAugmenter
    history: dict[str, list[float]]  # "step" and each of LOSS_NAMES, averaged per log interval
    path: Path | None
    steps_per_second: float


def _check_non_negative(matrix) -> None:
    smallest = (matrix.data.min() if matrix.nnz else 0.0) if sp.issparse(matrix) else (matrix.min() if matrix.size else 0.0)
    if smallest < 0:
        raise CplmixError(
            "the generative augmenter models non-negative expression (counts or log-normalised values); "
            f"this data has negative values (minimum {float(smallest):.3g})"
        )


def _gene_statistics(prepared) -> tuple[torch.Tensor, torch.Tensor]:
    """Per gene: mean model input where non-zero, and the fraction of cells where it is non-zero (G,)."""
    total = np.zeros(prepared.n_genes)
    detected = np.zeros(prepared.n_genes)
    for start in range(0, prepared.n_cells, 8192):
        block = prepared.model_input(np.arange(start, min(start + 8192, prepared.n_cells)))
        total += block.sum(axis=0)
        detected += (block > 0).sum(axis=0)
    mean = total / np.maximum(detected, 1)
    return torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(detected / prepared.n_cells, dtype=torch.float32)


def train_generative_augmenter(
    source,
    out_dir: str | os.PathLike | None,
    config: CplMixConfig | None = None,
    options: AugmenterConfig | None = None,
    *,
    progress: bool = True,
    log_every: int = 25,
) -> AugmenterTraining:
    """Train a generative augmenter on ``source`` (AnnData, .h5ad path or bundled name) and save it to
    ``out_dir`` (None: keep it in memory only).

    ``config`` supplies the data options (genes, normalisation, layer), the device and the seed, so the
    augmenter sees exactly what ``cplmix train`` with the same options will; ``options`` its own options.
    Bad input raises :class:`CplmixError` before anything is written; the folder appears complete or not at all.
    """
    config = config.copy() if config is not None else CplMixConfig()
    options = options.copy() if options is not None else AugmenterConfig()
    out_path = Path(out_dir) if out_dir is not None else None
    if out_path is not None:
        check_out_dir_free(out_path)
    device = resolve_device(config.device)
    adata = read_data(source)
    # the mixture model's own options (types, likelihood, labels) play no part in the augmenter
    prepared = prepare(adata, config.copy(n_types=2, likelihood="gaussian", labels=None))
    _check_non_negative(prepared.matrix)
    if prepared.n_cells < 4:
        raise CplmixError(f"too few cells to train an augmenter ({prepared.n_cells})")
    data = DeviceData(prepared, device)

    torch.manual_seed(config.seed)
    architecture = {name: getattr(options, name) for name in ARCHITECTURE_OPTIONS}
    generator = AugmentationGenerator(prepared.n_genes, **architecture)
    generator.start_from_data(*_gene_statistics(prepared))
    generator = generator.to(device)
    discriminator = Discriminator(prepared.n_genes, options.hidden_dim).to(device)
    generator_optimizer = torch.optim.Adam(generator.parameters(), lr=options.lr, betas=(0.5, 0.999), fused=True)
    discriminator_optimizer = torch.optim.Adam(discriminator.parameters(), lr=options.lr, betas=(0.5, 0.999), fused=True)
    batch_size = min(options.batch_size, prepared.n_cells)
    sampler = torch.Generator(device=device).manual_seed(config.seed)

    history: dict[str, list[float]] = {"step": [], **{name: [] for name in LOSS_NAMES}}
    running = torch.zeros(len(LOSS_NAMES), device=device)
    bar = tqdm(total=options.steps, desc=f"augmenter [{device}]", unit="step", dynamic_ncols=True, disable=not progress)
    started = time.perf_counter()
    generator.train()
    discriminator.train()
    try:
        for step in range(1, options.steps + 1):
            index = torch.randint(prepared.n_cells, (batch_size,), device=device, generator=sampler)
            x = data.gather(index)
            loss = generator_loss(generator, discriminator, x, options)
            generator_optimizer.zero_grad(set_to_none=True)
            loss.total.backward()  # also reaches the discriminator's parameters: cleared just below
            discriminator_optimizer.zero_grad(set_to_none=True)
            d_loss = discriminator_loss(discriminator, x, loss.copies)
            d_loss.backward()
            discriminator_optimizer.step()
            generator_optimizer.step()
            terms = [loss.total, loss.adversarial, loss.reconstruction, loss.triplet, loss.feature, d_loss]
            running += torch.stack([t.detach() for t in terms])
            if step % log_every == 0 or step == options.steps:
                n = (step - 1) % log_every + 1
                means = (running / n).cpu().numpy()  # one host sync per interval
                running.zero_()
                if not np.isfinite(means).all():
                    bad = [name for name, value in zip(LOSS_NAMES, means) if not np.isfinite(value)]
                    raise CplmixError(
                        f"augmenter training stopped: non-finite loss near step {step} (term: {', '.join(bad)}); "
                        "lower --lr or check the input data"
                    )
                history["step"].append(step)
                for name, value in zip(LOSS_NAMES, means):
                    history[name].append(float(value))
                bar.update(n)
                bar.set_postfix(
                    {name: f"{history[name][-1]:.3g}" for name in ("total", "reconstruction", "discriminator")},
                    refresh=False,
                )
    finally:
        bar.close()
    elapsed = time.perf_counter() - started

    generator = generator.cpu()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "genes": list(prepared.genes),
        "preprocessing": prepared.preprocessing.to_dict(),
        "architecture": {"n_genes": prepared.n_genes, **architecture},
        "options": options.to_dict(),
        "data_options": {name: getattr(config, name) for name in (*DATA_OPTIONS, "seed")},
        "steps": options.steps,
        "n_cells": prepared.n_cells,
        "history": history,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    augmenter = GenerativeAugmenter(generator, prepared.genes, metadata["preprocessing"], str(out_path or ""))
    if out_path is not None:
        save_generative_augmenter(generator, metadata, out_path)
    return AugmenterTraining(augmenter, history, out_path, options.steps / max(elapsed, 1e-9))
