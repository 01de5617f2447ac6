"""The simulator's ground truth: shapes and names, imbalanced abundances, marker programs, a type-dependent
IEG response to the activity state, HKG following the metabolic state, determinism and chunking."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import spearmanr

from cplmix_explorer import datasets
from cplmix_explorer.data.simulate import RNG_BLOCK_CELLS, geometric_sizes, hkg_symbols, ieg_symbols
from cplmix_explorer.errors import CplmixError


@pytest.fixture(scope="module")
def simulated() -> anndata.AnnData:
    return datasets.simulate(seed=3)


def log_normalized(adata) -> np.ndarray:
    counts = adata.X.toarray()
    return np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)


def program_score(adata, program: str) -> np.ndarray:
    """(cells,) mean log-normalised expression over the genes of one program."""
    return log_normalized(adata)[:, (adata.var["program"] == program).to_numpy()].mean(axis=1)


def test_outputs_have_documented_shapes_names_and_columns(simulated):
    adata = simulated
    assert adata.shape == (3000, 1500)
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    assert np.array_equal(adata.X.data, np.round(adata.X.data)) and adata.X.data.min() > 0
    assert adata.obs_names.is_unique and adata.var_names.is_unique
    assert isinstance(adata.obs["true_type"].dtype, pd.CategoricalDtype)
    assert list(adata.obs["true_type"].cat.categories) == [f"T{k:02d}" for k in range(1, 11)]
    assert set(adata.obs["true_class"]) == {"C1", "C2", "C3"}
    assert adata.obsm["true_state"].shape == (3000, 2)
    for j in range(2):
        np.testing.assert_array_equal(adata.obs[f"true_state_{j}"].to_numpy(), adata.obsm["true_state"][:, j])
    assert set(adata.var["program"].cat.categories) == {"marker", "ieg", "hkg", "background"}
    programs = adata.var["program"].value_counts()
    assert programs["ieg"] == 80 and programs["hkg"] == 200 and programs["marker"] == 10 * 20 + 3 * 30
    markers = adata.var[adata.var["program"] == "marker"]
    assert set(markers["marker_of"]) == set(adata.obs["true_type"]) | set(adata.obs["true_class"])
    assert (adata.var.loc[adata.var["program"] != "marker", "marker_of"] == "").all()


def test_ieg_and_hkg_genes_carry_real_mouse_symbols_from_the_shipped_gene_sets(simulated):
    var = simulated.var
    assert set(var.index[var["program"] == "ieg"]) <= set(ieg_symbols())
    assert set(var.index[var["program"] == "hkg"]) <= set(hkg_symbols())
    assert {"Fos", "Arc", "Egr1", "Npas4"} & set(ieg_symbols()) == {"Fos", "Arc", "Egr1", "Npas4"}
    synthetic = var.index[var["program"].isin(["marker", "background"])]
    assert all(name.startswith(("Sim-marker-", "Sim-bg-")) for name in synthetic)


def test_simulation_parameters_are_recorded_and_survive_h5ad(simulated, tmp_path):
    info = simulated.uns["simulation"]
    assert info["seed"] == 3 and info["state_programs"] == ["ieg", "hkg"]
    assert set(info["gains"]) == set(simulated.obs["true_type"].cat.categories)
    counts = simulated.obs["true_type"].value_counts()
    assert all(counts[name] == size for name, size in info["type_sizes"].items())
    path = tmp_path / "sim.h5ad"
    simulated.write_h5ad(path)
    back = anndata.read_h5ad(path)
    assert (back.X != simulated.X).nnz == 0
    np.testing.assert_allclose(np.asarray(back.uns["simulation"]["gains"]["T01"]), info["gains"]["T01"])


def test_type_abundances_are_strongly_imbalanced():
    sizes = geometric_sizes(2600, 12, abundance_ratio=200)
    assert sizes.sum() == 2600 and np.all(np.diff(sizes) <= 0)
    assert 5 <= sizes.min() <= 7 and 950 <= sizes.max() <= 1000  # "5 to 1,000 cells per type"
    adata = datasets.simulate(n_cells=2600, n_genes=800, n_types=12, abundance_ratio=200, markers_per_type=10,
                              markers_per_class=10, n_ieg=40, n_hkg=100, seed=1)
    observed = adata.obs["true_type"].value_counts().sort_index().to_numpy()
    np.testing.assert_array_equal(observed, sizes)


def test_defaults_are_imbalanced_but_keep_the_smallest_type_learnable(simulated):
    counts = simulated.obs["true_type"].value_counts()
    assert counts.max() / counts.min() > 20 and counts.min() >= 25


def test_marker_programs_mark_their_type_or_class(simulated):
    expression = log_normalized(simulated)
    types = simulated.obs["true_type"].to_numpy()
    classes = simulated.obs["true_class"].to_numpy()
    var = simulated.var
    for name in simulated.obs["true_type"].cat.categories:
        genes = (var["marker_of"] == name).to_numpy()
        inside = expression[types == name][:, genes].mean()
        outside = expression[types != name][:, genes].mean()
        assert inside > outside + 1.0, name
    for name in ("C1", "C2", "C3"):
        genes = (var["marker_of"] == name).to_numpy()
        per_type = pd.Series(expression[:, genes].mean(axis=1)).groupby(types).mean()
        members = set(types[classes == name])
        assert per_type[list(members)].min() > per_type.drop(list(members)).max() + 0.5, name


def test_ieg_program_follows_activity_with_each_types_gain_sign(simulated):
    info = simulated.uns["simulation"]
    score = program_score(simulated, "ieg")
    activity = simulated.obs["true_state_0"].to_numpy()
    types = simulated.obs["true_type"].to_numpy()
    gains = {name: g[0] for name, g in info["gains"].items()}
    assert any(g == 0 for g in gains.values()) and any(g < 0 for g in gains.values()) and any(g > 0 for g in gains.values())
    for name, gain in gains.items():
        inside = types == name
        rho = spearmanr(score[inside], activity[inside])[0]
        if gain == 0:
            assert inside.sum() >= 100 and abs(rho) < 0.2, (name, rho)
        else:
            assert np.sign(rho) == np.sign(gain) and abs(rho) > 0.6, (name, gain, rho)


def test_hkg_program_follows_the_second_state_in_every_type(simulated):
    score = program_score(simulated, "hkg")
    metabolic = simulated.obs["true_state_1"].to_numpy()
    types = simulated.obs["true_type"].to_numpy()
    for name in np.unique(types):
        inside = types == name
        assert spearmanr(score[inside], metabolic[inside])[0] > 0.7, name
    # log fold change, high against low metabolic state: large for HKG, small for the other programs (only
    # the compositional shift of library-size normalisation) and none for HKG along the activity state
    expression = log_normalized(simulated)
    high, low = metabolic > 2 / 3, metabolic < 1 / 3
    fold = {p: (expression[high][:, g].mean() - expression[low][:, g].mean())
            for p, g in ((p, (simulated.var["program"] == p).to_numpy()) for p in ("hkg", "background", "marker"))}
    assert fold["hkg"] > 0.5 and abs(fold["background"]) < 0.25 * fold["hkg"] and abs(fold["marker"]) < 0.25 * fold["hkg"]
    activity = simulated.obs["true_state_0"].to_numpy()
    assert abs(spearmanr(score, activity)[0]) < 0.2


def test_library_sizes_vary_and_dropout_only_removes_counts():
    options = dict(n_cells=600, n_genes=600, n_types=4, n_classes=2, markers_per_type=10, markers_per_class=10,
                   n_ieg=20, n_hkg=50, seed=5)
    with_dropout = datasets.simulate(**options)
    without = datasets.simulate(**options, dropout_midpoint=None)
    totals = np.asarray(without.X.sum(axis=1)).ravel()
    assert totals.std() / totals.mean() > 0.2
    # the same negative-binomial draws, some of them set to zero: every kept count is unchanged
    assert (with_dropout.X != without.X.multiply(with_dropout.X > 0)).nnz == 0
    removed = without.X.nnz - with_dropout.X.nnz
    assert removed > 0.01 * without.X.nnz


def test_same_seed_same_data_other_seed_other_data():
    options = dict(n_cells=400, n_genes=500, n_types=4, n_classes=2, markers_per_type=10, markers_per_class=10,
                   n_ieg=20, n_hkg=40)
    first, again, other = (datasets.simulate(**options, seed=s) for s in (11, 11, 12))
    assert (first.X != again.X).nnz == 0
    pd.testing.assert_frame_equal(first.obs, again.obs)
    pd.testing.assert_frame_equal(first.var, again.var)
    assert (first.X != other.X).nnz > 0
    assert not np.array_equal(first.obsm["true_state"], other.obsm["true_state"])


def test_chunked_generation_equals_one_shot_generation():
    options = dict(n_cells=2 * RNG_BLOCK_CELLS + 300, n_genes=400, n_types=5, n_classes=None, markers_per_type=10,
                   n_ieg=20, n_hkg=40, seed=7)
    one_shot = datasets.simulate(**options, chunk_size=10**6)
    chunked = datasets.simulate(**options, chunk_size=RNG_BLOCK_CELLS)
    assert (one_shot.X != chunked.X).nnz == 0
    assert one_shot.X.has_sorted_indices and chunked.X.has_sorted_indices
    pd.testing.assert_frame_equal(one_shot.obs, chunked.obs)


def test_flat_types_and_explicit_gains_and_more_state_dimensions():
    gains = np.array([[0.0, 1.0, 2.0], [3.0, 1.0, -2.0], [-3.0, 1.0, 0.0]])
    adata = datasets.simulate(n_cells=300, n_genes=300, n_types=3, n_classes=None, state_dim=3, gains=gains,
                              markers_per_type=10, n_ieg=20, n_hkg=40, seed=2)
    assert "true_class" not in adata.obs and adata.obsm["true_state"].shape == (300, 3)
    assert adata.uns["simulation"]["state_programs"] == ["ieg", "hkg", "ieg"]
    assert adata.uns["simulation"]["gains"]["T02"] == [3.0, 1.0, -2.0]
    assert adata.uns["simulation"]["responsive"]["T01"] == [False, True, True]
    assert set(adata.var["marker_of"]) == {"", "T01", "T02", "T03"}


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(n_cells=5, n_types=10), "n_cells (5) must be at least n_types (10)"),
        (dict(n_genes=100), "n_genes (100) is smaller than the programs need"),
        (dict(n_ieg=500), "n_ieg must be between 1 and 139"),
        (dict(n_classes=20), "n_classes must be between 0 and n_types"),
        (dict(gains=[[1.0, 1.0]]), "gains must be a finite (n_types, state_dim) = (10, 2) array"),
        (dict(type_sizes=[5, 5]), "type_sizes must list one size per type (10)"),
        (dict(abundance_ratio=0.5), "abundance_ratio must be >= 1"),
    ],
)
def test_bad_arguments_raise_one_clear_error(options, message):
    with pytest.raises(CplmixError, match=r"^simulate: ") as caught:
        datasets.simulate(**options)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_state_recovery_scores_the_true_state_perfectly_and_noise_poorly(simulated):
    from cplmix_explorer.data.simulate import state_recovery

    truth = simulated.obsm["true_state"]
    perfect = state_recovery(simulated, truth[:, ::-1])  # dimension order does not matter
    assert np.allclose(perfect["best_abs_rho"], 1.0)
    unresponsive = [name for name, flags in simulated.uns["simulation"]["responsive"].items() if not flags[0]]
    assert perfect.loc[unresponsive, "abs_rho_state_0"].isna().all()  # no activity response: not scored
    noise = np.random.default_rng(0).normal(size=(2, simulated.n_obs, 2))
    scored = state_recovery(simulated, noise)
    assert scored.loc[scored["n_cells"] >= 100, "best_abs_rho"].max() < 0.3
