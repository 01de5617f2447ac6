"""Datasets by name and simulated data with ground truth.

``cplmix_explorer.datasets.load("zeisel2015")``, ``list_datasets()``, and ``simulate(...)`` (counts with known
types, classes and continuous states; see :func:`cplmix_explorer.data.simulate.simulate`).
"""

from .data.bundled import DATASETS, list_datasets, load
from .data.simulate import simulate

__all__ = ["DATASETS", "list_datasets", "load", "simulate"]
