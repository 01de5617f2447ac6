"""Data path: reading, validation, preprocessing, bundled datasets, gene sets, simulator.

The simulator is public as ``cplmix_explorer.datasets.simulate``; ``cplmix_explorer.data.simulate`` is its module.
"""

from .bundled import DATASETS, list_datasets, load
from .io import read_data
from .preprocess import PreparedData, Preprocessing, prepare
from .validate import validate_anndata

__all__ = ["DATASETS", "PreparedData", "Preprocessing", "list_datasets", "load", "prepare", "read_data", "validate_anndata"]
