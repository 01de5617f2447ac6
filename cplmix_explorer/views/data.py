"""Data & configuration: pick a bundled dataset, an .h5ad inside the allowed data folder or an upload; see
its size and label columns; set the training options in a form generated from :class:`CplMixConfig`."""

from __future__ import annotations

import param
import panel as pn
import torch
from panel.custom import JSComponent

from ..config import cli_flag
from ..data.bundled import DATASETS
from ..errors import CplmixError
from .safety import list_data_files
from .state import ExplorerState, format_exception
from .widgets import option_widget

#: Options shown first, in this order; every other option of CplMixConfig goes in "More options".
MAIN_OPTIONS = [
    "n_types", "state_dim", "n_arms", "steps", "batch_size", "lr", "lam", "tau", "beta", "device", "seed",
    "labels", "n_genes",
]
#: Options the app does not offer (files on the server chosen by path are not form fields).
HIDDEN_OPTIONS = {"augmenter_path", "layer"}

BUNDLED, SERVER_FILE, UPLOAD = "Bundled dataset", "File on the server", "Upload"


class LimitedFileDropper(pn.widgets.FileDropper):
    """A FileDropper that also enforces its size limit on the server: a client that ignores the browser's
    limit has its upload dropped as soon as the received chunks pass ``max_bytes``."""

    max_bytes = param.Integer(default=200 * 2**20, bounds=(1, None))
    rejected = param.String(default="", doc="Why the last upload was refused (set on the server).")

    _rename = {**pn.widgets.FileDropper._rename, "max_bytes": None, "rejected": None}  # server-side only

    def _process_event(self, event):
        data = event.data
        if event.event_name == "upload_event":
            name = data["name"]
            received = sum(len(chunk) for chunk in self._file_buffer.get(name, [])) if data["chunk"] != 1 else 0
            if received + len(data["data"]) > self.max_bytes:
                self._file_buffer.pop(name, None)
                self.rejected = f"upload '{name}' is larger than the limit of {self.max_bytes / 2**20:.0f} MB"
                return
        super()._process_event(event)


class ScriptLoader(JSComponent):
    """Loads JavaScript files into the served page the first time it is shown, then sets ``loaded``.

    The upload widget's library (FilePond) runs a 60-frames-per-second animation loop from the moment its
    script is on a page, uploader shown or not: loaded with the page, it kept every open tab's browser
    process busy (~0.09 of a core each, idle). The explorer loads it only when "Upload" is chosen.
    """

    urls = param.List(item_type=str, doc="Script URLs, loaded in this order (page-relative).")
    ready_global = param.String(default="", doc="A global the scripts define: when present they are not loaded again.")
    loaded = param.Boolean(default=False, doc="Set by the browser once every script has run.")
    failure = param.String(default="", doc="Set by the browser when a script could not be loaded.")

    _esm = """
    function load(url) {
      const cache = (window.__cplmix_scripts ??= {})
      cache[url] ??= new Promise((resolve, reject) => {
        const script = document.createElement("script")
        script.src = url
        script.onload = () => resolve()
        script.onerror = () => reject(new Error(`could not load ${url}`))
        document.head.appendChild(script)
      })
      return cache[url]
    }
    export function render({ model }) {
      const note = document.createElement("div")
      note.textContent = "Preparing the uploader..."
      const present = model.ready_global && window[model.ready_global] !== undefined
      const ready = present ? Promise.resolve() : model.urls.reduce((chain, url) => chain.then(() => load(url)), Promise.resolve())
      ready.then(() => { model.loaded = true }, (error) => { model.failure = error.message; note.textContent = error.message })
      return note
    }
    """


def served_session() -> bool:
    """True inside a ``panel serve`` session (not a notebook or a script)."""
    document = pn.state.curdoc
    return document is not None and getattr(document, "session_context", None) is not None


def device_options() -> list[str]:
    """What the device field offers on this machine: auto, cpu and each CUDA GPU."""
    options = ["auto", "cpu"]
    if torch.cuda.is_available():
        options += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    return options


def option_label(name: str) -> str:
    """'n_types' -> 'n types (--types)': the form shows the CLI flag users know."""
    return f"{name.replace('_', ' ')} ({cli_flag(name)})"


class ConfigForm(pn.viewable.Viewer):
    """A form over :class:`CplMixConfig`: one widget per option, typed from its declaration; a value the
    configuration refuses shows the CLI's one-line message under the field and is not applied."""

    state = param.ClassSelector(class_=ExplorerState)

    def __init__(self, state: ExplorerState | None = None, **params):
        super().__init__(state=state if state is not None else ExplorerState(), **params)
        config = self.state.config
        self.widgets: dict[str, pn.widgets.Widget] = {}
        self.messages: dict[str, pn.pane.Alert] = {}
        names = [n for n in config.param if n != "name" and n not in HIDDEN_OPTIONS]
        main = [n for n in MAIN_OPTIONS if n in names]
        more = [n for n in names if n not in main]
        self._main = pn.Column(*[self._field(n) for n in main], sizing_mode="stretch_width")
        self._more = pn.Card(*[self._field(n) for n in more], title="More options", collapsed=True, sizing_mode="stretch_width")
        self.state.param.watch(self._refresh_labels, ["adata"])
        self.state.config.param.watch(self._config_changed, [n for n in names])
        self._refresh_labels()

    def _field(self, name: str) -> pn.Column:
        config = self.state.config
        parameter = config.param[name]
        value = getattr(config, name)
        common = {"label": option_label(name), "description": parameter.doc, "sizing_mode": "stretch_width"}
        if name == "device":
            widget = pn.widgets.Select(options=device_options(), value=value if value in device_options() else "auto", **common)
        elif name == "labels":
            widget = pn.widgets.Select(options={"(none)": None}, value=None, **common)
        elif isinstance(parameter, param.Boolean):
            widget = option_widget(config, name, label=common["label"])
        else:
            widget = option_widget(config, name, **common)
        message = pn.pane.Alert("", alert_type="danger", visible=False, margin=(0, 10), sizing_mode="stretch_width")
        widget.param.watch(lambda event, name=name: self._apply(name, event.new), "value")
        self.widgets[name] = widget
        self.messages[name] = message
        if isinstance(widget, pn.widgets.Checkbox):  # checkboxes have no description: a tooltip beside them
            return pn.Column(pn.Row(widget, pn.widgets.TooltipIcon(value=parameter.doc)), message, sizing_mode="stretch_width", margin=0)
        return pn.Column(widget, message, sizing_mode="stretch_width", margin=0)

    def _apply(self, name: str, value) -> None:
        """Set one option on the shared configuration; the configuration's own validation decides."""
        if isinstance(self.widgets[name], pn.widgets.TextInput) and value == "" and self.state.config.param[name].allow_None:
            value = None
        try:
            self.state.config.update(**{name: value})
        except CplmixError as error:
            self.messages[name].object = str(error)
            self.messages[name].visible = True
            return
        self.messages[name].visible = False

    def _config_changed(self, *events) -> None:
        """Reflect changes made elsewhere (code, a loaded run) in the widgets."""
        for event in events:
            widget = self.widgets.get(event.name)
            if widget is None or widget.value == event.new:
                continue
            if isinstance(widget, pn.widgets.Select) and event.new not in widget.values:
                continue
            widget.value = "" if (event.new is None and isinstance(widget, pn.widgets.TextInput)) else event.new

    def _refresh_labels(self, *_events) -> None:
        options = {"(none)": None, **{column: column for column in self.state.label_columns}}
        widget = self.widgets["labels"]
        current = self.state.config.labels
        widget.options = options
        widget.value = current if current in options.values() else None

    @property
    def errors(self) -> dict[str, str]:
        """Fields whose last entered value was refused, with the message shown."""
        return {name: alert.object for name, alert in self.messages.items() if alert.visible}

    def __panel__(self):
        return pn.Column(pn.pane.Markdown("### Training options"), self._main, self._more, sizing_mode="stretch_width")


class DataView(pn.viewable.Viewer):
    """Choose the data (bundled, server file, upload), see what it holds, and set the training options."""

    state = param.ClassSelector(class_=ExplorerState)

    def __init__(self, state: ExplorerState | None = None, **params):
        super().__init__(state=ExplorerState.of(state), **params)
        state = self.state
        self.source = pn.widgets.RadioButtonGroup(options=[BUNDLED, SERVER_FILE, UPLOAD], value=BUNDLED, color="primary", variant="outline",
                                                  sizing_mode="stretch_width")
        self.bundled = pn.widgets.Select(
            label="Dataset", options={f"{d.name}: {d.description}": d.name for d in DATASETS.values()}, sizing_mode="stretch_width",
        )
        folder = str(state.data_dir) if state.data_dir is not None else "reading server files is disabled"
        self.path = pn.widgets.AutocompleteInput(
            label="Path of an .h5ad file", options=list_data_files(state.data_dir), restrict=False, min_characters=1,
            case_sensitive=False, search_strategy="includes", placeholder="e.g. my_cells.h5ad",
            description=f"Relative to the data folder: {folder}", sizing_mode="stretch_width",
            disabled=state.data_dir is None,
        )
        # no accepted_filetypes: browsers know no MIME type for .h5ad, so FilePond would refuse every file;
        # the server checks the name and the content (read_upload)
        self.upload = LimitedFileDropper(
            multiple=False, max_bytes=state.max_upload_bytes,
            max_file_size=f"{max(state.max_upload_bytes // 2**20, 1)}MB", sizing_mode="stretch_width",
        )
        self.load_button = pn.widgets.Button(label="Load", color="primary", sizing_mode="stretch_width")
        self.message = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width")
        self.summary = pn.pane.Markdown(sizing_mode="stretch_width")
        self.form = ConfigForm(state)
        self.load_button.on_click(self._on_load)
        self.upload.param.watch(self._on_upload, "value")
        self.upload.param.watch(self._on_upload_rejected, "rejected")
        self.source.param.watch(self._on_source, "value")
        state.param.watch(self._update_summary, ["adata", "data_name", "model"])
        self._chooser = pn.Column(self.bundled, sizing_mode="stretch_width")
        self._upload_scripts_ready = False
        self._update_summary()
        if state.data_dir is None:
            self.source.options = [BUNDLED, UPLOAD]

    # -- actions ------------------------------------------------------------------------------------------
    def _on_source(self, event) -> None:
        widget = {BUNDLED: self.bundled, SERVER_FILE: self.path, UPLOAD: self._uploader()}[event.new]
        self._chooser.objects = [widget]
        self.load_button.visible = event.new != UPLOAD
        self._show("")

    def _uploader(self) -> pn.viewable.Viewable:
        """The upload widget, or in a served page that has not loaded its scripts yet, the loader that
        loads them and then puts the widget in its place."""
        if self._upload_scripts_ready or not served_session():
            return self.upload
        from panel.models.file_dropper import FileDropper as FileDropperModel  # lazy: panel loads it with the widget

        loader = ScriptLoader(urls=list(FileDropperModel.__javascript__), ready_global="FilePond", sizing_mode="stretch_width")

        def on_loaded(event) -> None:
            if not event.new:
                return
            self._upload_scripts_ready = True
            extensions = pn.state._extensions  # tell Panel the page now has the widget's resources
            if extensions is not None and "filedropper" not in extensions:
                extensions.append("filedropper")
            if self.source.value == UPLOAD:
                self._chooser.objects = [self.upload]

        loader.param.watch(on_loaded, "loaded")
        loader.param.watch(lambda event: event.new and self._show(f"The uploader could not start: {event.new}"), "failure")
        return loader

    def _on_load(self, _event=None) -> None:
        self.load_button.loading = True
        try:
            if self.source.value == BUNDLED:
                self.state.load_bundled(self.bundled.value)
            elif self.source.value == SERVER_FILE:
                self.state.load_server_file(self.path.value_input or self.path.value)
            self._show("")
        except Exception as error:  # a user mistake (CplmixError) or a damaged file: one line, no traceback
            self._show(format_exception(error))
        finally:
            self.load_button.loading = False

    def _on_upload(self, event) -> None:
        if not event.new:
            return
        filename, payload = next(iter(event.new.items()))
        if isinstance(payload, str):
            payload = payload.encode()
        try:
            self.state.load_upload(filename, payload)
            self._show("")
        except Exception as error:
            self._show(format_exception(error))
        finally:
            self.upload.value = {}

    def _on_upload_rejected(self, event) -> None:
        if event.new:
            self._show(event.new)
            self.upload.rejected = ""

    def load_path(self, text: str) -> None:
        """Load a server file by path as the form would (tests and notebooks)."""
        self.source.value = SERVER_FILE
        self.path.value_input = text
        self.path.value = text
        self._on_load()

    def _show(self, text: str) -> None:
        self.message.object = text
        self.message.visible = bool(text)

    # -- display ------------------------------------------------------------------------------------------
    def _update_summary(self, *_events) -> None:
        self.summary.object = data_summary(self.state)

    def __panel__(self):
        return pn.Column(
            pn.pane.Markdown("### Data"), self.source, self._chooser, self.load_button, self.message, self.summary,
            self.form, sizing_mode="stretch_width",
        )


def data_summary(state: ExplorerState) -> str:
    """Markdown: the data's name and size, whether it holds counts, its label columns and the model shown."""
    adata = state.adata
    if adata is None:
        return "No data loaded."
    lines = [f"**{state.data_name}**: {adata.n_obs:,} cells × {adata.n_vars:,} genes"]
    labels = state.label_columns
    if labels:
        described = ", ".join(f"`{c}` ({adata.obs[c].nunique()})" for c in labels)
        lines.append(f"Label columns for comparison: {described}")
    else:
        lines.append("No label columns (categorical obs) to compare with.")
    if state.model is not None:
        module = state.model.module
        lines.append(
            f"Model: {state.model_name} · {module.n_types} types, {module.n_arms} arms, state dim {module.state_dim}, "
            f"{state.model.prepared.n_genes:,} genes, step {state.model.step:,}"
        )
    else:
        lines.append("No model yet: set the options and train.")
    return "\n\n".join(lines)


__all__ = ["ConfigForm", "DataView", "LimitedFileDropper", "ScriptLoader", "data_summary", "device_options"]
