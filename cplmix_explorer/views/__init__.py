"""Panel views of the explorer: one ``pn.viewable.Viewer`` per dashboard panel over one per-session
:class:`ExplorerState`; each works alone in a notebook, and :class:`Explorer` composes them.

    import panel as pn
    from cplmix_explorer.views import Explorer, TrainingMonitor, TraversalView
    pn.extension()
    Explorer("runs/zeisel")            # the whole explorer on a run folder (or a CplMixVAE, an AnnData)
    monitor = TrainingMonitor(model)   # a live training monitor; monitor.train(steps=500)
    TraversalView("runs/zeisel")       # traversal heatmaps with PNG / SVG / PDF / CSV export

The engine never imports this package; these views only read state and call engine / analysis functions.
"""

from .cells import CellsView
from .consensus import ConsensusView
from .data import ConfigForm, DataView
from .explorer import Explorer
from .runs import RunsView
from .state import ExplorerState
from .training import TrainingMonitor
from .traversal import TraversalView

__all__ = ["CellsView", "ConfigForm", "ConsensusView", "DataView", "Explorer", "ExplorerState", "RunsView", "TrainingMonitor", "TraversalView"]
