"""The whole explorer as one object: the runs, data & options sidebar and the Training, Consensus, Cells,
Traversal and Markers tabs over one :class:`ExplorerState`. ``apps/explorer.py`` serves it; in a notebook display it."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import panel as pn
import param

from .cells import CellsView
from .consensus import ConsensusView
from .data import DataView
from .markers import MarkersView
from .runs import RunsView
from .safety import DEFAULT_MAX_UPLOAD_MB
from .server import (
    freeze_startup_objects,
    let_threads_mark_the_server_busy,
    limit_malloc_arenas,
    live_counts,
    return_free_memory,
    shared_demo,
)
from .state import ExplorerState
from .training import TrainingMonitor
from .traversal import TraversalView

TITLE = "cplmix explorer: cell types and their continuous states"
logger = logging.getLogger("cplmix_explorer.app")


class Explorer(pn.viewable.Viewer):
    """Data, training, consensus, cells and traversal of one session.

    ``Explorer()`` starts empty; ``Explorer(model)`` / ``Explorer("runs/zeisel")`` / ``Explorer(adata)``
    explore what you have; ``demo=`` opens a shipped demo run folder when nothing else is given.
    """

    state = param.ClassSelector(class_=ExplorerState)

    def __init__(self, source=None, *, demo: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
                 runs_dir: str | os.PathLike | None = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, **params):
        state = ExplorerState.of(source, data_dir=data_dir, runs_dir=runs_dir, max_upload_mb=max_upload_mb)
        if demo is not None and state.model is None and state.adata is None:
            state.open_demo(demo)
        super().__init__(state=state, **params)
        self.data_view = DataView(state)
        self.runs_view = RunsView(state)
        self.monitor = TrainingMonitor(state, show_errors=False)
        self.consensus_view = ConsensusView(state)
        self.cells_view = CellsView(state)
        self.traversal_view = TraversalView(state, defer=True)  # swept when its tab is first shown: faster page load
        self.markers_view = MarkersView(state, defer=True)  # tested when its tab is first shown
        self.error = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width")
        self.tabs = pn.Tabs(
            ("Training", self.monitor), ("Consensus", self.consensus_view), ("Cells", self.cells_view),
            ("Traversal", self.traversal_view), ("Markers", self.markers_view), dynamic=True, sizing_mode="stretch_width",
        )
        self.tabs.param.watch(self._on_tab, "active")
        state.param.watch(self._show_error, "error")
        self._show_error()

    def _on_tab(self, event) -> None:
        if event.new == TRAVERSAL_TAB:
            self.traversal_view.activate()
        elif event.new == MARKERS_TAB:
            self.markers_view.activate()

    def _show_error(self, *_events) -> None:
        self.error.object = self.state.error
        self.error.visible = bool(self.state.error)

    def main(self) -> pn.Column:
        return pn.Column(self.error, self.tabs, sizing_mode="stretch_width")

    def template(self, title: str = TITLE) -> pn.template.BaseTemplate:
        """The served page: data and options in the sidebar, the views in tabs."""
        # Panel's Fast design asks for the Open Sans web font; offline the browser falls back to a system font
        return pn.template.FastListTemplate(
            title=title, sidebar=[self.runs_view, self.data_view], main=[self.main()], sidebar_width=380, accent="#2b6cb0",
            theme_toggle=False,
        )

    def close(self) -> None:
        self.state.close()

    def __panel__(self):
        return pn.Row(pn.Column(self.runs_view, self.data_view, width=380), self.main(), sizing_mode="stretch_width")


TRAVERSAL_TAB = 3  # position of the Traversal tab in Explorer.tabs
MARKERS_TAB = 4  # position of the Markers tab


# -- serving ------------------------------------------------------------------------------------------------------
@dataclass
class AppSettings:
    """How ``apps/explorer.py`` is served: flags after ``panel serve apps/explorer.py --args`` or
    ``CPLMIX_*`` environment variables."""

    demo: Path | None
    data_dir: Path | None
    runs_dir: Path
    max_upload_mb: float
    allow_remote: bool


def app_settings(argv: list[str] | None = None, environ: dict | None = None, default_demo: Path | None = None) -> AppSettings:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="panel serve apps/explorer.py --args", add_help=False)
    parser.add_argument("--demo", default=environ.get("CPLMIX_DEMO", str(default_demo) if default_demo else ""),
                        help="run folder of the model shown at start ('' for none)")
    parser.add_argument("--data-dir", default=environ.get("CPLMIX_DATA_DIR", os.getcwd()),
                        help="the only folder whose .h5ad files may be opened by path ('' to disable)")
    parser.add_argument("--runs-dir", default=environ.get("CPLMIX_RUNS_DIR", os.path.join(os.getcwd(), "runs")),
                        help="where trainings started in the app write their run folders")
    parser.add_argument("--max-upload-mb", type=float, default=float(environ.get("CPLMIX_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB)))
    parser.add_argument("--allow-remote", action="store_true", default=environ.get("CPLMIX_ALLOW_REMOTE", "") == "1",
                        help="serve sessions to other machines without authentication")
    args, _unknown = parser.parse_known_args(argv or [])
    return AppSettings(
        demo=Path(args.demo) if args.demo else None,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        runs_dir=Path(args.runs_dir),
        max_upload_mb=args.max_upload_mb,
        allow_remote=args.allow_remote,
    )


def remote_access_allowed(remote_ip: str | None, authenticated_user: str | None, allow_remote: bool) -> bool:
    """A session from another machine is served only behind authentication or when explicitly allowed;
    loopback clients (this machine, or a reverse proxy on it) always are."""
    if allow_remote or authenticated_user:
        return True
    if not remote_ip:
        return True  # not a network session (notebook, tests)
    try:
        return ipaddress.ip_address(remote_ip.split("%")[0]).is_loopback
    except ValueError:
        return False


def session_remote_ip() -> str | None:
    document = pn.state.curdoc
    context = getattr(document, "session_context", None) if document is not None else None
    request = getattr(context, "request", None) if context is not None else None
    return getattr(request, "remote_ip", None) if request is not None else None


def refusal_page() -> pn.viewable.Viewable:
    return pn.pane.Markdown(
        "## This explorer only serves this machine\n\nStart it behind authentication (`panel serve ... "
        "--basic-auth ...` or OAuth) or with `--allow-remote` to share it; see the README, *Serving the explorer*."
    )


def app_page(settings: AppSettings) -> pn.viewable.Viewable:
    """The page of one served session (what ``apps/explorer.py`` serves): the explorer, or a refusal for a
    client on another machine when remote access was not enabled. Closing the tab closes the session's
    state (its training stops, its memory is freed); both events are logged with the live session count."""
    started = time.perf_counter()
    limit_malloc_arenas()  # before the session and training threads allocate (once per process)
    let_threads_mark_the_server_busy()
    _log_to_server_console()
    warm_up_in_background()
    remote_ip = session_remote_ip()
    if not remote_access_allowed(remote_ip, pn.state.user, settings.allow_remote):
        logger.warning("refused a session from %s (not this machine, not authenticated)", remote_ip)
        return refusal_page()
    demo = settings.demo if settings.demo is not None and settings.demo.exists() else None
    if settings.demo is not None and demo is None:
        logger.warning("demo model %s not found; starting without it", settings.demo)
    if demo is not None:
        shared_demo(demo)  # loaded once per process, before the start-up objects are frozen
    freeze_startup_objects()
    explorer = Explorer(demo=demo, data_dir=settings.data_dir, runs_dir=settings.runs_dir, max_upload_mb=settings.max_upload_mb)
    state = explorer.state

    def on_session_destroyed(_session_context) -> None:
        state.close()
        return_free_memory()  # one garbage collection, then the counts
        logger.info("session %s closed; explorer sessions alive: %d; models alive: %d", state.session_id,
                    *live_counts(collect=False))

    pn.state.on_session_destroyed(on_session_destroyed)
    page = explorer.template()
    logger.info("session %s opened in %.2f s; explorer sessions alive: %d; models alive: %d", state.session_id,
                time.perf_counter() - started, *live_counts())
    return page


def _log_to_server_console() -> None:
    """Show the app's INFO messages in the server's console (bokeh only configures its own logger)."""
    package = logging.getLogger("cplmix_explorer")
    package.setLevel(logging.INFO)
    if not package.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package.addHandler(handler)


_warm_up_started = False


def warm_up_in_background() -> None:
    """Compile datashader's aggregations (numba) once per process in a background thread while the first
    page loads, so that opening the Cells tab does not wait for the compiler."""
    global _warm_up_started
    if _warm_up_started:
        return
    _warm_up_started = True

    def compile_aggregations() -> None:
        # lazy: datashader loads numba (seconds), in this warm-up thread rather than at the app's import
        import datashader as ds
        import numpy as np
        import pandas as pd

        frame = pd.DataFrame({
            "x": np.linspace(0, 1, 64, dtype=np.float32), "y": np.linspace(0, 1, 64, dtype=np.float32),
            "type": pd.Categorical([str(i % 4) for i in range(64)]), "value": np.ones(64, np.float32),
        })
        canvas = ds.Canvas(plot_width=32, plot_height=32)
        try:
            canvas.points(frame, "x", "y", agg=ds.count_cat("type"))
            canvas.points(frame, "x", "y", agg=ds.mean("value"))
            canvas.points(frame, "x", "y", agg=ds.count())
        except Exception:  # warming up is an optimisation; the views work without it
            logger.exception("datashader warm-up failed")

    threading.Thread(target=compile_aggregations, name="cplmix-warm-up", daemon=True).start()
