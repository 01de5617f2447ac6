"""The explorer's views without a browser: what each panel computes and shows, on real data, real models
and real (small) training runs. The app in a real browser is tests/test_app_browser.py."""

from __future__ import annotations

import gc
import io
import os
import time
import weakref
from pathlib import Path

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
import pytest
from bokeh.document import Document
from bokeh.models import ColumnDataSource, Legend

from cplmix_explorer.analysis.embedding import pca_2d
from cplmix_explorer.analysis.metrics import compare_to_labels
from cplmix_explorer.errors import CplmixError
from cplmix_explorer.train.events import Evaluation, StepMetrics, TrainingFinished, TrainingStarted
from cplmix_explorer.views import CellsView, ConsensusView, DataView, Explorer, ExplorerState, TrainingMonitor, TraversalView
from cplmix_explorer.views import plots
from cplmix_explorer.views.consensus import pruning_available
from cplmix_explorer.views.explorer import app_settings, remote_access_allowed
from cplmix_explorer.views.jobs import BackgroundJob, JobEnded, JobQueued, JobRunning
from cplmix_explorer.views.live import LiveTraining, format_duration
from cplmix_explorer.views.live_plots import LiveFigures, nice_range
from cplmix_explorer.views.safety import read_upload, resolve_data_path, sanitize_filename
from cplmix_explorer.views.traversal import parse_gene_list

from conftest import mixture_counts

REPOSITORY = Path(__file__).resolve().parent.parent
DEMO = REPOSITORY / "models" / "zeisel2015_demo"
#: Small, fast training options for a 600-cell x 200-gene mixture (real training, a few seconds).
QUICK = dict(n_types=4, n_arms=2, state_dim=2, n_genes=200, hidden_dim=32, batch_size=64, steps=60,
             log_every=5, eval_every=20, device="cpu", seed=0)


def h5ad_bytes(adata, folder: Path) -> bytes:
    path = folder / "written.h5ad"
    adata.write_h5ad(path)
    return path.read_bytes()


def move_slider(slider, value: float) -> None:
    """What the browser sends when a slider is released: value and value_throttled."""
    with param.edit_constant(slider):
        slider.param.update(value=value, value_throttled=value)


def render(viewable) -> Document:
    """Build the Bokeh models of a view as the server would (raises if anything cannot render)."""
    document = Document()
    pn.panel(viewable).get_root(document)
    return document


def hv_bars(overlay) -> pd.DataFrame:
    """The data of the bars in a profile plot."""
    bars = [element for element in overlay if isinstance(element, hv.Bars)][0]
    return bars.dframe().rename(columns={"key": "gene"})


#: How long a test waits for a background job or a refresh event before it fails: generous, so a busy machine
#: (other processes on every core) only makes the tests slower, never wrong.
JOB_DEADLINE_S = 900.0


def wait_until(condition, state: ExplorerState | None = None, timeout: float = JOB_DEADLINE_S, what: str = "the event") -> None:
    """Poll ``condition()`` (driving the session's refresh as its periodic callback would) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout:.0f} s"
        time.sleep(0.1)
        if state is not None:
            state.poll()


def wait_for_job(state: ExplorerState, timeout: float = JOB_DEADLINE_S) -> None:
    """Drive the session's refresh as the periodic callback would, until the background job ends."""
    deadline = time.monotonic() + timeout
    while state.busy and time.monotonic() < deadline:
        time.sleep(0.2)
        state.poll()
    assert not state.busy, "the background job did not finish in time"
    state.poll()


@pytest.fixture(scope="module")
def demo_state() -> ExplorerState:
    state = ExplorerState()
    state.open_demo(DEMO)
    return state


# -- what the served app accepts ------------------------------------------------------------------------------
def test_server_paths_stay_inside_the_data_folder(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    inside = data / "sub" / "cells.h5ad"
    inside.write_bytes(b"x")
    outside = tmp_path / "secret.h5ad"
    outside.write_bytes(b"x")
    (data / "link_out.h5ad").symlink_to(outside)
    (data / "link_in.h5ad").symlink_to(inside)
    (data / "notes.txt").write_text("x")

    assert resolve_data_path("sub/cells.h5ad", data) == inside.resolve()
    assert resolve_data_path(str(inside), data) == inside.resolve()
    assert resolve_data_path("link_in.h5ad", data) == inside.resolve()
    refusals = {
        "../secret.h5ad": "outside the allowed data folder",
        "sub/../../secret.h5ad": "outside the allowed data folder",
        str(outside): "outside the allowed data folder",
        "link_out.h5ad": "outside the allowed data folder",
        "notes.txt": "not an .h5ad file",
        "sub": "is a folder",
        "missing.h5ad": "no such file",
        "": "type the path",
    }
    for text, reason in refusals.items():
        with pytest.raises(CplmixError, match=reason):
            resolve_data_path(text, data)
    with pytest.raises(CplmixError, match="disabled"):
        resolve_data_path("sub/cells.h5ad", None)
    with pytest.raises(CplmixError, match="private"):
        resolve_data_path("sub/cells.h5ad", data, private_dirs=(data / "sub",))


def test_file_names_are_sanitised():
    assert sanitize_filename("../../etc/passwd") == "etc_passwd"
    assert sanitize_filename("traversal type 3 (L5 NP).png") == "traversal_type_3_L5_NP_.png"
    assert sanitize_filename(".hidden") == "hidden"
    assert sanitize_filename("a\x00b\nc.csv") == "a_b_c.csv"
    assert sanitize_filename("Ärger/ü.pdf") == "Arger_u.pdf"
    assert sanitize_filename("...") == "export"
    assert len(sanitize_filename("x" * 500 + ".png")) <= 120


def test_uploads_are_limited_and_validated(tmp_path):
    good = mixture_counts(n_cells=50, n_genes=30)
    payload = h5ad_bytes(good, tmp_path)
    adata = read_upload("cells.h5ad", payload, max_bytes=len(payload))
    assert adata.shape == (50, 30) and list(adata.obs["type"][:2]) == ["T0", "T1"]
    with pytest.raises(CplmixError, match="over the limit"):
        read_upload("cells.h5ad", payload, max_bytes=len(payload) - 1)
    with pytest.raises(CplmixError, match="not an .h5ad"):
        read_upload("cells.csv", payload, max_bytes=10**9)
    with pytest.raises(CplmixError, match="not an HDF5 file"):
        read_upload("cells.h5ad", b"cell,gene\n1,2\n" * 10, max_bytes=10**9)
    negative = good.copy()
    negative.X = -negative.X.toarray()
    with pytest.raises(CplmixError, match="negative"):
        read_upload("negative.h5ad", h5ad_bytes(negative, tmp_path), max_bytes=10**9)
    with pytest.raises(CplmixError, match="cannot read"):
        read_upload("truncated.h5ad", payload[: len(payload) // 2], max_bytes=10**9)


def test_remote_sessions_need_authentication_or_explicit_permission():
    assert remote_access_allowed("127.0.0.1", None, False)
    assert remote_access_allowed("::1", None, False)
    assert not remote_access_allowed("192.168.1.20", None, False)
    assert remote_access_allowed("192.168.1.20", "alice", False)
    assert remote_access_allowed("192.168.1.20", None, True)
    settings = app_settings(["--data-dir", "/srv/data", "--max-upload-mb", "5"], environ={}, default_demo=DEMO)
    assert settings.data_dir == Path("/srv/data") and settings.max_upload_mb == 5 and settings.demo == DEMO
    assert not settings.allow_remote
    assert app_settings([], environ={"CPLMIX_DATA_DIR": "", "CPLMIX_ALLOW_REMOTE": "1"}).data_dir is None


# -- live training display ------------------------------------------------------------------------------------
def _metrics(first: int, n: int, names: list[str], total: int) -> StepMetrics:
    steps = np.arange(first, first + n)
    values = np.column_stack([steps * (i + 1.0) for i in range(len(names))])
    return StepMetrics(steps=steps, values=values, names=names, total_steps=total, steps_per_second=10.0,
                       cells_per_second=640.0, elapsed_seconds=first / 10.0)


def test_a_session_can_mark_the_server_busy_while_another_sessions_thread_leaves_its_own_update():
    """Two sessions' callbacks in the app's thread pool each update ``pn.state.busy`` inside Panel's
    ``edit_readonly``: the first to leave it puts the read-only flag back while the second is still writing.
    The same interleaving in one thread: the second write must not fail ("Read-only parameter 'busy'
    cannot be modified" in the server log, seen on a loaded machine)."""
    from panel.util import edit_readonly

    from cplmix_explorer.views.server import let_threads_mark_the_server_busy

    let_threads_mark_the_server_busy()
    first_thread, second_thread = edit_readonly(pn.state), edit_readonly(pn.state)
    first_thread.__enter__()
    second_thread.__enter__()
    first_thread.__exit__(None, None, None)
    try:
        pn.state.busy = True  # the second thread's write
        assert pn.state.busy is True
    finally:
        pn.state.busy = False
        second_thread.__exit__(None, None, None)


def test_live_training_rows_progress_and_thinning():
    names = ["loss", "coupling", "reconstruction_arm0", "reconstruction_arm1"]
    live = LiveTraining(max_points=8)
    live.update(TrainingStarted(0, 1000, "cpu", "eager", 600, 4, 2, names))
    live.update(_metrics(1, 5, names, 1000))
    rows, reset = live.take_rows()
    assert reset and list(rows.columns) == ["step", *names]
    assert rows["step"].tolist() == [5.0] and rows["loss"].tolist() == [3.0]  # the mean of steps 1..5
    assert live.take_rows()[0].empty
    for first in range(6, 46, 5):  # 8 more events: more than max_points rows in all -> resolution halves
        live.update(_metrics(first, 5, names, 1000))
    rows, reset = live.take_rows()
    assert reset and len(rows) == 4  # 9 events at 2 per point: 4 full points, the 9th waits for its pair
    assert rows["step"].tolist() == [10.0, 20.0, 30.0, 40.0]
    assert rows["loss"].iloc[0] == pytest.approx(5.5)  # the mean over steps 1..10
    assert live.step == 45 and live.fraction_done == pytest.approx(0.045)
    assert live.eta_seconds == pytest.approx((1000 - 45) / 10.0)
    assert "step 45 / 1,000" in live.summary() and "ETA" in live.summary() and "device cpu" in live.summary()
    live.update(_metrics(46, 5, names, 1000))
    rows, reset = live.take_rows()
    assert not reset and rows["step"].tolist() == [50.0]  # streamed: appended to what the plot holds
    live.update(_metrics(51, 5, names, 1000))
    rows, reset = live.take_rows(flush=True)  # end of training: the incomplete last point is shown too
    assert not reset and rows["step"].tolist() == [55.0]
    rows, reset = live.take_rows()  # a later refresh replaces the partial point by the full history
    assert reset and rows["step"].tolist() == [10.0, 20.0, 30.0, 40.0, 50.0]
    live.update(Evaluation(step=45, agreement=np.array([0.9, 0.5]), mean_agreement=0.7, min_agreement=0.5,
                           validation_loss=1.5, n_cells_evaluated=600))
    agreement = live.take_agreement_rows()
    assert agreement.to_dict("records") == [{"step": 45.0, "mean_agreement": 0.7, "min_agreement": 0.5, "validation_loss": 1.5}]
    assert live.category_agreement.tolist() == [0.9, 0.5]
    live.update(TrainingFinished(55, "stopped", "stopped by request", 5.5))
    assert "ETA" not in live.summary()
    assert format_duration(42) == "42 s" and format_duration(185) == "3 min 05 s" and format_duration(7440) == "2 h 04 min"


# -- background jobs ------------------------------------------------------------------------------------------
def test_jobs_on_one_device_take_turns_and_report_failures():
    release = __import__("threading").Event()

    def slow(control, attach):
        release.wait(10)
        return "completed", "first done", 1

    def second(control, attach):
        return "completed", "second done", 2

    def drained_until(job, kind):
        """The job's events up to and including its first event of ``kind`` (waited for, however slow the machine)."""
        events = []
        wait_until(lambda: (events.extend(job.drain()) or any(isinstance(e, kind) for e in events)), what=f"a {kind.__name__}")
        return events

    first = BackgroundJob("training", "test-device", slow).start()
    drained_until(first, JobRunning)  # the first job holds the device
    queued = BackgroundJob("training", "test-device", second).start()
    events = drained_until(queued, JobQueued)
    assert any(isinstance(e, JobQueued) and "training" in e.busy_with for e in events)
    assert queued.running
    release.set()
    assert queued.join(JOB_DEADLINE_S) and first.join(JOB_DEADLINE_S)
    ended = [e for e in queued.drain() if isinstance(e, JobEnded)]
    assert ended[0].status == "completed" and ended[0].result == 2

    blocker = BackgroundJob("training", "test-device", slow)
    release.clear()
    blocker.start()
    drained_until(blocker, JobRunning)
    cancelled = BackgroundJob("training", "test-device", second).start()
    drained_until(cancelled, JobQueued)
    cancelled.stop()
    assert cancelled.join(JOB_DEADLINE_S)
    assert [e.status for e in cancelled.drain() if isinstance(e, JobEnded)] == ["stopped"]
    release.set()
    blocker.join(JOB_DEADLINE_S)

    def broken(control, attach):
        raise ZeroDivisionError("division by zero")

    failed = BackgroundJob("training", "test-device", broken).start()
    failed.join(JOB_DEADLINE_S)
    events = failed.drain()
    assert isinstance(events[0], JobRunning)
    assert events[-1].status == "failed" and events[-1].message == "training failed: ZeroDivisionError: division by zero"


# -- plots ----------------------------------------------------------------------------------------------------
def test_consensus_matrix_puts_agreement_on_the_diagonal(demo_state):
    consensus = demo_state.consensus
    ordered = plots.order_consensus(consensus)
    used = np.flatnonzero(consensus.used)
    assert sorted(map(int, ordered.rows)) == sorted(used.tolist()) and ordered.rows == ordered.columns
    diagonal = np.diag(ordered.values)
    agreement = consensus.agreement[[int(r) for r in ordered.rows]]
    assert np.all(np.diff(agreement) <= 1e-12), "most agreed type first"
    expected = consensus.matrix[[int(r) for r in ordered.rows], [int(r) for r in ordered.rows]]
    np.testing.assert_allclose(diagonal, expected)
    heatmap = plots.consensus_heatmap(consensus)
    assert heatmap.kdims[1].values[-1] == ordered.rows[0], "the most agreed type is the top row"
    assert hv.render(heatmap).xaxis[0].major_label_orientation == "horizontal", "type numbers side by side"
    names = demo_state.type_names()  # names such as '2 · pyramidal CA1 #2' would overlap side by side: upright
    for element in (plots.consensus_heatmap(consensus, names), plots.agreement_bars(consensus.agreement, consensus.used, names=names)):
        figure = hv.render(element)
        assert figure.xaxis[0].major_label_orientation == pytest.approx(np.pi / 2)
        assert figure.min_height > 320, "the plot grows by the names' length"


def test_confusion_is_ordered_by_matching_and_scored():
    labels = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    types = np.array([7] * 50 + [2] * 30 + [5] * 15 + [2] * 5)  # type 7 = a, 2 = b (+5 of c), 5 = c
    comparison = plots.compare_types_to_labels(types, labels, "truth")
    assert comparison.matrix.rows == ["7", "2", "5"] and comparison.matrix.columns == ["a", "b", "c"]
    np.testing.assert_allclose(np.diag(comparison.matrix.values), [1.0, 30 / 35, 1.0])
    assert comparison.metrics == compare_to_labels(types, labels)
    assert comparison.metrics["acc"] == pytest.approx(0.95)
    hv.render(plots.confusion_heatmap(comparison))


def test_pca_map_of_the_latent():
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(500, 10)) @ np.diag([5, 3] + [0.1] * 8)
    coordinates = pca_2d(latent)
    centred = latent - latent.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    reference = centred @ vt[:2].T
    for axis in range(2):
        assert abs(np.corrcoef(coordinates[:, axis], reference[:, axis])[0, 1]) > 0.999
    assert coordinates[:, 0].var() > coordinates[:, 1].var()


def test_a_million_cells_reach_the_browser_as_an_image_and_a_thinned_hover_layer():
    n = 1_000_000
    rng = np.random.default_rng(1)
    frame = plots.cell_frame(rng.normal(size=(n, 2)).astype(np.float32), rng.integers(0, 12, n), rng.random(n),
                             rng.normal(size=(n, 2)))
    for color_by, highlight in (("type", None), ("type", "3"), ("confidence", "3")):
        figure = hv.render(plots.cell_map(frame, color_by, highlight))
        sizes = [len(next(iter(s.data.values()))) for s in figure.select({"type": ColumnDataSource}) if s.data]
        assert max(sizes) <= plots.HOVER_SAMPLES, f"{color_by}: {sizes}"
        images = [s for s in figure.select({"type": ColumnDataSource}) if "image" in s.data]
        assert images, "the cells are drawn as a datashaded image"
        assert any(r.hover_glyph is not None for r in figure.renderers if hasattr(r, "hover_glyph"))


def legend_labels(figure) -> list[str]:
    """The entries of the figure's legends as Bokeh lists them: an item's own label, or each value of the
    item's label field once, in the order of its data."""
    labels = []
    for legend in figure.select({"type": Legend}):
        for item in legend.items:
            field = getattr(item.label, "field", None)
            if field is not None:
                labels += list(dict.fromkeys(str(v) for v in item.renderers[0].data_source.data[field]))
            else:
                labels.append(item.label["value"])
    return labels


def test_the_map_legend_lists_every_category_of_a_column_with_many():
    """48 subclasses (more than the 25 layers after which HoloViews drops a legend): each listed once."""
    rng = np.random.default_rng(2)
    frame = plots.cell_frame(rng.normal(size=(500, 2)).astype(np.float32), rng.integers(0, 4, 500), rng.random(500),
                             rng.normal(size=(500, 2)))
    frame["subclass"] = pd.Categorical([f"subclass {i % 48}" for i in range(500)])
    figure = hv.render(plots.cell_map(frame, "subclass"))
    labels = legend_labels(figure)
    assert sorted(labels) == sorted(f"subclass {i}" for i in range(48))
    # the legend sits beside the map, not over or above it, and the map is tall enough for all 48 entries
    legends = list(figure.select({"type": Legend}))
    assert legends and all(legend in figure.right for legend in legends)
    assert not any(legend in figure.center or legend in figure.above for legend in legends)
    assert figure.min_height >= plots.map_height(48) >= 48 * plots.LEGEND_ENTRY_PX


def test_the_map_legend_lists_the_types_in_their_order_not_as_texts():
    rng = np.random.default_rng(3)
    frame = plots.cell_frame(rng.normal(size=(600, 2)).astype(np.float32), np.arange(600) % 12, rng.random(600),
                             rng.normal(size=(600, 2)))
    names = [f"{i} · T{i + 1:02d}" for i in range(12)]
    frame["type"] = frame["type"].cat.rename_categories(names)
    figure = hv.render(plots.cell_map(frame, "type"))
    labels = legend_labels(figure)
    assert labels == names  # 0, 1, 2, ..., 11; not 0, 1, 10, 11, 2, ...


# -- the form -----------------------------------------------------------------------------------------------------
def test_config_form_shows_the_cli_validation_message():
    state = ExplorerState()
    state.use_data(mixture_counts(), "mixture")
    view = DataView(state)
    form = view.form
    form.widgets["lr"].value = 5.0
    assert "invalid value for lr" in form.errors["lr"] and state.config.lr == pytest.approx(1e-3)
    form.widgets["lr"].value = 0.01
    assert "lr" not in form.errors and state.config.lr == pytest.approx(0.01)
    form.widgets["n_types"].value = 1
    assert "n_types" in form.errors and state.config.n_types == 10
    form.widgets["likelihood"].value = "nb"
    assert state.config.likelihood == "nb"
    assert list(form.widgets["labels"].options.values()) == [None, "type"]
    form.widgets["labels"].value = "type"
    assert state.config.labels == "type"
    state.config.update(steps=123)  # changes made in code show in the form
    assert form.widgets["steps"].value == 123
    assert "mixture" in view.summary.object and "600 cells" in view.summary.object and "`type` (4)" in view.summary.object
    render(view)


def test_data_view_refuses_bad_paths_and_uploads_with_a_message(tmp_path):
    (tmp_path / "data").mkdir()
    mixture_counts(n_cells=40, n_genes=20).write_h5ad(tmp_path / "outside.h5ad")
    mixture_counts(n_cells=40, n_genes=20).write_h5ad(tmp_path / "data" / "small.h5ad")
    state = ExplorerState(data_dir=tmp_path / "data", max_upload_mb=0.01)
    view = DataView(state)
    view.load_path("../outside.h5ad")
    assert view.message.visible and "outside the allowed data folder" in view.message.object and state.adata is None
    view.load_path("small.h5ad")
    assert not view.message.visible and state.adata.n_obs == 40 and state.data_name == "small.h5ad"
    view.upload.value = {"big.h5ad": b"\x89HDF\r\n\x1a\n" + b"0" * 20_000}
    assert "over the limit" in view.message.object and state.data_name == "small.h5ad"
    view.upload.value = {"bad.h5ad": b"not hdf5"}
    assert "not an HDF5 file" in view.message.object
    for choice in view.source.options:  # every chooser renders
        view.source.value = choice
        render(view)


# -- the live figures ---------------------------------------------------------------------------------------------
def test_live_axes_hold_still_while_points_arrive_and_widen_when_a_value_leaves_them():
    names = ["loss", "coupling", "reconstruction_arm0", "reconstruction_arm1"]
    figures = LiveFigures(names)
    loss_axis = figures.curves["loss"].y_range
    figures.show_steps(0, 600)
    assert (figures.steps.start, figures.steps.end) == (0, 600)  # the whole run from its start

    def rows(steps, loss):
        steps = np.asarray(steps, float)
        return pd.DataFrame({"step": steps, "loss": loss, "coupling": 1.0,
                             "reconstruction_arm0": 2.0, "reconstruction_arm1": np.linspace(3, 2.5, len(steps))})

    figures.show_metrics(rows([5, 10], [4800.0, 2000.0]), replace=False)
    first = (loss_axis.start, loss_axis.end)
    assert first[0] <= 2000 and first[1] >= 4800 and first[1] - first[0] < 2 * (4800 - 2000)
    figures.show_metrics(rows([15, 20, 25], [1500.0, 1200.0, 980.0]), replace=False)
    fitted = (loss_axis.start, loss_axis.end)
    assert fitted[0] <= 980 and fitted[1] >= 4800
    figures.show_metrics(rows([30, 35, 40], [1100.0, 1050.0, np.nan]), replace=False)  # inside (or missing): still
    assert (loss_axis.start, loss_axis.end) == fitted
    figures.show_metrics(rows([45], [9000.0]), replace=False)  # a value above: the axis widens to show it
    assert loss_axis.start <= 980 and loss_axis.end >= 9000
    assert (loss_axis.reset_start, loss_axis.reset_end) == (loss_axis.start, loss_axis.end)  # reset shows it all
    for low, high in [(980, 4800), (2.11, 2.17), (5, 5), (-3, 7), (1e-5, 3e-5)]:
        start, end = nice_range(low, high)
        assert start <= low <= high <= end and end - start <= 2 * max(high - low, abs(high))
    per_arm = figures.curves["reconstruction"].y_range
    assert per_arm.start <= 2.0 and per_arm.end >= 3.0  # every arm's curve fits
    figures.show_metrics(rows([5], [10.0]), replace=True)  # a new record: fitted afresh
    assert loss_axis.start <= 10 <= loss_axis.end < 100
    coupling = figures.curves["coupling"].y_range
    figures.show_metrics(rows([5, 10], [1.0, 1.0]).assign(coupling=[0.002, 0.3]), replace=True)
    assert coupling.start == 0.0 and coupling.end >= 0.3, "a distance is never negative: neither is its axis"
    assert nice_range(-0.002, 0.3)[0] < 0  # data below 0 keep their room


def test_only_one_per_arm_term_is_on_the_page_at_a_time():
    state = ExplorerState()
    state.live.update(TrainingStarted(0, 100, "cpu", "eager", 10, 3, 2, [
        "loss", "coupling", "reconstruction_arm0", "reconstruction_arm1", "kl_arm0", "kl_arm1", "entropy_arm0",
        "entropy_arm1"]))
    monitor = TrainingMonitor(state)
    shown = {model.id for model in pn.panel(monitor).get_root(Document()).references()}  # what the page holds
    curves = monitor.figures.curves
    assert {curves["loss"].id, curves["coupling"].id, curves["reconstruction"].id} <= shown
    assert curves["kl"].id not in shown and curves["entropy"].id not in shown
    tabs = next(o for o in monitor._plots.objects if isinstance(o, pn.Tabs))
    assert tabs._names == ["Reconstruction", "State KL", "Type entropy"]


# -- training from the state (real, small) ------------------------------------------------------------------------
def test_the_figures_wait_for_their_period_while_the_progress_follows_every_refresh(tmp_path):
    # a monitor whose figures redraw at most once an hour: once the run's start has been drawn, only the progress
    # moves while training; the end of the run (here a stop) is drawn at once, with every point. The loop waits for
    # the progress to have moved (however slowly the machine trains), not for a number of refreshes.
    state = ExplorerState(runs_dir=tmp_path / "runs")
    state.use_data(mixture_counts(), "mixture")
    state.config.update(**{**QUICK, "steps": 20_000})  # a progress unit every 20 steps; stopped long before the end
    monitor = TrainingMonitor(state, plot_period=3600)
    render(monitor)
    monitor.train_button.clicks += 1
    seen = []  # (progress, points shown) at each refresh while training
    deadline = time.monotonic() + JOB_DEADLINE_S
    while state.busy and time.monotonic() < deadline:
        time.sleep(0.2)
        state.poll()
        seen.append((monitor.progress.value, monitor.points_shown))
        if len({progress for progress, _ in seen if progress > 0}) >= 3:
            break
    state.stop()
    wait_for_job(state)
    assert state.status == "stopped", state.error
    moving = [(progress, points) for progress, points in seen if 0 < progress < 1000]
    assert len({progress for progress, _ in moving}) >= 2, seen  # the progress followed the refreshes
    assert len({points for _, points in moving}) == 1  # the figures waited
    shown = monitor.metrics_shown()
    assert len(shown) > moving[-1][1] and shown["step"].iloc[-1] == state.model.step  # the end drawn at once


def test_training_in_the_background_updates_the_monitor_and_replaces_the_model(tmp_path):
    state = ExplorerState(runs_dir=tmp_path / "runs")
    state.use_data(mixture_counts(), "mixture")
    state.config.update(**QUICK, labels="type")
    monitor = TrainingMonitor(state)
    render(monitor)
    monitor.train_button.clicks += 1
    assert state.status in ("training", "queued") and monitor.stop_button.disabled is False
    wait_for_job(state)
    assert state.status == "completed", state.error
    assert state.model is not None and state.model.step == 60 and state.run_dir.parent == tmp_path / "runs"
    assert (state.run_dir / "checkpoint.safetensors").exists() and (state.run_dir / "result.h5ad").exists()
    shown = monitor.metrics_shown()
    assert len(shown) == 12 and shown["step"].tolist() == list(range(5, 61, 5))
    assert np.isfinite(shown[["loss", "coupling", "reconstruction_arm0", "entropy_arm1"]].to_numpy()).all()
    assert len(monitor.agreement_shown()) == 3  # evaluations at steps 20, 40, 60
    assert monitor.progress.value == 1000 and "step 60 / 60" in monitor.summary.object
    assert monitor.train_button.disabled is False and monitor.stop_button.disabled is True
    assert state.inference.consensus_type.shape == (600,)


def test_a_second_training_on_a_busy_device_is_queued_and_sessions_stay_apart(tmp_path):
    first, second = ExplorerState(runs_dir=tmp_path), ExplorerState(runs_dir=tmp_path)
    for state in (first, second):
        state.use_data(mixture_counts(), "mixture")
        state.config.update(**{**QUICK, "steps": 100_000})  # still training when the second request is answered
    first.start_training()
    wait_until(lambda: first.status == "training" and first.live.step > 0, first, what="the first training's first step")
    second.start_training()
    wait_until(lambda: second.status != "training", second, what="the second request's answer")
    assert second.status == "queued" and "busy with training" in second.status_message
    assert first.status == "training"
    second.stop()  # one session stops only its own work
    wait_for_job(second)
    assert second.status == "stopped" and first.busy and first.status == "training"
    first.stop()
    wait_for_job(first)
    assert first.status == "stopped" and first.model is not None and 0 < first.model.step < 100_000


def test_a_crash_in_the_training_thread_is_shown_and_the_state_stays_usable(tmp_path):
    state = ExplorerState(runs_dir=tmp_path)
    huge = mixture_counts(n_cells=200, n_genes=50, sparse=False)
    huge.X = huge.X.astype(np.float32) * np.float32(1e30) + np.float32(0.5)  # not counts: used as is; squares overflow
    state.use_data(huge, "huge values")
    state.config.update(**{**QUICK, "n_genes": 50})
    monitor = TrainingMonitor(state)
    state.start_training()
    wait_for_job(state)
    assert state.status == "failed" and "non-finite loss" in state.error
    assert monitor.error.visible and "non-finite loss" in monitor.error.object
    assert monitor.train_button.disabled is False
    state.use_data(mixture_counts(), "mixture")
    state.config.update(steps=10)
    state.start_training()
    wait_for_job(state)
    assert state.status == "completed" and state.error == ""


def test_an_error_while_refreshing_the_display_is_caught_and_shown(tmp_path):
    state = ExplorerState(runs_dir=tmp_path)
    state.use_data(mixture_counts(), "mixture")
    state.config.update(**{**QUICK, "steps": 10})

    def broken_view(event):
        raise KeyError("a view failed")

    state.param.watch(broken_view, "metrics_tick")
    state.start_training()
    assert state.job.join(JOB_DEADLINE_S)
    state.poll()  # must not raise: the periodic callback would stop silently
    assert "display update failed: KeyError" in state.error


def test_closing_a_session_stops_its_training_and_frees_the_state(tmp_path):
    state = ExplorerState(runs_dir=tmp_path)
    state.use_data(mixture_counts(), "mixture")
    state.config.update(**{**QUICK, "steps": 5000})
    views = [TrainingMonitor(state), DataView(state)]
    state.start_training()
    wait_until(lambda: state.live.step > 0, state, what="the first training step")
    job = state.job
    reference = weakref.ref(state)
    state.close()
    assert job.join(JOB_DEADLINE_S), "the training thread ends after the session closed"
    assert state.model is None and state.adata is None
    del state, views
    gc.collect()
    assert reference() is None, "nothing keeps a closed session's state alive"


def test_a_closed_session_frees_the_model_it_trained(tmp_path):
    state = ExplorerState(runs_dir=tmp_path)
    state.use_data(mixture_counts(), "mixture")
    state.config.update(**{**QUICK, "steps": 20})
    state.start_training()
    wait_for_job(state)
    view = TraversalView(state)  # the traversal caches per-model work
    assert view.result is not None
    assert view.warnings.visible and "trained for only 20 steps" in view.warnings.object  # a barely trained model
    model = weakref.ref(state.model)
    state.close()
    del state, view
    gc.collect()
    assert model() is None, "nothing keeps a closed session's model alive"


# -- the views on a real model --------------------------------------------------------------------------------------
def test_cells_view_colours_highlights_and_compares(demo_state):
    view = CellsView(demo_state)
    assert view.color_by.options == ["type", "class", "subclass", "confidence", "state 1", "state 2"]
    assert view.embedding.value == "UMAP of types and states"
    table = view.cell_table()
    assert len(table) == demo_state.n_cells and {"x", "y", "type", "class", "confidence"} <= set(table.columns)
    np.testing.assert_array_equal(table[["x", "y"]].to_numpy(), demo_state.model.cell_map().coordinates)
    pane = view.map_element(view.embedding.value, "class", view.highlight.options[1])  # a label column, a type highlighted
    hv.render(pane.object)
    comparison = view.comparison("class")
    assert comparison.metrics == compare_to_labels(demo_state.inference.consensus_type, demo_state.adata.obs["class"].to_numpy())
    assert "ACC" in view.confusion_element("class").objects[0].object
    render(view)


def test_cells_view_colours_by_a_gene_from_the_gene_box(demo_state):
    view = CellsView(demo_state)
    adata, prepared = demo_state.model.adata, demo_state.model.prepared
    assert sorted(view.gene.options) == sorted(map(str, adata.var_names))  # every input gene is suggested
    outside = next(g for g in adata.var_names if g not in set(prepared.genes))  # read from X, not the model's input
    for gene in (prepared.genes[0], outside):
        # as a browser sends Enter: the typed text and the value in one update, in any case
        view.gene.param.update(value=gene.lower(), value_input=gene.lower())
        assert not view.gene_note.visible
        assert view.color_by.value == f"gene {gene}" and view.color_by.options[-1] == f"gene {gene}"
        pane = view.map_element(view.embedding.value, view.color_by.value, "(none)")
        table = view.cell_table()
        assert [c for c in table.columns if c.startswith("gene ")] == [f"gene {gene}"]
        counts = np.asarray(adata[:, gene].X.todense()).ravel()
        np.testing.assert_allclose(table[f"gene {gene}"], np.log1p(counts * prepared.preprocessing.target_sum / prepared.library_size), rtol=1e-5)
        assert table[f"gene {gene}"].max() > 0
        figure = hv.render(pane.object)
        assert any(getattr(r.glyph, "color_mapper", None) is not None for r in figure.renderers if hasattr(r, "glyph")), \
            "a gene is drawn on a colour scale"
    view.gene.param.update(value="NotAGene", value_input="NotAGene")
    assert view.gene_note.visible and "No gene named `NotAGene`" in view.gene_note.object
    assert view.color_by.value == f"gene {outside}", "an unknown name leaves the colour as it was"


def test_the_map_colours_any_obs_column_by_its_kind():
    obs = pd.DataFrame({
        "batch": pd.Categorical(["a", "b"] * 50), "depth": np.arange(100.0), "doublet": [True, False] * 50,
        "barcode": [f"cell{i}" for i in range(100)], "sample": ["s1"] * 99 + [None],
    })
    assert plots.colourable_columns(obs) == ["batch", "depth", "doublet", "barcode", "sample"]
    assert list(plots.colour_values(obs["doublet"]).categories) == ["False", "True"]
    assert plots.colour_values(obs["depth"]).dtype == np.float32
    assert list(plots.colour_values(obs["sample"]).categories) == ["s1", "(missing)"]
    many = pd.DataFrame({"barcode": [f"cell{i}" for i in range(plots.MAX_CATEGORIES + 1)]})
    assert plots.colourable_columns(many) == [] and plots.colour_values(many["barcode"]) is None


def test_consensus_view_shows_matrix_and_offers_pruning_when_installed(demo_state):
    view = ConsensusView(demo_state)
    column = view._matrices(threshold=0.9)
    assert "types used" in column.objects[0].object
    assert view.prune_button.disabled is (not pruning_available())
    empty = ConsensusView(ExplorerState())
    assert "Train a model" in empty._matrices().object
    render(view)


def test_pruning_from_the_consensus_view_plots_the_trajectory_and_shows_the_pruned_copy(tmp_path):
    state = ExplorerState(runs_dir=tmp_path)
    state.use_data(mixture_counts(), "mixture")
    state.config.update(**{**QUICK, "n_types": 6, "steps": 40})
    state.start_training()
    wait_for_job(state)
    trained = state.model
    view = ConsensusView(state)
    view.min_consensus.value = 1.0  # unreachable: prunes down to the floor
    view.min_types.value = 4
    view.fine_tune_steps.value = 10
    view.prune_button.clicks += 1
    assert state.status == "pruning" and view.stop_button.disabled is False
    assert view.progress.visible and "pruning from K = 6" in view.progress_text.object
    # what the line said after each refresh, with the rounds that had arrived by then (a busy machine can
    # deliver several rounds in one refresh: the line must then name the latest)
    seen = []
    wait_until(lambda: seen.append((len(state.pruning_rounds), view.progress_text.object)) or not state.busy,
               state, what="the pruning's end")
    wait_for_job(state)
    seen.append((len(state.pruning_rounds), view.progress_text.object))
    assert state.status == "completed", state.error
    for records, text in seen:
        if records >= 2:  # the start's record, then one per removal
            removed = records - 1
            assert text.startswith(f"round {removed} of at most 2 · K = {6 - removed}"), (records, text)
    assert seen[-1][1].startswith("round 2 of at most 2 · K = 4"), seen[-1]
    trajectory = view.trajectory_pipe.data
    assert trajectory["k"].tolist() == [6, 5, 4] and trajectory["removed"].notna().sum() == 2
    assert state.model is not trained and state.model.module.n_types == 4, "the pruned copy is shown"
    assert trained.module.n_types == 6, "the model that was shown is left as it was"
    assert state.pruning_result.chosen_k == 4 and state.pruning_result.status == "min_types"
    assert view.reason.visible and view.reason.alert_type == "warning"
    assert "Stopped at K = 4, the 'stop at K' floor" in view.reason.object and "below 1" in view.reason.object
    assert view.progress.value == view.progress.max == 2
    figure = hv.render(view._trajectory_element(trajectory))
    assert figure.x_range.start >= 6 and figure.x_range.end <= 4  # K = 6 .. 4 shown, falling to the right
    assert "of 4 types used" in view._matrices(threshold=1.0).objects[0].object


def test_the_trajectory_chart_follows_the_rounds_from_the_first_one():
    """The K axis is fitted to the rounds at every update (it stayed at [0, 1] while the data held K = 10, 9, 8)."""
    from cplmix_explorer.views.consensus import TRAJECTORY_COLUMNS, trajectory_plot

    empty = hv.render(trajectory_plot(pd.DataFrame(columns=TRAJECTORY_COLUMNS), 0.95, None, (10, 2)))
    assert (empty.x_range.start, empty.x_range.end) == (10.5, 1.5)  # the whole planned range before any round
    rounds = pd.DataFrame({"k": [10, 9, 8], "min_agreement": [0.4, 0.6, 0.7], "mean_agreement": [0.8, 0.85, 0.9],
                           "removed": [None, 3, 5]})
    stream = hv.streams.Pipe(data=pd.DataFrame(columns=TRAJECTORY_COLUMNS))
    chart = hv.DynamicMap(lambda data: trajectory_plot(data, 0.95), streams=[stream])
    plot = hv.renderer("bokeh").get_plot(chart)
    stream.send(rounds)  # what the Consensus tab does after each round
    assert plot.state.x_range.start >= 10 and plot.state.x_range.end <= 8
    points = [r.data_source.data for r in plot.state.renderers if "removed" in getattr(getattr(r, "data_source", None), "data", {})]
    assert list(points[0]["k"]) == [10, 9, 8]


def test_the_cli_and_the_app_prune_with_one_declaration_of_the_options(demo_state):
    from cplmix_explorer.workflows.pruning import default_fine_tune_steps as model_default
    from cplmix_explorer.cli import build_parser
    from cplmix_explorer.config import PruningOptions

    defaults = PruningOptions()
    args = build_parser().parse_args(["prune", "RUN"])
    assert (args.min_consensus, args.min_types, args.fine_tune_steps) == (None, None, None)  # prune_run applies the defaults
    view = ConsensusView(demo_state)
    assert view.min_consensus.value == defaults.min_consensus and view.min_types.value == defaults.min_types
    assert view.fine_tune_steps.value is None and view.options().fine_tune_steps is None  # None: max(100, steps // 10)
    assert view.fine_tune_steps.placeholder == f"default: {model_default(demo_state.model)}" == "default: 400"
    view.fine_tune_steps.value = 25
    assert view.options().to_dict() == {"min_consensus": 0.95, "min_types": 2, "fine_tune_steps": 25}


def test_traversal_view_slider_profile_and_exports(demo_state, tmp_path):
    view = TraversalView(demo_state)
    assert view.result is not None and view.message.visible is False
    reference = view.reference
    assert [name for name in reference.groups] == ["MG", "IEG", "HKG"]
    low, high = view.slider.start, view.slider.end
    assert (low, high) == (pytest.approx(reference.state[0]), pytest.approx(reference.state[-1]))
    move_slider(view.slider, low)
    first = view.profile.object
    move_slider(view.slider, high)
    assert view.profile.object is not first
    low_profile, high_profile = (hv_bars(first), hv_bars(view.profile.object))
    assert list(low_profile["gene"]) == list(high_profile["gene"])
    assert not np.allclose(low_profile["expression"], high_profile["expression"]), "the decoded profile moves with the state"
    assert view.marker_value.value == pytest.approx(high)
    png = view.export_bytes("png").getvalue()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert view.export_bytes("pdf").getvalue().startswith(b"%PDF-")
    assert b"<svg" in view.export_bytes("svg").getvalue()[:2000]
    csv = pd.read_csv(io.BytesIO(view.export_bytes("csv").getvalue()))
    assert len(csv) == reference.steps and csv.columns[0] == "state"
    assert all("/" not in d.filename and d.filename.startswith("traversal_type") for d in view.downloads.values())
    assert view.export(tmp_path / "heatmap.svg").read_bytes().lstrip().startswith(b"<?xml")

    view.groups.value = ["MG"]
    view.custom.value = "Fos, Arc\nNpas4  # activity genes\nNotAGene"
    custom = view.reference.groups["custom"]
    assert custom.genes == ["Fos", "Arc"] and custom.missing == ["Npas4", "NotAGene"]
    assert "absent from the data (Npas4, NotAGene)" in view.group_notes.object
    view.groups.value = ["MG", "IEG"]  # Fos and Arc are immediate early genes: shown there, and the summary says so
    assert view.reference.groups["custom"].genes == [] and {"Fos", "Arc"} <= set(view.reference.groups["IEG"].genes)
    assert "custom: 0 of 4 genes; 2 shown in IEG instead (Fos, Arc)" in view.group_notes.object
    view.groups.value = ["MG"]
    view.groups.value = []
    view.custom.value = ""
    assert view.result is None and "choose at least one gene group" in view.message.object
    view.groups.value = ["MG", "IEG"]
    types = list(view.type.options.values())
    view.compare.value = types[1]
    assert len(view.result.traversals) == 2 and isinstance(view.heatmap.object, hv.Layout)
    assert parse_gene_list("Fos,Fos;Arc\tEgr1 # c\n#x\n") == ["Fos", "Arc", "Egr1"]
    render(view)


def test_traversal_labels_read_as_the_rest_of_the_app(demo_state):
    """One numbering of the states (1-based, as the Cells tab), the slider and the profile title on the same
    value, readable gene names, every top gene with a group, the group table without a raw index."""
    view = TraversalView(demo_state)
    assert list(view.dim.options) == ["state 1", "state 2"]
    reference = view.reference
    assert view.slider.name == "State 1 value" and view.slider.format == "0.000"
    assert view.slider.value in reference.state.tolist(), "the slider sits on a row of the sweep"
    title = f"Decoded profile at state 1 = {view.slider.value:.3f}"
    assert view.profile.object.opts.get().kwargs["title"] == title
    move_slider(view.slider, reference.state[7] + 1e-4)  # between rows: the nearest row is shown, and named
    assert view.profile.object.opts.get().kwargs["title"] == f"Decoded profile at state 1 = {reference.state[7]:.3f}"
    heatmap = hv.render(view.heatmap.object)
    assert heatmap.yaxis[0].axis_label == "state 1" and heatmap.title.text.endswith(", state 1")
    assert heatmap.xaxis[0].major_label_text_font_size in ("9pt", "11pt")
    groups = view.top_genes.object["group"]
    assert (groups != "").all() and set(groups) <= {"MG", "IEG", "HKG", "(other)"}
    assert view.summary.index is False and list(view.summary.object["group"]) == ["MG", "IEG", "HKG"]
    view.dim.value = 1
    assert view.slider.name == "State 2 value" and hv.render(view.heatmap.object).yaxis[0].axis_label == "state 2"
    assert not view.warnings.visible, "the demo (4,000 steps) reproduces its largest type's markers"


def test_a_new_run_clears_the_previous_models_curves_at_once(tmp_path):
    state = ExplorerState(runs_dir=tmp_path)
    state.open_demo(DEMO)
    monitor = TrainingMonitor(state)
    assert monitor.points_shown > 0 and len(monitor.agreement_shown()) > 0
    state.use_data(mixture_counts(), "mixture")
    state.config.update(**QUICK)
    monitor.train_button.clicks += 1  # no refresh yet: the run's first metrics are seconds away
    assert monitor.points_shown == 0 and len(monitor.agreement_shown()) == 0 and monitor.progress.value == 0
    wait_for_job(state)
    assert state.status == "completed", state.error
    assert monitor.metrics_shown()["step"].tolist() == list(range(5, 61, 5))


@pytest.fixture(scope="module")
def served_folders(tmp_path_factory):
    """A data folder with a small dataset and a runs folder with a run of it trained by the command line."""
    from cplmix_explorer.cli import main

    root = tmp_path_factory.mktemp("served")
    data, runs = root / "data", root / "runs"
    data.mkdir()
    mixture_counts(n_cells=300, n_genes=120, n_types=3).write_h5ad(data / "mixture.h5ad")
    assert main(["train", str(data / "mixture.h5ad"), "--out", str(runs / "cli-run"), "--steps", "20", "--types", "3",
                 "--genes", "100", "--hidden-dim", "16", "--batch-size", "64", "--labels", "type", "--quiet"]) == 0
    return data, runs


def test_the_runs_list_opens_earlier_runs_and_offers_their_files(served_folders, tmp_path):
    import json
    import shutil

    from cplmix_explorer.views import RunsView
    from cplmix_explorer.views.safety import list_run_folders

    data, runs = served_folders
    state = ExplorerState(data_dir=data, runs_dir=runs)
    mine, theirs = f"20260101-120000-train-{state.session_id}-abcdef", "20260101-120000-train-0123456789ab-abcdef"
    for name in (mine, theirs, "outside-data", "in-memory", "not-a-run"):
        (runs / name).mkdir(exist_ok=True)
    for name in (mine, theirs):
        shutil.copy(runs / "cli-run" / "run.json", runs / name / "run.json")
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(runs / "cli-run", elsewhere)
    mixture_counts(n_cells=30, n_genes=20).write_h5ad(tmp_path / "secret.h5ad")
    for name, source in (("outside-data", str(tmp_path / "secret.h5ad")), ("in-memory", "in-memory")):
        info = json.loads((runs / "cli-run" / "run.json").read_text())
        (runs / name / "run.json").write_text(json.dumps({**info, "data": source}))
    (runs / "link-out").symlink_to(elsewhere)
    listed = list_run_folders(runs, state.session_id)
    assert set(listed) == {"cli-run", mine, "outside-data", "in-memory"}, "not other sessions' runs, links out, non-runs"

    view = RunsView(state)
    assert set(view.runs.options) == set(listed) and all(d.disabled for d in view.downloads.values())
    view.runs.value = "cli-run"
    view.open_button.clicks += 1
    assert not view.message.visible, view.message.object
    assert state.run_dir == runs / "cli-run" and state.model.step == 20 and state.data_name == "mixture.h5ad"
    assert state.live.step == 20, "the run's training record is shown"
    for name, download in view.downloads.items():
        assert not download.disabled and Path(download.file) == runs / "cli-run" / name
        assert download.filename == f"cli-run_{name}"
    assert "cli-run" in view.shown.object
    refusals = {theirs: "another session's run", "../data": "not the name of a folder", "link-out": "outside the runs folder",
                "outside-data": "outside the allowed data folder", "in-memory": "uploaded or passed in memory",
                "not-a-run": "no run.json", "gone": "no such run folder"}
    for name, reason in refusals.items():
        with pytest.raises(CplmixError, match=reason):
            view.open(name)
    assert state.run_dir == runs / "cli-run", "a refused folder leaves the open run as it was"
    state.open_demo(DEMO)
    assert all(d.disabled for d in view.downloads.values()) and "no run folder" in view.shown.object
    render(view)


def test_explorer_opens_with_the_demo_and_every_view_populated(tmp_path):
    explorer = Explorer(demo=DEMO, runs_dir=tmp_path)
    state = explorer.state
    assert state.data_name == "zeisel2015" and state.model is not None and state.inference is not None
    assert explorer.traversal_view.result is None, "the sweep waits until its tab is shown (page load time)"
    explorer.tabs.active = 3
    assert explorer.traversal_view.result is not None
    assert explorer.cells_view.cell_table() is not None
    assert "demo model" in explorer.data_view.summary.object
    history = __import__("json").loads((DEMO / "metrics.json").read_text())["history"]
    assert explorer.monitor.points_shown == len(history["step"]), "the demo's training record is shown"
    assert len(explorer.monitor.agreement_shown()) > 0
    assert [name for name in explorer.tabs._names] == ["Training", "Consensus", "Cells", "Traversal", "Markers"]
    render(explorer)
    explorer.close()
    assert state.model is None


def test_views_accept_what_a_notebook_user_has(demo_state, tmp_path):
    model = demo_state.model
    assert TrainingMonitor(model).state.model is model
    assert TraversalView(DEMO).state.model.step == model.step
    adata = mixture_counts()
    assert ExplorerState.of(adata).adata is adata
    with pytest.raises(CplmixError, match="cannot explore"):
        ExplorerState.of(42)


@pytest.mark.slow
def test_the_example_notebook_trains_with_a_monitor_and_exports_a_heatmap(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(REPOSITORY / "examples" / "explorer_in_jupyter.ipynb", as_version=4)
    monkeypatch.setenv("CPLMIX_EXAMPLE_STEPS", "60")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPOSITORY), os.environ.get("PYTHONPATH", "")]))
    NotebookClient(notebook, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    png = tmp_path / "traversal_heatmap.png"
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    matrix = pd.read_csv(tmp_path / "traversal_heatmap.csv")
    assert matrix.columns[0] == "state" and len(matrix) == 50
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    shown = " ".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "TrainingMonitor" in shown and "TraversalView" in shown and "'acc'" in shown


@pytest.mark.parametrize("environment, expected", [({}, "True False"), ({"MALLOC_ARENA_MAX": "4"}, "False False")])
def test_served_app_caps_malloc_arenas_once_unless_the_user_set_them(environment, expected):
    # a fresh process: the cap is process-wide (glibc), applied by the first session, and a user's own
    # MALLOC_ARENA_MAX (which glibc applies itself) is left alone
    import subprocess
    import sys

    code = "from cplmix_explorer.views.server import limit_malloc_arenas as f; print(f(), f())"
    env = {key: value for key, value in os.environ.items() if key != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", code], env={**env, **environment}, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == expected
