"""Data path: reading, validation, preprocessing, bundled datasets, gene sets, simulator.

The simulator is public as ``cplmix_explorer.datasets.simulate``; ``cplmix_explorer.data.simulate`` is its module.
The names below are imported on first use, so that listing the bundled datasets loads no data library.
"""

from importlib import import_module

__all__ = ["DATASETS", "PreparedData", "Preprocessing", "list_datasets", "load", "prepare", "read_data", "validate_anndata"]

_LAZY = {
    "DATASETS": ".bundled", "list_datasets": ".bundled", "load": ".bundled", "read_data": ".io",
    "PreparedData": ".preprocess", "Preprocessing": ".preprocess", "prepare": ".preprocess",
    "validate_anndata": ".validate",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value
