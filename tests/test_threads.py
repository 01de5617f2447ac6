"""--threads: one option for the CLI, the API and the app; the default never asks for more threads than the
cores this process may use; the number used is recorded in the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import mixture_counts

from cplmix_explorer import threads
from cplmix_explorer.api import CplMixVAE
from cplmix_explorer.cli import main
from cplmix_explorer.config import CplMixConfig
from cplmix_explorer.errors import CplmixError
from cplmix_explorer.workflows.worker import APP_RESERVED_CORES, ProcessTraining

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--types", "3", "--hidden-dim", "16", "--n-hidden-layers", "2", "--batch-size", "32", "--eval-every", "1000"]


@pytest.fixture(scope="module")
def tiny_h5ad(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.h5ad"
    mixture_counts(n_cells=120, n_genes=40, n_types=3).write_h5ad(path)
    return path


def _environment_without_thread_caps() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return env


def _one_cpu_of_ours() -> int:
    return min(os.sched_getaffinity(0))


def test_the_default_is_never_more_than_the_affinity_set(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    allowed = len(os.sched_getaffinity(0))
    assert 1 <= threads.resolve_threads(None) <= allowed
    assert threads.resolve_threads(None, reserve=1) == max(1, threads.available_cpus() - 1)
    assert threads.resolve_threads(None, reserve=allowed + 5) == 1  # never 0
    # in a process pinned to one CPU, on a machine of any size
    code = "from cplmix_explorer.threads import resolve_threads as r; print(r(None), r(None, 1))"
    out = subprocess.run([sys.executable, "-c", code], env=_environment_without_thread_caps(), capture_output=True,
                         text=True, check=True, timeout=120, preexec_fn=lambda: os.sched_setaffinity(0, {_one_cpu_of_ours()}))
    assert out.stdout.split() == ["1", "1"]


def test_a_cgroup_cpu_quota_caps_the_default(tmp_path, monkeypatch):
    """cpu.max '150000 100000' allows 1.5 CPUs of time: one thread, whatever the affinity set says."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":
            folder = tmp_path / path.lstrip("/")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "cpu.max").write_text("150000 100000\n")
        elif "cpu" in controllers.split(","):
            folder = tmp_path / controllers / path.lstrip("/")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "cpu.cfs_quota_us").write_text("150000\n")
            (folder / "cpu.cfs_period_us").write_text("100000\n")
    monkeypatch.setattr(threads, "CGROUP_ROOT", tmp_path)
    assert threads.cgroup_cpu_limit() == pytest.approx(1.5)
    assert threads.available_cpus() == 1 and threads.resolve_threads(None) == 1
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(threads, "CGROUP_ROOT", tmp_path / "empty")  # no quota files: no cap
    assert threads.cgroup_cpu_limit() is None


def test_an_explicit_thread_count_is_used_and_recorded(tiny_h5ad, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", str(tiny_h5ad), "--out", str(run_dir), "--steps", "5", "--threads", "1", "--quiet", *SMALL]) == 0
    run_info = json.loads((run_dir / "run.json").read_text())
    assert run_info["threads"] == 1 and run_info["config"]["threads"] == 1
    assert json.loads((run_dir / "metrics.json").read_text())["threads"] == 1


def test_the_default_run_records_the_cores_it_may_use(tiny_h5ad, tmp_path):
    """`cplmix train` without --threads, pinned to one CPU and with no OMP_NUM_THREADS: one thread."""
    run_dir = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "cplmix_explorer.cli", "train", str(tiny_h5ad), "--out", str(run_dir), "--steps",
                    "5", "--quiet", *SMALL], env=_environment_without_thread_caps(), check=True, timeout=300,
                   preexec_fn=lambda: os.sched_setaffinity(0, {_one_cpu_of_ours()}))
    assert json.loads((run_dir / "run.json").read_text())["threads"] == 1
    assert json.loads((run_dir / "metrics.json").read_text())["threads"] == 1


@pytest.mark.parametrize("value, message", [("0", "invalid value for --threads: must be at least 1, not 0"),
                                            ("two", "argument --threads: invalid int value: 'two'")])
def test_a_bad_thread_count_is_one_line_naming_the_flag(tiny_h5ad, tmp_path, capsys, value, message):
    assert main(["train", str(tiny_h5ad), "--out", str(tmp_path / "run"), "--threads", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cplmix: error: ") and message in err[0], err
    assert not (tmp_path / "run").exists()


def test_the_api_takes_threads_as_a_keyword_and_names_it_so():
    adata = mixture_counts(n_cells=60, n_genes=30, n_types=3)
    model = CplMixVAE(adata, n_types=3, threads=1, hidden_dim=16, n_hidden_layers=2, batch_size=16)
    model.train(steps=2, progress=False)
    assert model.threads_used == 1 and model.config.threads == 1
    with pytest.raises(CplmixError, match=r"^invalid value for threads: must be at least 1, not 0$"):
        CplMixVAE(adata, n_types=3, threads=0)


def test_the_app_form_has_the_threads_field_from_the_declaration():
    from cplmix_explorer.views import DataView, ExplorerState

    state = ExplorerState()
    state.use_data(mixture_counts(), "mixture")
    form = DataView(state).form
    widget = form.widgets["threads"]
    assert "--threads" in widget.label and widget.value is None
    widget.value = 1
    assert state.config.threads == 1
    widget.value = 0
    assert "must be at least 1" in form.errors["threads"] and state.config.threads == 1


def test_training_launched_by_the_app_leaves_a_core_to_its_server(tmp_path, monkeypatch):
    """The app's training child, with the default thread count: the available cores less one (at least 1)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the child inherits this environment
    config = CplMixConfig(n_types=3, hidden_dim=16, n_hidden_layers=2, batch_size=32, steps=5, device="cpu")
    outcome = ProcessTraining(mixture_counts(n_cells=120, n_genes=40, n_types=3), tmp_path / "run", config).run()
    expected = max(1, threads.available_cpus() - APP_RESERVED_CORES)
    assert outcome.metrics["threads"] == expected
    assert json.loads((tmp_path / "run" / "run.json").read_text())["threads"] == expected
