"""cplmix-explorer: cell types and their type-dependent continuous states from single-cell RNA-seq with
coupled mixture VAEs (cpl-mixVAE), plus Panel dashboards to train and explore them.

The names below are imported on first use (PEP 562), so that ``import cplmix_explorer.cli`` and
``cplmix --help`` do not load torch or anndata.
"""

from importlib import import_module

__version__ = "0.1.0"
__all__ = ["CplMixConfig", "CplMixVAE", "CplmixError", "datasets", "__version__"]

#: public name -> (module, attribute; None for the module itself)
_LAZY = {
    "CplMixVAE": (".api", "CplMixVAE"),
    "CplMixConfig": (".config", "CplMixConfig"),
    "CplmixError": (".errors", "CplmixError"),
    "datasets": (".datasets", None),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = import_module(module_name, __name__)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__all__})
