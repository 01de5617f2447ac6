"""cplmix-explorer: cell types and their type-dependent continuous states from single-cell RNA-seq with
coupled mixture VAEs (cpl-mixVAE), plus Panel dashboards to train and explore them."""

from . import datasets
from .api import CplMixVAE
from .config import CplMixConfig
from .errors import CplmixError

__version__ = "0.1.0"
__all__ = ["CplMixConfig", "CplMixVAE", "CplmixError", "datasets", "__version__"]
