"""Runs as files: open an earlier run folder of the runs folder (``--runs-dir``) and download the open run's
``result.h5ad`` and ``metrics.json``.

The list holds the run folders directly inside the runs folder (``cplmix train --out RUNS_DIR/NAME`` and this
session's own trainings), never other sessions' runs; opening one reads its data only when it is a bundled
dataset or a file inside the data folder (:mod:`~cplmix_explorer.views.safety`).
"""

from __future__ import annotations

from pathlib import Path

import panel as pn
import param

from ..workflows.run import METRICS_FILE, RESULT_FILE
from .safety import list_run_folders, sanitize_filename
from .state import ExplorerState, format_exception

NO_RUNS = "(no run folders yet)"


class RunsView(pn.viewable.Viewer):
    """A list of the runs folder's run folders with an Open button, and downloads of the open run's files."""

    state = param.ClassSelector(class_=ExplorerState)

    def __init__(self, state: ExplorerState | None = None, **params):
        super().__init__(state=ExplorerState.of(state), **params)
        folder = str(self.state.runs_dir) if self.state.runs_dir is not None else "none"
        self.runs = pn.widgets.Select(label="Run folder", options=[], sizing_mode="stretch_width",
                                      description=f"Run folders in the runs folder {folder}, newest first")
        self.refresh_button = pn.widgets.Button(label="Refresh", width=90, description="List the runs folder again")
        self.open_button = pn.widgets.Button(label="Open run", color="primary", width=110)
        self.message = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width")
        self.shown = pn.pane.Markdown("", sizing_mode="stretch_width", styles={"font-size": "0.9em"})
        self.downloads = {
            name: pn.widgets.FileDownload(label=f"Download {name}", filename=name, color="default", disabled=True,
                                          sizing_mode="stretch_width", embed=False)
            for name in (RESULT_FILE, METRICS_FILE)
        }
        self.open_button.on_click(self._on_open)
        self.refresh_button.on_click(lambda _event: self.refresh())
        self.state.param.watch(self._on_model, ["model", "run_dir", "status"])
        self.refresh()
        self._on_model()

    def refresh(self) -> None:
        """List the runs folder again (newest first); the open run stays chosen."""
        names = list_run_folders(self.state.runs_dir, self.state.session_id)
        current = self.state.run_dir.name if self.state.run_dir is not None else None
        self.runs.options = names or [NO_RUNS]
        self.runs.value = current if current in names else self.runs.options[0]
        self.runs.disabled = not names
        self.open_button.disabled = not names or self.state.busy

    def open(self, name: str) -> Path:
        """Open the run folder ``name`` of the runs folder (what the Open button does)."""
        return self.state.open_run_folder(name)

    def _on_open(self, _event=None) -> None:
        self.open_button.loading = True
        try:
            self.open(self.runs.value)
            self._show("")
        except Exception as error:  # a refused folder or a damaged run: one line, no traceback
            self._show(format_exception(error))
        finally:
            self.open_button.loading = False

    def _on_model(self, *_events) -> None:
        state = self.state
        run_dir = state.run_dir
        if state.status in ("completed", "stopped"):
            self.refresh()  # a training of this session wrote a new run folder
        self.open_button.disabled = self.runs.disabled or state.busy
        for name, download in self.downloads.items():
            path = run_dir / name if run_dir is not None else None
            available = path is not None and path.is_file()
            download.disabled = not available
            download.file = str(path) if available else None
            download.filename = sanitize_filename(f"{run_dir.name}_{name}", default=name) if available else name
        if state.model is None:
            self.shown.object = "No model open."
        elif run_dir is None:
            self.shown.object = f"Shown: {state.model_name} (no run folder to download)"
        else:
            self.shown.object = f"Shown: run folder `{run_dir.name}`"

    def _show(self, text: str) -> None:
        self.message.object = text
        self.message.visible = bool(text)

    def __panel__(self):
        return pn.Column(
            pn.pane.Markdown("### Runs"), self.runs, pn.Row(self.open_button, self.refresh_button),
            self.message, self.shown, pn.Row(*self.downloads.values(), sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )


__all__ = ["RunsView"]
