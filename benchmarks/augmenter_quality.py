"""Does the generative augmenter keep types? Trains it on a labelled dataset and compares its copies with the
count-noise augmenter's: how often a copy's nearest original cell has the copy's own label (type kept), how far
copies move relative to the spread within a type (diversity), per-label mean-profile correlation, and the
augmenter's training speed.

    python benchmarks/augmenter_quality.py                              # zeisel2015, labels 'class'
    python benchmarks/augmenter_quality.py --labels subclass --steps 4000 --device cuda

Writes benchmarks/results/augmenter_quality.{json,md} (or --out PREFIX).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cplmix_explorer import datasets
from cplmix_explorer.config import AugmenterConfig, CplMixConfig
from cplmix_explorer.data.preprocess import prepare
from cplmix_explorer.model.augment import CountNoiseAugmenter
from cplmix_explorer.train.augmenter import train_generative_augmenter
from cplmix_explorer.train.device_data import DeviceData

RESULTS = Path(__file__).resolve().parent / "results"


def principal_components(values: np.ndarray, n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    mean = values.mean(axis=0)
    _, _, vt = np.linalg.svd(values - mean, full_matrices=False)
    return mean, vt[:n].T


def copy_scores(original: np.ndarray, copies: np.ndarray, labels: np.ndarray) -> dict:
    """original (N, G), copies (A, N, G) in the same (log-expression) space; labels (N,)."""
    mean, basis = principal_components(original)
    reference = torch.as_tensor((original - mean) @ basis)
    kept, moved = [], []
    for arm_copies in copies:
        projected = torch.as_tensor((arm_copies - mean) @ basis)
        nearest = torch.cdist(projected, reference).argmin(dim=1).numpy()
        kept.append(float(np.mean(labels[nearest] == labels)))
        moved.append(float(np.linalg.norm(arm_copies - original, axis=1).mean()))
    names = np.unique(labels)
    within = np.mean([np.linalg.norm(original[labels == k] - original[labels == k].mean(0), axis=1).mean() for k in names])
    profiles = np.stack([original[labels == k].mean(0) for k in names])
    copied = np.stack([copies[0][labels == k].mean(0) for k in names])
    correlation = np.corrcoef(profiles, copied)[: len(names), len(names):]
    others = np.where(np.eye(len(names), dtype=bool), -np.inf, correlation).max(axis=1)
    return {
        "type_kept": float(np.mean(kept)),
        "distance_to_cell_over_within_type_spread": float(np.mean(moved) / within),
        "profile_correlation_own": float(np.diag(correlation).mean()),
        "profile_correlation_best_other": float(others.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="zeisel2015")
    parser.add_argument("--labels", default="class")
    parser.add_argument("--steps", type=int, default=AugmenterConfig().steps)
    parser.add_argument("--genes", type=int, default=CplMixConfig().n_genes)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(RESULTS / "augmenter_quality"), help="output prefix (.json, .md)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    adata = datasets.load(args.data) if args.data in datasets.DATASETS else __import__("anndata").read_h5ad(args.data)
    labels = adata.obs[args.labels].astype(str).to_numpy()
    config = CplMixConfig(n_genes=args.genes, device=args.device, seed=args.seed)
    training = train_generative_augmenter(adata, None, config, AugmenterConfig(steps=args.steps))
    prepared = prepare(adata, config.copy(n_types=2))
    original = prepared.model_input()
    device = next(training.augmenter.parameters()).device
    torch.manual_seed(args.seed)
    with torch.no_grad():
        generative = training.augmenter(torch.as_tensor(original, device=device), args.arms).cpu().numpy()
        counts = DeviceData(prepared, torch.device("cpu"), keep_counts=True)
        index = torch.arange(prepared.n_cells)
        raw = counts.gather(index)
        noisy = CountNoiseAugmenter(CplMixConfig().augment_strength)(raw, args.arms)
        library = counts.library_of(index)
        noise = counts.transform(noisy, library * noisy.sum(-1) / raw.sum(-1).clamp_min(1e-6)).numpy()
    report = {
        "date": time.strftime("%Y-%m-%d"), "data": args.data, "labels": args.labels, "cells": prepared.n_cells,
        "genes": prepared.n_genes, "steps": args.steps, "device": str(device), "torch": torch.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "augmenter_steps_per_second": training.steps_per_second,
        "generative": copy_scores(original, generative, labels),
        "noise": copy_scores(original, noise, labels),
        "final_losses": {k: v[-1] for k, v in training.history.items() if k != "step"},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    rows = ["| augmenter | type kept (nearest cell's label) | distance / within-type spread | profile r own | best other |",
            "|---|---|---|---|---|"]
    for name in ("generative", "noise"):
        scores = report[name]
        rows.append(f"| {name} | {scores['type_kept']:.3f} | {scores['distance_to_cell_over_within_type_spread']:.2f} | "
                    f"{scores['profile_correlation_own']:.3f} | {scores['profile_correlation_best_other']:.3f} |")
    text = "\n".join([
        f"# Generative augmenter on {args.data} ({args.labels})", "",
        f"{prepared.n_cells} cells x {prepared.n_genes} genes, {args.steps} augmenter steps on {device} "
        f"({report['augmenter_steps_per_second']:.1f} steps/s; {report['machine']}).", "", *rows, "",
    ])
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
