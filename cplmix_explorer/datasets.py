"""Bundled datasets by name: ``cplmix_explorer.datasets.load("zeisel2015")``."""

from .data.bundled import DATASETS, list_datasets, load

__all__ = ["DATASETS", "list_datasets", "load"]
