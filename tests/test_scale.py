"""Atlas scale on small data: memory known before it is spent (the estimate from the file's header and the
refusal when it does not fit), data prepared and neighbors found in chunks without a dense cells x genes
matrix, large files read backed, and the atlas benchmark's quick mode."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData
from conftest import mixture_counts

from cplmix_explorer.cli import main
from cplmix_explorer.config import CplMixConfig
from cplmix_explorer.data import memory
from cplmix_explorer.data.io import read_data
from cplmix_explorer.data.preprocess import prepare
from cplmix_explorer.model.neighbors import PCA_CHUNK, find_neighbors

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_h5ad(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "small.h5ad"
    mixture_counts(n_cells=300, n_genes=120).write_h5ad(path)
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    assert err[0].startswith("cplmix: error: ")
    return err[0]


def test_header_gives_shape_and_stored_values_without_loading_x(small_h5ad):
    shape = memory.h5ad_shape(small_h5ad)
    adata = read_data(small_h5ad)
    assert (shape.n_cells, shape.n_genes, shape.nnz) == (300, 120, adata.X.nnz)
    assert shape.sparse and shape.value_bytes == adata.X.data.itemsize
    assert shape.x_bytes == adata.X.data.nbytes + adata.X.indices.nbytes + 301 * 8


def test_train_stops_at_once_when_the_estimate_exceeds_the_memory_limit(small_h5ad, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "50M")
    code = main(["train", str(small_h5ad), "--out", str(run_dir), "--steps", "5", "--types", "4", "--quiet"])
    line = _error_line(capsys)
    assert code == 2
    assert "needs about" in line and "0.1 GB is available (CPLMIX_MEMORY_LIMIT)" in line
    assert "--backed" in line and "torchrun" in line
    assert not run_dir.exists()  # nothing written
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "lots")
    assert main(["train", str(small_h5ad), "--out", str(run_dir), "--steps", "5", "--types", "4", "--quiet"]) == 2
    assert "CPLMIX_MEMORY_LIMIT='lots' is not a size" in _error_line(capsys)
    assert not run_dir.exists()


def test_an_estimate_within_the_limit_lets_the_run_start(small_h5ad, monkeypatch):
    estimate = memory.estimate_for_file(small_h5ad, n_genes=5000)
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, str(estimate.peak))
    memory.check_training_memory(estimate, 5000, on_gpu=False)  # exactly enough: no error
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, str(estimate.peak - 1))
    with pytest.raises(memory.CplmixError, match="needs about"):
        memory.check_training_memory(estimate, 5000, on_gpu=False)


def test_the_dense_million_cell_file_of_issue_33_is_estimated_from_a_small_files_header(tmp_path, monkeypatch):
    """A 43 %-dense simulated file's header, scaled to 10^6 cells x 2,000 genes (854 million non-zeros): read
    backed, its estimate stays below 22 GB, and a machine with 12 GB is told so before anything is loaded."""
    from cplmix_explorer.datasets import simulate

    path = tmp_path / "dense.h5ad"
    simulate(n_cells=500, n_genes=2000, n_types=40, n_classes=4, seed=3, panel_fraction=1.0).write_h5ad(path)
    small = memory.h5ad_shape(path)
    assert 0.35 < small.density < 0.5
    scaled = memory.H5adShape(1_000_000, 2000, 854_000_000, True, small.value_bytes, small.index_bytes)
    backed = memory.should_read_backed(scaled)
    estimate = memory.estimate_training_memory(scaled, 2000, backed=backed)
    assert backed and 12e9 < estimate.peak < 22e9
    monkeypatch.setenv(memory.MEMORY_LIMIT_ENV, "12G")
    with pytest.raises(memory.CplmixError, match=r"1,000,000 cells x 2,000 genes .* needs about 1\d\.\d GB"):
        memory.check_training_memory(estimate, 2000, on_gpu=False)


def test_large_files_are_read_backed_and_give_the_same_preparation(small_h5ad, monkeypatch):
    from cplmix_explorer.workflows.run import open_training_data

    config = CplMixConfig(n_types=4)
    assert not open_training_data(small_h5ad, config).isbacked  # small: in memory
    monkeypatch.setattr(memory, "BACKED_MIN_BYTES", 1000)  # this file counts as large
    backed = open_training_data(small_h5ad, config)
    assert backed.isbacked
    in_memory = prepare(read_data(small_h5ad), config)
    prepared = prepare(backed, config)
    assert (prepared.matrix != in_memory.matrix).nnz == 0
    np.testing.assert_allclose(prepared.library_size, in_memory.library_size)
    assert open_training_data(small_h5ad, config.copy(backed=False)).isbacked is False


def test_preparing_a_backed_sparse_file_never_holds_a_dense_cells_by_genes_matrix(tmp_path):
    n_cells, n_genes = 30_000, 2000
    rng = np.random.default_rng(0)
    counts = sp.random(n_cells, n_genes, density=0.03, format="csr", dtype=np.float32, random_state=rng,
                       data_rvs=lambda k: rng.integers(1, 6, k))  # about 60 counts per cell, none empty
    path = tmp_path / "sparse.h5ad"
    AnnData(X=sp.csr_matrix(counts)).write_h5ad(path)
    del counts
    adata = read_data(path, backed=True)
    tracemalloc.start()
    prepared = prepare(adata, CplMixConfig(n_genes=1000))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    dense_bytes = n_cells * 1000 * 4  # the selected genes alone, dense float32
    assert sp.issparse(prepared.matrix) and prepared.matrix.shape == (n_cells, 1000)
    assert peak < dense_bytes / 3


def test_the_estimate_knows_where_the_approximate_search_starts():
    from cplmix_explorer.model.neighbors import EXACT_MAX_CELLS

    assert memory.APPROXIMATE_ABOVE_CELLS == EXACT_MAX_CELLS  # data cannot import model: the value is repeated


def test_neighbors_read_the_rows_in_chunks():
    points = torch.randn(3 * PCA_CHUNK + 5, 30, generator=torch.Generator().manual_seed(0))
    asked = []

    def rows_of(index):
        asked.append(len(index))
        return points[index]

    search = find_neighbors(rows_of, len(points), k=5, n_components=10)
    assert max(asked) <= PCA_CHUNK and sum(asked) == 2 * len(points)  # two passes: covariance, scores
    assert search.indices.shape == (len(points), 5)


def test_atlas_benchmark_quick_mode_writes_its_table_with_the_explorers_times(tmp_path):
    out = tmp_path / "atlas_quick"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "atlas.py"), "--quick", "--sizes", "2000", "--genes", "600",
         "--types", "4", "--steps", "5", "--out", str(out)],
        capture_output=True, text=True, timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.with_suffix(".json").read_text())
    (entry,) = report["results"]
    stages = entry["train"]["stages"]
    for stage in ("read", "check + prepare", "training data", "neighbours", "leiden start", "training", "inference",
                  "result.h5ad"):
        assert stages[stage]["seconds"] >= 0 and stages[stage]["peak_rss_gib"] > 0
    assert entry["train"]["neighbours"]["method"] == "exact"
    assert entry["traverse"]["exit"] == 0
    explorer = entry["explorer"]  # the explorer opened on the run, its cell map drawn and redrawn after a zoom
    assert explorer["first_map_s"] > 0 and explorer["redraw_after_zoom_s"] > 0
    assert len(explorer["redraws_after_zoom_s"]) == 5 and min(explorer["redraws_after_zoom_s"]) > 0  # in and out
    assert "| 2,000 |" in out.with_suffix(".md").read_text()


def test_the_estimate_counts_the_latent_each_arm_keeps_per_cell_at_its_width():
    """The latent kept per cell is the state encoder's bottleneck, or with a shared state encoder the type
    encoder's, which is wider with many types: the network's own encoder gives the width the estimate counts."""
    from cplmix_explorer.config import latent_width
    from cplmix_explorer.train.engine import build_module

    shape = memory.H5adShape(100_000, 2000, 20_000_000, True, 4, 4)
    estimates = {}
    for encoder in ("separate", "shared"):
        config = CplMixConfig().update(n_types=120, n_genes=50, state_encoder=encoder)
        latent, _ = build_module(config, 50).eval().encode(torch.zeros(2, 3, 50))
        assert latent.shape[-1] == latent_width(config)
        estimates[encoder] = memory.estimate_training_memory(shape, 2000, backed=False, n_types=120,
                                                             bottleneck_dim=latent_width(config)).stages["inference"]
    assert latent_width(CplMixConfig().update(n_types=120, state_encoder="shared")) == 30
    assert estimates["shared"] - estimates["separate"] == 100_000 * 2 * (30 - 10) * 4  # float32 per arm and cell
