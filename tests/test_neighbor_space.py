"""The space the neighbor graph is found in: standardised genes for expression data, so that small types keep
their own cells as neighbors (what the walks and the Leiden start rely on)."""

import numpy as np
import torch

from cplmix_explorer import CplMixVAE, datasets
from cplmix_explorer.model.neighbors import standardized


def test_standardized_genes_have_zero_mean_unit_variance_and_are_clipped():
    generator = torch.Generator().manual_seed(0)
    points = torch.cat([torch.randn(500, 3, generator=generator) * torch.tensor([1.0, 5.0, 0.1]) + 3.0,
                        torch.zeros(500, 1)], dim=1)  # the last gene is constant
    points[0, 0] = 1e4  # one extreme value
    out = standardized(lambda index: points[index], len(points))(torch.arange(len(points)))
    assert out[:, 1:3].mean(dim=0).abs().max() < 1e-4
    assert torch.allclose(out[:, 1:3].std(dim=0), torch.ones(2), atol=1e-3)
    assert out.abs().max() <= 10.0 and out[0, 0] == 10.0
    assert torch.equal(out[:, 3], torch.zeros(500))


def _small_type_neighbor_share(adata, scaled: bool) -> float:
    """Share of the small types' (< 60 cells) graph neighbors that are of their own type."""
    types = np.asarray(adata.obs["true_type"].cat.codes)
    small = np.bincount(types)[types] < 60
    model = CplMixVAE(adata, n_types=12, n_arms=2, augment="neighbors", neighbor_scale_genes=scaled, seed=0)
    trainer = model.make_trainer()
    rows = trainer.train_rows.cpu().numpy()
    neighbors = trainer.augmenter.table.cpu().numpy()[rows, 1:]
    same = types[neighbors] == types[rows, None]
    return float(same[small[rows]].mean())


def test_small_types_keep_more_of_their_own_cells_as_neighbors_with_standardized_genes():
    sizes = [int(round(x)) for x in np.geomspace(400, 20, 12)]  # 400 down to 20 cells
    adata = datasets.simulate(n_genes=1000, n_types=12, n_classes=3, type_sizes=sizes, seed=5)
    unscaled = _small_type_neighbor_share(adata, scaled=False)
    scaled = _small_type_neighbor_share(adata, scaled=True)
    assert scaled > unscaled + 0.03  # measured 0.90 against 0.84 (exact PCA, 15 neighbors)


def _counts_of_three_types(seed: int):
    """Raw counts of three types that differ by 3-fold on a tenth of 300 genes, at depths spread 1-sigma
    log-normally around 300 counts (few cells of any type detect most genes)."""
    import anndata
    import scipy.sparse as sp

    generator = np.random.default_rng(seed)
    base = generator.lognormal(0.0, 1.0, 300)
    profiles = np.stack([base * np.where(generator.random(300) < 0.1, 3.0, 1.0) for _ in range(3)])
    profiles /= profiles.sum(axis=1, keepdims=True)
    types = np.repeat(np.arange(3), 400)
    depth = generator.lognormal(np.log(300.0), 1.0, types.size)
    adata = anndata.AnnData(sp.csr_matrix(generator.poisson(profiles[types] * depth[:, None]).astype(np.float32)))
    adata.var_names = [f"g{i}" for i in range(300)]
    return adata, types


def _low_depth_neighbor_share(adata, types, **options) -> float:
    """Share of the graph neighbors of the quarter of training cells with the fewest counts that are of their
    own type."""
    trainer = CplMixVAE(adata, n_types=3, n_arms=2, augment="neighbors", seed=0, **options).make_trainer()
    rows = trainer.train_rows
    depth = trainer.data.library_of(rows).cpu().numpy()
    rows = rows.cpu().numpy()
    neighbors = trainer.augmenter.table.cpu().numpy()[rows, 1:]
    same = types[neighbors] == types[rows, None]
    return float(same[depth < np.quantile(depth, 0.25)].mean())


def test_low_depth_cells_keep_their_own_type_as_neighbors_with_counts_scaled_to_the_median_cell():
    # scaled to 10^4, a cell of a few hundred counts shows mostly which genes it detected, and cells of low depth
    # become each other's neighbors whatever their type
    for seed in (0, 1):
        adata, types = _counts_of_three_types(seed)
        at_median = _low_depth_neighbor_share(adata, types)
        at_ten_thousand = _low_depth_neighbor_share(adata, types, neighbor_target_sum=1e4)
        assert at_median > at_ten_thousand + 0.1  # measured 0.82 / 0.83 against 0.62 / 0.63 (low-depth quarter)


def test_the_graph_of_counts_is_their_log_at_the_median_total_and_the_model_input_keeps_its_own():
    import scipy.sparse as sp

    adata, _ = _counts_of_three_types(0)
    trainer = CplMixVAE(adata, n_types=3, seed=0, neighbor_scale_genes=False).make_trainer()
    rows = trainer.train_rows
    counts = sp.csr_matrix(adata.X)[rows.cpu().numpy()].toarray()
    totals = counts.sum(axis=1, keepdims=True)
    median = float(np.median(totals))
    first = torch.arange(50)
    graph = trainer._graph_input(rows)(first).numpy()
    assert np.allclose(graph, np.log1p(counts[:50] / totals[:50] * median), atol=1e-4)
    model_input = trainer.data.model_input(rows[first]).cpu().numpy()
    assert np.allclose(model_input, np.log1p(counts[:50] / totals[:50] * 1e4), atol=1e-4)
    fixed = CplMixVAE(adata, n_types=3, seed=0, neighbor_scale_genes=False, neighbor_target_sum=1e4).make_trainer()
    assert np.allclose(fixed._graph_input(rows)(first).numpy(), model_input, atol=1e-4)
    # another total for the model input (--target-sum) leaves the graph at the median
    other = CplMixVAE(adata, n_types=3, seed=0, neighbor_scale_genes=False, target_sum=2000.0).make_trainer()
    assert np.allclose(other.data.model_input(rows[first]).cpu().numpy(),
                       np.log1p(counts[:50] / totals[:50] * 2000.0), atol=1e-4)
    assert np.allclose(other._graph_input(rows)(first).numpy(), graph, atol=1e-4)
