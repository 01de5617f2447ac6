"""The `cplmix` command: train -> evaluate on a tiny dataset, the JSON contracts, and bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import mixture_counts

from cplmix_explorer.cli import main


@pytest.fixture(scope="module")
def tiny_h5ad(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.h5ad"
    mixture_counts(n_cells=300, n_genes=120).write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def trained_run(tiny_h5ad, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    code = main(["train", str(tiny_h5ad), "--out", str(run_dir), "--steps", "150", "--types", "4",
                 "--labels", "type", "--quiet", "--seed", "1"])
    assert code == 0
    return run_dir


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    assert err[0].startswith("cplmix: error: ")
    return err[0]


def test_train_writes_the_run_folder(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"run.json", "checkpoint.safetensors", "metrics.json", "result.h5ad"} <= names
    import anndata

    result = anndata.read_h5ad(trained_run / "result.h5ad")
    assert result.n_obs == 300
    assert {"cplmix_type", "cplmix_confidence", "type"} <= set(result.obs.columns)
    assert result.obsm["X_cplmix_state"].shape == (300, 2)
    assert result.obsm["X_cplmix_latent"].shape[0] == 300
    assert result.uns["cplmix"]["config"]["n_types"] == 4
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["step"] == 150
    assert len(metrics["history"]["loss"]) == 150 // 25


def test_evaluate_prints_one_json_object(trained_run, capsys):
    assert main(["evaluate", str(trained_run), "--labels", "type"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"acc", "ari", "nmi", "kl", "consensus", "k"} <= set(report)
    assert report["k"] == 4
    assert report["acc"] > 0.9  # four well separated types


def _strict_json(text: str):
    """json.loads that refuses NaN / Infinity, as JavaScript's JSON.parse and most other readers do."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_prune_to_the_number_of_types_writes_its_trajectory_and_evaluate_follows(tiny_h5ad, tmp_path, capsys):
    """The paper's recipe from the command line: train twice the types, prune the least-agreed down to them."""
    run_dir = tmp_path / "run"
    assert main(["train", str(tiny_h5ad), "--out", str(run_dir), "--steps", "300", "--types", "8",
                 "--labels", "type", "--quiet", "--seed", "0"]) == 0
    assert main(["prune", str(run_dir), "--min-consensus", "1", "--min-types", "4", "--steps", "50", "--quiet"]) == 0
    capsys.readouterr()
    pruning = _strict_json((run_dir / "pruning.json").read_text())
    trajectory = pruning["trajectory"]
    assert pruning["chosen_k"] == 4 and trajectory["k"] == [8, 7, 6, 5, 4]
    assert trajectory["removed"][0] is None  # the starting point removed nothing
    assert len(set(trajectory["removed"][1:])) == 4 and set(trajectory["removed"][1:]) <= set(range(8))
    assert trajectory["step"] == [300, 350, 400, 450, 500]
    why = {"passed": "Stopped at K = 4: every type's agreement reached the threshold 1",
           "min_types": "Stopped at K = 4, the 'stop at K' floor (--min-types 4)"}
    assert pruning["reason"].startswith(why[pruning["status"]]), pruning  # the reason says which of the two it was
    assert main(["evaluate", str(run_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["k"] == 4 and report["step"] == 500
    assert report["acc"] > 0.9  # the four well-separated types, one category each


def test_console_script_runs_as_installed(trained_run):
    done = subprocess.run([sys.executable, "-m", "cplmix_explorer.cli", "evaluate", str(trained_run)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["k"] == 4


def test_bench_reports_throughput(capsys):
    assert main(["bench", "--genes", "100", "--types", "5", "--batch-size", "32", "--steps", "5", "--warmup", "2",
                 "--cells", "200"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["it_per_s"] > 0 and report["cells_per_s"] == pytest.approx(32 * report["it_per_s"])
    assert report["device"] == "cpu" and report["state_encoder"] == "separate"  # the training default
    assert main(["bench", "--genes", "100", "--types", "5", "--batch-size", "32", "--steps", "5", "--warmup", "2",
                 "--cells", "200", "--state-encoder", "shared"]) == 0
    assert json.loads(capsys.readouterr().out)["state_encoder"] == "shared"


def test_existing_run_is_not_overwritten(tiny_h5ad, trained_run, capsys):
    before = (trained_run / "checkpoint.safetensors").read_bytes()
    assert main(["train", str(tiny_h5ad), "--out", str(trained_run), "--steps", "5", "--quiet"]) == 2
    assert "already holds a run" in _error_line(capsys)
    assert (trained_run / "checkpoint.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--types", "500"], "more types (500) than cells (300)"),
        (["--labels", "celltype"], "unknown labels column 'celltype'"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(tiny_h5ad, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(["train", str(tiny_h5ad), "--out", str(out), "--steps", "5", "--quiet", *extra]) == 2
    assert message in _error_line(capsys)
    assert not out.exists()  # nothing half written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_gpu_is_refused(tiny_h5ad, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(tiny_h5ad), "--out", str(out), "--device", "cuda", "--quiet"]) == 2
    assert "no CUDA GPU is available" in _error_line(capsys)
    assert not out.exists()


def test_missing_file_and_wrong_file_type(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.h5ad"), "--out", str(tmp_path / "r")]) == 2
    assert "no such file" in _error_line(capsys)
    text = tmp_path / "counts.csv"
    text.write_text("a,b\n1,2\n")
    assert main(["train", str(text), "--out", str(tmp_path / "r")]) == 2
    assert "is not an .h5ad file" in _error_line(capsys)
    fake = tmp_path / "broken.h5ad"
    fake.write_bytes(b"not hdf5 at all")
    assert main(["train", str(fake), "--out", str(tmp_path / "r")]) == 2
    assert "cannot read" in _error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_checkpoint_from_another_gene_set_is_refused(trained_run, tmp_path, capsys):
    other = mixture_counts(n_cells=300, n_genes=120)
    other.var_names = [f"other{j}" for j in range(120)]
    path = tmp_path / "other.h5ad"
    other.write_h5ad(path)
    assert main(["evaluate", str(trained_run), "--data", str(path)]) == 2
    assert "trained on another gene set" in _error_line(capsys)


def test_resume_without_a_checkpoint_is_refused(tiny_h5ad, tmp_path, capsys):
    assert main(["train", str(tiny_h5ad), "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "no run folder" in _error_line(capsys)


def test_nan_counts_are_refused(tmp_path, capsys):
    adata = mixture_counts(n_cells=50, n_genes=30, sparse=False)
    adata.X[3, 4] = np.nan
    path = tmp_path / "nan.h5ad"
    adata.write_h5ad(path)
    assert main(["train", str(path), "--out", str(tmp_path / "r"), "--types", "3"]) == 2
    assert "NaN" in _error_line(capsys)
    assert not (tmp_path / "r").exists()
