"""The run's 2-D cell map (analysis/embedding.py) and result.h5ad as scanpy and cellxgene users open it."""

from __future__ import annotations

import json

import anndata
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import mixture_counts
from sklearn.neighbors import NearestNeighbors

from cplmix_explorer.analysis import embedding
from cplmix_explorer.api import CplMixVAE
from cplmix_explorer.cli import main
from cplmix_explorer.data.io import read_data
from cplmix_explorer.workflows.run import load_run, write_result_file


def clusters(n_cells: int, n_types: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_types, 10)) * 6
    types = rng.integers(0, n_types, n_cells)
    return (centres[types] + rng.normal(size=(n_cells, 10))).astype(np.float32), types


def map_purity(coordinates: np.ndarray, types: np.ndarray, k: int = 15) -> np.ndarray:
    """Per cell: the fraction of its k nearest cells on the map that share its type."""
    _, neighbors = NearestNeighbors(n_neighbors=k + 1).fit(coordinates).kneighbors(coordinates)
    return (types[neighbors[:, 1:]] == types[:, None]).mean(axis=1)


def test_a_map_fitted_on_a_sample_places_the_other_cells_beside_their_own_type():
    latent, types = clusters(3000)
    cell_map = embedding.compute_map(latent, sample=600, seed=1)
    assert (cell_map.method, cell_map.cells, cell_map.sample) == ("umap", 3000, 600)
    assert cell_map.coordinates.shape == (3000, 2) and np.isfinite(cell_map.coordinates).all()
    sampled = np.zeros(3000, bool)
    sampled[np.sort(np.random.default_rng(1).choice(3000, 600, replace=False))] = True
    purity = map_purity(cell_map.coordinates, types)
    # placed cells sit among their own type as the fitted ones do (8 well separated types: both near 1)
    assert purity[~sampled].mean() > 0.95 and purity[sampled].mean() > 0.95
    again = embedding.compute_map(latent, sample=600, seed=1)
    np.testing.assert_array_equal(again.coordinates, cell_map.coordinates)


def test_pca_stays_available_and_maps_runs_too_small_for_umap():
    latent, _ = clusters(embedding.MIN_UMAP_CELLS - 1)
    small = embedding.compute_map(latent)
    assert small.method == "pca" and small.title == "PCA of types and states"
    assert embedding.compute_map(latent, method="umap_latent").title == "PCA of the latent"
    np.testing.assert_allclose(small.coordinates, embedding.pca_2d(latent))
    with pytest.raises(Exception, match="unknown map method"):
        embedding.compute_map(latent, method="tsne")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cellmap")
    data = mixture_counts(n_cells=300, n_genes=120)
    data.obs["depth"] = np.asarray(data.X.sum(axis=1)).ravel()
    data.write_h5ad(root / "cells.h5ad")
    run_dir = root / "run"
    code = main(["train", str(root / "cells.h5ad"), "--out", str(run_dir), "--steps", "100", "--types", "4",
                 "--genes", "60", "--labels", "type", "--quiet", "--seed", "1"])
    assert code == 0
    return run_dir, data


def test_result_h5ad_has_the_input_counts_and_the_map_and_scanpy_draws_it_by_type_and_gene(trained_run):
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    run_dir, data = trained_run
    result = sc.read_h5ad(run_dir / "result.h5ad")
    assert sp.issparse(result.X) and result.shape == data.shape
    assert (result.X != data.X).nnz == 0, "X holds the input's counts as read"
    assert list(result.var_names) == list(data.var_names) and result.var["cplmix_model_gene"].sum() == 60
    assert result.obsm["X_umap"].shape == (300, 2) and result.obsm["X_cplmix_latent"].shape[0] == 300
    np.testing.assert_array_equal(result.obsm["X_umap"], np.load(run_dir / "map.npy"))
    assert result.uns["cplmix"]["map"]["method"] == "umap"
    assert "unchanged" in result.uns["cplmix"]["X"]["source"]
    axes = sc.pl.umap(result, color=["cplmix_type", "gene3"], show=False)
    assert len(axes) == 2
    drawn = np.sort(np.asarray(axes[1].collections[0].get_array(), float))
    np.testing.assert_allclose(drawn, np.sort(data.X[:, 3].toarray().ravel()))  # the gene's counts, one per cell
    assert len(axes[0].collections[0].get_offsets()) == 300


def test_the_map_is_computed_once_per_model_and_again_for_new_weights(trained_run, tmp_path):
    run_dir, _ = trained_run
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    info = json.loads((copy / "map.json").read_text())
    stamp, content = (copy / "map.npy").stat().st_mtime_ns, (copy / "map.npy").read_bytes()
    model = load_run(copy)
    cell_map = model.cell_map(run_dir=copy)  # a second opening reads the kept map
    assert (copy / "map.npy").stat().st_mtime_ns == stamp and json.loads((copy / "map.json").read_text()) == info
    np.testing.assert_array_equal(cell_map.coordinates, np.load(copy / "map.npy"))
    assert cell_map.key == info["key"] and cell_map.seconds == info["seconds"]

    model.train(steps=5, progress=False)  # new weights (as after pruning or more training): a new map
    changed = model.cell_map(run_dir=copy)
    assert json.loads((copy / "map.json").read_text())["key"] == changed.key != info["key"]
    assert (copy / "map.npy").read_bytes() != content
    np.testing.assert_array_equal(np.load(copy / "map.npy"), changed.coordinates)


def test_the_default_map_is_of_types_and_states_and_keeps_each_type_together(trained_run):
    from cplmix_explorer.model.inference import types_and_states

    run_dir, _ = trained_run
    model = load_run(run_dir)
    features = types_and_states(model.module, model.device_data())
    inference = model.predict()
    n_types = model.module.n_types
    np.testing.assert_allclose(features[:, :n_types].sum(axis=1), 1.0, atol=1e-5)  # the arms' mean q(c|x)
    np.testing.assert_array_equal(features[:, :n_types].argmax(axis=1), inference.consensus_type)
    np.testing.assert_allclose(features[:, n_types:], inference.state_mean[0], atol=1e-5)
    cell_map = model.cell_map(run_dir=run_dir)
    assert cell_map.basis == "types and states" and cell_map.title == "UMAP of types and states"
    assert map_purity(cell_map.coordinates, inference.consensus_type).mean() > 0.9  # each type an island
    latent_map = model.cell_map("umap_latent")
    assert latent_map.title == "UMAP of the latent" and latent_map.key == cell_map.key
    assert not np.array_equal(latent_map.coordinates, cell_map.coordinates)
