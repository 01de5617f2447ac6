"""Bad input gets one clear line, the same through the Python API and the CLI (exit 2, no traceback, no run
folder); large inputs stay sparse and can be prepared from a backed .h5ad in row chunks."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData

from cplmix_explorer import CplMixVAE, datasets
from cplmix_explorer.config import CplMixConfig
from cplmix_explorer.data import validate
from cplmix_explorer.data.io import read_data
from cplmix_explorer.data.preprocess import prepare
from cplmix_explorer.errors import CplmixError
from cplmix_explorer.train.device_data import DeviceData

N_CELLS, N_GENES = 40, 30


def counts(n_cells: int = N_CELLS, n_genes: int = N_GENES) -> AnnData:
    """Small real-looking raw counts (CSR) with unique names and a labels column."""
    rng = np.random.default_rng(0)
    adata = AnnData(X=sp.csr_matrix(rng.poisson(3.0, (n_cells, n_genes)).astype(np.float32)))
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    adata.var_names = [f"gene{j}" for j in range(n_genes)]
    adata.obs["type"] = ["a", "b"] * (n_cells // 2)
    return adata


def with_x(values) -> AnnData:
    adata = counts()
    adata.X = values
    return adata


def dense_with(row: int, column: int, value: float) -> np.ndarray:
    values = counts().X.toarray()
    values[row, column] = value
    return values


def write(adata: AnnData, path: Path) -> Path:
    adata.write_h5ad(path)
    return path


def make_bad_input(name: str, folder: Path):
    """(DATA argument, extra CLI flags, extra API options) for one bad input."""
    good = lambda: write(counts(), folder / "good.h5ad")  # noqa: E731
    if name == "missing file":
        return folder / "missing.h5ad", [], {}
    if name == "unreadable file":
        path = folder / "damaged.h5ad"
        path.write_bytes(b"this is not HDF5" * 64)
        return path, [], {}
    if name == "truncated file":
        whole = good().read_bytes()
        path = folder / "truncated.h5ad"
        path.write_bytes(whole[: len(whole) // 3])
        return path, [], {}
    if name == "HDF5 but not AnnData":
        path = folder / "plain.h5ad"
        with h5py.File(path, "w") as handle:
            handle["values"] = np.arange(3)
        return path, [], {}
    if name == "not .h5ad":
        path = folder / "table.csv"
        path.write_text("gene,cell\n1,2\n")
        return path, [], {}
    if name == "directory":
        path = folder / "folder.h5ad"
        path.mkdir()
        return path, [], {}
    if name == "non-numeric X":
        strings = counts().X.toarray().astype(int).astype(str)
        return write(with_x(strings), folder / "strings.h5ad"), [], {}
    if name == "NaN":
        return write(with_x(dense_with(3, 4, np.nan)), folder / "nan.h5ad"), [], {}
    if name == "Inf":
        return write(with_x(sp.csr_matrix(dense_with(5, 6, np.inf))), folder / "inf.h5ad"), [], {}
    if name == "negative counts":
        return write(with_x(sp.csr_matrix(dense_with(2, 7, -3.0))), folder / "negative.h5ad"), [], {}
    if name == "zero cells":
        return write(counts()[:0].copy(), folder / "no_cells.h5ad"), [], {}
    if name == "zero genes":
        return write(counts()[:, :0].copy(), folder / "no_genes.h5ad"), [], {}
    if name == "duplicate gene names":
        adata = counts()
        adata.var_names = ["Actb", "Actb"] + list(adata.var_names[2:])
        return write(adata, folder / "duplicate_genes.h5ad"), [], {}
    if name == "duplicate cell names":
        adata = counts()
        adata.obs_names = ["cell9"] + list(adata.obs_names[1:])
        return write(adata, folder / "duplicate_cells.h5ad"), [], {}
    if name == "empty cells":
        values = counts().X.toarray()
        values[[11, 12]] = 0
        return write(with_x(sp.csr_matrix(values)), folder / "empty_cells.h5ad"), [], {}
    if name == "all cells empty":
        return write(with_x(sp.csr_matrix((N_CELLS, N_GENES), dtype=np.float32)), folder / "all_zero.h5ad"), [], {}
    if name == "unknown labels column":
        return good(), ["--labels", "cell_type"], {"labels": "cell_type"}
    if name == "more types than cells":
        return good(), ["--types", "50"], {"n_types": 50}
    if name == "unknown layer":
        return good(), ["--layer", "counts"], {"layer": "counts"}
    if name == "NB likelihood without counts":
        logged = with_x(np.log1p(counts().X.toarray()))
        return write(logged, folder / "logged.h5ad"), ["--likelihood", "nb"], {"likelihood": "nb"}
    if name == "batch gene variance with NB":
        return good(), ["--likelihood", "nb", "--gene-variance", "batch"], {"likelihood": "nb", "gene_variance": "batch"}
    if name == "marginal entropy with JointVAE":
        return (good(), ["--objective", "jointvae", "--marginal-entropy-weight", "1"],
                {"objective": "jointvae", "marginal_entropy_weight": 1.0})
    raise KeyError(name)


#: bad input -> the message (a regular expression) the user reads, through the API and the CLI
BAD_INPUTS = {
    "missing file": r"no such file or bundled dataset: '.*missing\.h5ad' \(bundled: han2018_bladder, mnist5k, synthetic, zeisel2015\)",
    "unreadable file": r"cannot read '.*damaged\.h5ad': not an HDF5 file \(damaged, truncated or another format\)",
    "truncated file": r"cannot read '.*truncated\.h5ad'",
    "HDF5 but not AnnData": r"'.*plain\.h5ad' is an HDF5 file but not an AnnData \.h5ad \(no obs or var group\)",
    "not .h5ad": r"'.*table\.csv' is not an \.h5ad file",
    "directory": r"'.*folder\.h5ad' is a directory, not an \.h5ad file",
    "non-numeric X": r"the expression matrix must be numeric, found dtype object",
    "NaN": r"the expression matrix contains NaN values \(first: cell 'cell3', gene 'gene4'\)",
    "Inf": r"the expression matrix contains Inf values \(first: cell 'cell5', gene 'gene6'\)",
    "negative counts": r"negative values where counts are expected \(first: cell 'cell2', gene 'gene7': -3\)",
    "zero cells": r"the data has no cells \(0 rows\)",
    "zero genes": r"the data has no genes \(0 columns\)",
    "duplicate gene names": r"duplicate gene names \('Actb'\); make them unique first \(adata\.var_names_make_unique\(\)\)",
    "duplicate cell names": r"duplicate cell names \('cell9'\); make them unique first \(adata\.obs_names_make_unique\(\)\)",
    "empty cells": r"2 cells without any counts \(first: 'cell11'\); pass --drop-empty-cells \(drop_empty_cells=True in Python\) to drop them",
    "all cells empty": r"every cell has zero expression",
    "unknown labels column": r"unknown labels column 'cell_type' \(obs columns: type\)",
    "more types than cells": r"more types \(50\) than cells \(40\); lower --types",
    "unknown layer": r"unknown layer 'counts' \(available layers: none\)",
    "NB likelihood without counts": r"the negative-binomial likelihood needs raw counts",
    "batch gene variance with NB": r"--gene-variance batch applies to the Gaussian likelihood only, not to --likelihood nb",
    "marginal entropy with JointVAE": r"--marginal-entropy-weight applies to the cpl-mixVAE objective only, not to --objective jointvae",
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_python_api_raises_one_line_naming_the_problem(name, tmp_path):
    source, _, options = make_bad_input(name, tmp_path)
    options = {"n_types": 2, **options}
    with pytest.raises(CplmixError) as caught:
        CplMixVAE(str(source), **options)
    message = str(caught.value)
    assert "\n" not in message
    assert re.search(BAD_INPUTS[name], message), message


#: Runs the CLI's main() for each case in one fresh interpreter (as the console script does), with the
#: default warning filters reset per case, and reports exit code and stderr; tracebacks are caught.
_CLI_DRIVER = textwrap.dedent(
    """
    import contextlib, io, json, sys, traceback, warnings
    from cplmix_explorer import cli
    results = []
    for argv in json.loads(sys.argv[1]):
        stderr = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("default", category=UserWarning)  # fresh "once per location" memory
            try:
                code = cli.main(argv)
            except SystemExit as exit:
                code = exit.code
            except BaseException:
                traceback.print_exc()
                code = "traceback"
        results.append({"code": code, "stderr": stderr.getvalue()})
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory) -> dict[str, dict]:
    """`cplmix train BAD --out D` for every bad input, run once for the module."""
    runs, outs = [], {}
    for index, name in enumerate(BAD_INPUTS):
        folder = tmp_path_factory.mktemp(f"bad{index}")
        source, flags, _ = make_bad_input(name, folder)
        outs[name] = folder / "run"
        runs.append(["train", str(source), "--out", str(outs[name]), "--steps", "2", "--types", "2", *flags])
    completed = subprocess.run(
        [sys.executable, "-c", _CLI_DRIVER, json.dumps(runs)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONWARNINGS": ""},
    )
    assert completed.returncode == 0, completed.stderr
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    return {name: {**result, "out": outs[name]} for name, result in zip(BAD_INPUTS, results)}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_cli_exits_2_with_one_error_line_and_writes_nothing(name, cli_results):
    result = cli_results[name]
    lines = result["stderr"].splitlines()
    assert result["code"] == 2, result["stderr"]
    assert len(lines) == 1 and lines[0].startswith("cplmix: error: "), result["stderr"]
    assert re.search(BAD_INPUTS[name], lines[0]), lines[0]
    assert not result["out"].exists()


def test_the_console_script_itself_prints_one_line_and_exits_2(tmp_path):
    source, _, _ = make_bad_input("duplicate gene names", tmp_path)
    script = Path(sys.executable).with_name("cplmix")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cplmix_explorer.cli"]
    completed = subprocess.run([*command, "train", str(source), "--out", str(tmp_path / "run")],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [
        "cplmix: error: duplicate gene names ('Actb'); make them unique first (adata.var_names_make_unique())"
    ]
    assert not (tmp_path / "run").exists()


def test_empty_genes_are_reported_as_a_warning_and_training_goes_on(tmp_path):
    adata = counts()
    values = adata.X.toarray()
    values[:, [3, 8]] = 0
    adata.X = sp.csr_matrix(values)
    with pytest.warns(UserWarning, match=r"^2 genes without any non-zero value \(first: 'gene3'\)"):
        model = CplMixVAE(adata, n_types=2)
    model.train(steps=2, progress=False)
    assert model.step == 2


def test_bool_and_integer_matrices_are_accepted_as_numeric():
    summary = validate.validate_anndata(with_x(counts().X.toarray().astype(np.int64)))
    assert summary.is_counts
    assert not validate.validate_anndata(with_x(counts().X.toarray() > 2)).has_negative


def test_transformed_data_with_negative_values_is_used_as_it_is():
    scaled = counts().X.toarray()
    scaled = (scaled - scaled.mean(0)) / scaled.std(0)
    prepared = prepare(with_x(scaled), CplMixConfig(n_types=2))
    assert prepared.preprocessing.transform == "none" and prepared.matrix.min() < 0


# -- large inputs --------------------------------------------------------------------------------------------
def test_sparse_input_stays_sparse_until_a_batch_is_densified():
    adata = datasets.simulate(n_cells=500, n_genes=400, n_types=4, n_classes=2, markers_per_type=10,
                              markers_per_class=10, n_ieg=20, n_hkg=40, seed=1)
    prepared = prepare(adata, CplMixConfig(n_types=4, n_genes=200))
    assert sp.isspmatrix_csr(prepared.matrix) and prepared.matrix.shape == (500, 200)
    device_data = DeviceData(prepared, torch.device("cpu"))
    assert device_data.sparse and device_data.values.numel() == prepared.matrix.nnz + 1  # CSR arrays, not dense
    rows = torch.tensor([0, 17, 499])
    batch = device_data.gather(rows)
    assert batch.shape == (3, 200) and batch.layout == torch.strided
    expected = prepared.model_input(rows.numpy())
    np.testing.assert_allclose(batch.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["csr", "dense"])
def test_backed_h5ad_is_prepared_in_row_chunks_like_the_in_memory_file(layout, tmp_path, monkeypatch):
    adata = datasets.simulate(n_cells=3000, n_genes=1200, n_types=6, n_classes=2, markers_per_type=20,
                              markers_per_class=20, n_ieg=40, n_hkg=100, seed=4)
    if layout == "dense":
        adata.X = adata.X.toarray()
    path = tmp_path / f"large_{layout}.h5ad"
    adata.write_h5ad(path)
    stored_bytes = adata.X.nnz * 8 if layout == "csr" else adata.X.size * 4  # X whole: float32 values (+ int32 indices)
    config = CplMixConfig(n_types=6, n_genes=100)
    in_memory = prepare(anndata.read_h5ad(path), config)

    monkeypatch.setattr(validate, "_CHUNK_ROWS", 60)
    backed = read_data(path, backed=True)
    assert backed.isbacked
    tracemalloc.start()
    try:
        prepared = prepare(backed, config)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert prepared.genes == in_memory.genes and prepared.preprocessing.gene_selection == "seurat_dispersion"
    np.testing.assert_allclose(prepared.library_size, in_memory.library_size)
    if layout == "csr":
        assert sp.isspmatrix_csr(prepared.matrix) and (prepared.matrix != in_memory.matrix).nnz == 0
    else:
        np.testing.assert_array_equal(prepared.matrix, in_memory.matrix)
    # X was never in memory whole: the peak (including the prepared 100 genes) stays well under X's size
    assert peak < 0.4 * stored_bytes, (peak, stored_bytes)
