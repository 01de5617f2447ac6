"""Neighbor copies (augment='neighbors'): the neighbors are the nearest cells, copies come from a cell's
own neighborhood (so they keep its type), and a real training run uses them."""

import numpy as np
import pytest
import torch

from cplmix_explorer.api import CplMixVAE
from cplmix_explorer.model.augment import resolve_auto
from cplmix_explorer.model.neighbors import NeighborAugmenter, find_neighbors, nearest_neighbors, search_method


def _two_clouds(n: int = 60, genes: int = 20) -> tuple[torch.Tensor, np.ndarray]:
    generator = torch.Generator().manual_seed(0)
    group = np.arange(n) % 2
    centres = torch.zeros(2, genes)
    centres[1] += 10.0
    points = centres[group] + torch.randn(n, genes, generator=generator)
    return points, group


def test_nearest_neighbors_are_the_closest_other_cells():
    points, group = _two_clouds()
    neighbors = nearest_neighbors(points, k=5, n_components=20)
    assert neighbors.shape == (60, 5)
    assert not (neighbors == torch.arange(60)[:, None]).any()  # never the cell itself
    distance = torch.cdist(points, points)
    distance.fill_diagonal_(float("inf"))
    exact = distance.topk(5, dim=1, largest=False).indices
    assert torch.equal(neighbors.sort(dim=1).values, exact.sort(dim=1).values)
    assert (group[neighbors.numpy()] == group[:, None]).all()  # within its own cloud


def test_each_arm_sees_the_cell_or_one_of_its_neighbors():
    points, group = _two_clouds()
    rows = torch.arange(0, 60, 2)  # only these rows are neighbors (the training rows)
    augmenter = NeighborAugmenter(k=4, walk_steps=1).fit(points[rows], rows, n_data=60)
    torch.manual_seed(0)
    index = torch.arange(60)
    seen = augmenter.source_rows(index, n_arms=3)
    assert seen.shape == (3, 60)
    allowed = augmenter.table[index]  # (60, 5): the cell and its neighbors
    assert (seen.T.unsqueeze(-1) == allowed.unsqueeze(1)).any(-1).all()
    assert torch.equal(augmenter.table[1::2, 0], torch.arange(1, 60, 2))  # rows outside map to themselves
    assert (augmenter.table[1::2] == torch.arange(1, 60, 2)[:, None]).all()
    assert (seen[:, rows] != rows).any()  # neighbors are really drawn, not only the cell
    assert (group[seen.numpy()] == group[None, :]).all()  # copies keep the type


def test_walks_travel_further_than_one_hop_and_stay_in_their_group():
    points, group = _two_clouds(n=200)
    rows = torch.arange(200)
    one_hop = NeighborAugmenter(k=4, walk_steps=1).fit(points, rows, n_data=200)
    walk = NeighborAugmenter(k=4, walk_steps=5).fit(points, rows, n_data=200)
    torch.manual_seed(0)
    seen = walk.source_rows(rows, n_arms=2)
    table = walk.table
    reachable = torch.zeros(200, 200, dtype=torch.bool)
    reachable[rows[:, None], table] = True
    within = reachable.clone()
    for _ in range(4):  # cells reachable in at most five hops
        within = within | ((within.float() @ reachable.float()) > 0)
    assert within[rows, seen].all()  # every copy is the end of a walk on the graph
    assert (~reachable[rows, seen]).float().mean() > 0.3  # many are further than one hop
    assert (group[seen.numpy()] == group[None, :]).all()  # and keep the group
    assert reachable[rows, one_hop.source_rows(rows, n_arms=2)].all()  # one hop: never further


def test_neighbor_copies_of_real_cortex_cells_keep_their_class(zeisel):
    # a real run: the trainer finds the neighbors of the training cells and trains on their copies
    model = CplMixVAE(zeisel, n_types=7, n_arms=2, augment="neighbors", neighbor_steps=3, steps=20, n_genes=1000,
                      seed=0, device="cpu")
    model.train(progress=False)
    assert model.augment_used == "neighbors"
    trainer = model.make_trainer()
    assert trainer.augmenter.walk_steps == 3  # the option reaches the augmenter
    rows = trainer.train_rows.numpy()
    table = trainer.augmenter.table.numpy()
    labels = zeisel.obs["class"].to_numpy()
    same_class = (labels[table[rows, 1:]] == labels[rows, None]).mean()
    assert same_class >= 0.85  # the published classes of a cell's copies are (almost always) its own
    validation = np.setdiff1d(np.arange(zeisel.n_obs), rows)
    assert not np.isin(table[rows], validation).any()  # held-out cells are never shown to training


def test_neighbor_copies_train_the_negative_binomial_model_on_raw_counts():
    from conftest import mixture_counts

    # count data stay raw on the device for the NB likelihood: each copy brings its own library size
    model = CplMixVAE(mixture_counts(n_cells=300, n_genes=80), n_types=4, n_arms=2, augment="neighbors",
                      likelihood="nb", steps=30, batch_size=64, hidden_dim=32, n_hidden_layers=2, seed=0, device="cpu")
    trainer = model.make_trainer()
    assert trainer.data.holds_counts
    index = trainer.train_rows[:8]
    torch.manual_seed(0)
    x, target, library, depth, source = trainer._arm_inputs(index)
    torch.manual_seed(0)
    rows = trainer.augmenter.source_rows(index, 2, step=trainer._step_counter)
    assert torch.equal(source, rows)  # the rows each arm's copies come from
    assert torch.equal(target, trainer.data.gather(rows.reshape(-1)).view(2, 8, -1))  # the neighbors' counts
    assert torch.equal(x, trainer.data.model_input(rows.reshape(-1)).view(2, 8, -1))  # normalised by their own library
    assert torch.equal(library, target.sum(dim=-1, keepdim=True))
    result = model.train(progress=False)
    assert result.step == 30 and np.isfinite(result.history_values).all()


def _reachable_in_one_hop(table: torch.Tensor) -> torch.Tensor:
    n = table.shape[0]
    reachable = torch.zeros(n, n, dtype=torch.bool)
    reachable[torch.arange(n)[:, None], table] = True
    return reachable


def test_walks_start_at_one_hop_and_grow_to_their_length_over_the_ramp():
    points, group = _two_clouds(n=200)
    rows = torch.arange(200)
    walk = NeighborAugmenter(k=4, walk_steps=5, ramp_steps=100).fit(points, rows, n_data=200)
    assert [walk.hops_at(step) for step in (0, 24, 25, 50, 99, 100, 10_000)] == [1, 1, 2, 3, 4, 5, 5]
    assert [int(walk.hops_at(torch.tensor(step))) for step in (0, 50, 100, 10_000)] == [1, 3, 5, 5]  # device form
    assert NeighborAugmenter(walk_steps=5, ramp_steps=0).hops_at(0) == 5  # no ramp: full length at once
    reachable = _reachable_in_one_hop(walk.table)
    torch.manual_seed(0)
    first = walk.source_rows(rows, n_arms=2, step=torch.tensor(0))
    assert reachable[rows, first].all()  # the first steps: the cell or a direct neighbor
    torch.manual_seed(0)
    late = walk.source_rows(rows, n_arms=2, step=torch.tensor(100))
    assert (~reachable[rows, late]).float().mean() > 0.3  # after the ramp: the full walks
    assert (group[late.numpy()] == group[None, :]).all()


def test_auto_gives_expression_data_neighbor_walks_when_there_are_arms_to_couple(mixture):
    coupled = CplMixVAE(mixture, n_types=4, n_arms=2, labels="type", seed=0, device="cpu")
    coupled.train(steps=300, progress=False)
    assert coupled.augment_used == "neighbors"  # recorded in the run (metrics.json 'augment', uns['cplmix'])
    assert coupled.evaluate()["acc"] >= 0.9  # well-separated types are all found with the default
    single = CplMixVAE(mixture, n_types=4, n_arms=1, seed=0, device="cpu")
    single.train(steps=5, progress=False)
    assert single.augment_used == "none"  # one arm has nothing to agree with
    assert resolve_auto(None, 2) == "neighbors"  # at any size: no size where the method changes
    assert resolve_auto((28, 28), 2) == "neighbors"  # coupled arms see other digits of the neighborhood
    assert resolve_auto((28, 28), 1) == "affine"  # one arm keeps its warps


def test_default_walk_length_depends_on_the_data_kind():
    """Unset neighbor_steps: a direct neighbor for expression data (longer walks leave small types, so the arms
    see different types), two hops among images (one more warp-like step, still within the digit)."""
    from cplmix_explorer.config import NEIGHBOR_STEPS_EXPRESSION, NEIGHBOR_STEPS_IMAGES
    from cplmix_explorer.model.augmenters import make_augmenter

    common = dict(is_counts=False, strength=0.1, n_arms=2)
    expression, _ = make_augmenter("auto", image_shape=None, **common)
    images, name = make_augmenter("auto", image_shape=(28, 28), **common)
    chosen, _ = make_augmenter("neighbors", image_shape=(28, 28), neighbor_steps=4, **common)
    assert name == "neighbors"
    assert (expression.walk_steps, images.walk_steps, chosen.walk_steps) == (
        NEIGHBOR_STEPS_EXPRESSION, NEIGHBOR_STEPS_IMAGES, 4
    )
    assert NEIGHBOR_STEPS_EXPRESSION == 1 < NEIGHBOR_STEPS_IMAGES


def test_approximate_neighbors_agree_with_exact_ones_on_simulated_cells():
    """pynndescent (the CPU search above EXACT_MAX_CELLS) finds at least 90 % of the exact 15 neighbors of
    simulated cells, and the recall it records is the one measured here against the exact search."""
    from cplmix_explorer.data.preprocess import prepare
    from cplmix_explorer.datasets import simulate

    prepared = prepare(simulate(n_cells=3000, n_genes=600, n_types=8, n_classes=2, markers_per_type=10,
                                markers_per_class=10, n_ieg=40, n_hkg=80, seed=2))
    points = torch.as_tensor(prepared.model_input())
    rows_of = lambda index: points[index]  # noqa: E731
    exact = find_neighbors(rows_of, 3000, method="exact")
    approximate = find_neighbors(rows_of, 3000, method="pynndescent", seed=1)
    assert exact.method == "exact" and exact.recall == 1.0
    assert approximate.method == "pynndescent" and approximate.checked_cells == 1000
    assert approximate.indices.shape == (3000, 15)
    assert not (approximate.indices == torch.arange(3000)[:, None]).any()  # never the cell itself
    found = (approximate.indices.unsqueeze(-1) == exact.indices.unsqueeze(1)).any(-1).float().mean(dim=1)
    assert found.mean() >= 0.9
    sample = np.sort(np.random.default_rng(1).choice(3000, 1000, replace=False))
    assert approximate.recall == pytest.approx(float(found[sample].mean()), abs=1e-6)
    assert approximate.summary()["method"] == "pynndescent" and approximate.summary()["recall"] >= 0.9


def test_the_approximate_graph_is_the_same_whatever_the_machines_threads():
    """The same seed gives the same approximate neighbors, and so the same start, on a machine of one core or
    many: pynndescent splits its work by numba's thread count, which would change the graph."""
    import numba

    from cplmix_explorer.model.neighbors import approximate_neighbors

    most = numba.config.NUMBA_NUM_THREADS
    if most < 2:
        pytest.skip("numba has one thread here: no other thread count to compare with")
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 20)).astype(np.float32) * 2
    points = (centers[rng.integers(0, 20, 3000)] + rng.normal(size=(3000, 20))).astype(np.float32)
    before = numba.get_num_threads()
    tables = []
    try:
        for threads in (1, most):
            numba.set_num_threads(threads)
            tables.append(approximate_neighbors(points, 15, seed=0))
            assert numba.get_num_threads() == threads  # the caller's setting is left as it was
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(tables[0], tables[1])


def test_search_is_exact_on_small_data_and_on_cuda_and_approximate_above():
    from cplmix_explorer.model.neighbors import EXACT_MAX_CELLS

    assert search_method(EXACT_MAX_CELLS, "cpu") == "exact"
    assert search_method(EXACT_MAX_CELLS + 1, "cpu") == "pynndescent"
    assert search_method(10 * EXACT_MAX_CELLS, "cuda") == "exact"


def test_a_run_records_which_neighbor_search_it_used(mixture, tmp_path):
    import json

    from cplmix_explorer.config import CplMixConfig
    from cplmix_explorer.workflows.run import train_run

    config = CplMixConfig(n_types=4, n_arms=2, steps=5, type_init_steps=5, device="cpu")
    train_run(mixture, tmp_path / "run", config, progress=False)
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())["neighbours"]
    assert recorded["method"] == "exact" and recorded["recall"] == 1.0 and recorded["neighbours"] == 15
    assert recorded["cells"] == 540  # every training cell (600 less the 10 % held out)
