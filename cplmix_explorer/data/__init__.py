"""Data path: reading, validation, preprocessing, bundled datasets, gene sets, simulator."""

from .bundled import DATASETS, list_datasets, load
from .io import read_data
from .preprocess import PreparedData, Preprocessing, prepare
from .simulate import simulate
from .validate import validate_anndata

__all__ = ["DATASETS", "PreparedData", "Preprocessing", "list_datasets", "load", "prepare", "read_data", "simulate", "validate_anndata"]
