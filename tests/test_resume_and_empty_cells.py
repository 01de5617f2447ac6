"""Checkpoints by time, resuming a run that never reached a checkpoint, and --drop-empty-cells: real runs
of the `cplmix` command, real signals, a real .h5ad file with empty cells."""

from __future__ import annotations

import json
import signal
import warnings

import anndata
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from conftest import mixture_counts
from test_reliability import SMALL, _start_training, _wait_for_checkpoint, checkpoint_step, model_tensors

from cplmix_explorer.api import CplMixVAE
from cplmix_explorer.cli import main
from cplmix_explorer.train.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME
from cplmix_explorer.train.events import CheckpointSaved
from cplmix_explorer.workflows.run import load_run

#: No checkpoint by steps before the end: any earlier checkpoint was written by time.
NEVER_BY_STEPS = ["--checkpoint-every", "1000000"]


@pytest.fixture(scope="module")
def tiny_h5ad(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.h5ad"
    mixture_counts(n_cells=120, n_genes=40, n_types=3).write_h5ad(path)
    return path


@pytest.mark.slow
def test_a_run_killed_after_its_first_timed_checkpoint_resumes_to_the_same_model(tiny_h5ad, tmp_path):
    schedule = ["--steps", "1000", *NEVER_BY_STEPS, "--log-every", "10", "--seed", "3", "--quiet", *SMALL]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(["train", str(tiny_h5ad), "--out", str(straight), *schedule, "--checkpoint-seconds", "0"]) == 0

    process = _start_training([str(tiny_h5ad), "--out", str(killed), *schedule, "--checkpoint-seconds", "0.05"])
    _wait_for_checkpoint(killed / CHECKPOINT_NAME, process)  # the first checkpoint, written by time
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    saved_at = max(checkpoint_step(path) for path in (killed / CHECKPOINT_NAME, killed / PREVIOUS_NAME) if path.exists())
    assert 0 < saved_at < 1000  # by time: the step-based one would be at step 1,000,000
    assert not (killed / "metrics.json").exists()

    assert main(["train", str(tiny_h5ad), "--out", str(killed), "--resume", "--quiet"]) == 0
    assert json.loads((killed / "metrics.json").read_text())["step"] == 1000
    expected, resumed = model_tensors(straight), model_tensors(killed)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.allclose(expected[name], resumed[name], rtol=1e-4, atol=1e-6), name


def test_checkpoints_by_time_come_between_those_by_steps(tiny_h5ad, tmp_path):
    """A run slower than checkpoint_seconds per step checkpoints at every step although checkpoint_every is
    far away (checkpoint_seconds is tiny here, so every step is 'late')."""
    saved = []
    model = CplMixVAE(str(tiny_h5ad), n_types=3, hidden_dim=16, n_hidden_layers=2, batch_size=32, eval_every=1000,
                      checkpoint_every=1000, checkpoint_seconds=1e-9)
    model.events.subscribe(lambda event: saved.append(event.step) if isinstance(event, CheckpointSaved) else None)
    model.train(steps=6, progress=False, run_dir=tmp_path / "run")
    assert saved == [1, 2, 3, 4, 5, 6]
    saved.clear()
    model.config.update(checkpoint_seconds=0.0)  # off: by steps only (and the end)
    model.train(steps=3, progress=False, run_dir=tmp_path / "run")
    assert saved == [9]


def test_resume_of_a_run_killed_before_any_checkpoint_starts_it_afresh(tiny_h5ad, tmp_path):
    run_dir = tmp_path / "run"
    process = _start_training([str(tiny_h5ad), "--out", str(run_dir), "--steps", "100000", *NEVER_BY_STEPS,
                               "--checkpoint-seconds", "0", "--seed", "5", "--quiet", *SMALL])
    try:
        _wait_for_file(run_dir / "run.json", process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    assert (run_dir / "run.json").exists() and not (run_dir / CHECKPOINT_NAME).exists()

    # the run's own options (recorded in run.json) are kept; the schedule is shortened only for the test
    recorded = json.loads((run_dir / "run.json").read_text())
    recorded["config"]["steps"] = 30
    (run_dir / "run.json").write_text(json.dumps(recorded))
    resumed = _start_training([str(tiny_h5ad), "--out", str(run_dir), "--resume", "--quiet"])
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert stderr.strip().splitlines() == [
        f"cplmix: warning: '{run_dir}' holds run.json but no checkpoint (the run stopped before its first one): "
        "starting it afresh"
    ]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["step"] == 30 and metrics["k"] == 3
    config = json.loads((run_dir / "run.json").read_text())["config"]
    assert config["seed"] == 5 and config["hidden_dim"] == 16


def test_resume_of_an_empty_folder_still_refuses(tmp_path, tiny_h5ad, capsys):
    (tmp_path / "run").mkdir()
    assert main(["train", str(tiny_h5ad), "--out", str(tmp_path / "run"), "--resume"]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def _wait_for_file(path, process, timeout: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.005)


# -- --drop-empty-cells ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def with_empty_cells(tmp_path_factory):
    """A real .h5ad whose cells 5 and 17 have no counts."""
    adata = mixture_counts(n_cells=120, n_genes=40, n_types=3)
    counts = adata.X.toarray()
    counts[[5, 17]] = 0
    adata.X = sp.csr_matrix(counts)
    path = tmp_path_factory.mktemp("empty") / "with_empty_cells.h5ad"
    adata.write_h5ad(path)
    return path


def test_without_the_flag_the_refusal_names_it(with_empty_cells, tmp_path, capsys):
    assert main(["train", str(with_empty_cells), "--out", str(tmp_path / "run"), "--steps", "2", *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 cells without any counts (first: 'cell5')" in err[0] and "--drop-empty-cells" in err[0]
    assert not (tmp_path / "run").exists()


def test_drop_empty_cells_trains_on_the_others_and_records_it(with_empty_cells, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.warns(UserWarning, match=r"^dropped 2 cells without any counts \(first: 'cell5'; --drop-empty-cells\)$"):
        assert main(["train", str(with_empty_cells), "--out", str(run_dir), "--steps", "20", "--drop-empty-cells",
                     "--quiet", "--labels", "type", *SMALL]) == 0
    run_info = json.loads((run_dir / "run.json").read_text())
    assert run_info["config"]["drop_empty_cells"] is True and run_info["dropped_empty_cells"] == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["dropped_empty_cells"] == 2 and metrics["n_cells"] == 118
    result = anndata.read_h5ad(run_dir / "result.h5ad")
    assert result.n_obs == 118 and not {"cell5", "cell17"} & set(result.obs_names)
    assert result.obs["cplmix_type"].notna().all() and result.uns["cplmix"]["dropped_empty_cells"] == 2
    # the run loads again on the same file (the same cells are dropped) and evaluates as it was trained
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_run(run_dir)
    assert model.adata.n_obs == 118 and model.dropped_empty_cells == 2
    assert model.evaluate("type")["acc"] == pytest.approx(metrics["acc"])


def test_the_api_drops_them_without_touching_the_callers_anndata(with_empty_cells):
    adata = anndata.read_h5ad(with_empty_cells)
    with pytest.warns(UserWarning, match="dropped 2 cells without any counts"):
        model = CplMixVAE(adata, n_types=3, drop_empty_cells=True)
    assert adata.n_obs == 120 and model.adata.n_obs == 118 and model.dropped_empty_cells == 2
    assert np.array_equal(np.asarray(model.adata.X.sum(axis=1)).ravel() > 0, np.ones(118, dtype=bool))
