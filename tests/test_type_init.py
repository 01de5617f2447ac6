"""Where the categories start: the Leiden partition of the neighbor graph and the warm-up that fits the type
heads to it (cplmix_explorer.model.type_init, Trainer.prepare_type_init)."""

import math

import numpy as np
import scipy.sparse as sp
import torch
from conftest import mixture_counts

from cplmix_explorer import CplMixVAE
from cplmix_explorer.analysis.metrics import compare_to_labels
from cplmix_explorer.model.neighbors import nearest_neighbors
from cplmix_explorer.model.type_init import (
    RESOLUTION_RANGE,
    LeidenGraph,
    leiden_partition,
    merge_by_shared_edges,
    merge_smallest,
    most_reproduced,
    neighbor_graph,
    next_resolution,
    relabel_by_size,
    start_partition,
    targets_from_any_run,
    targets_where_runs_agree,
)


def _blobs(sizes, dim=10, spread=0.3, seed=0):
    """Points of well-separated Gaussian groups and each point's group."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 10.0, size=(len(sizes), dim))
    group = np.repeat(np.arange(len(sizes)), sizes)
    points = centres[group] + rng.normal(0.0, spread, size=(len(group), dim))
    return torch.as_tensor(points, dtype=torch.float32), group


def test_leiden_partition_finds_separated_groups_of_very_different_sizes():
    points, group = _blobs([400, 120, 40, 15])
    partition = leiden_partition(nearest_neighbors(points, 10).numpy(), 4, seed=0)
    assert partition.n_types == 4
    assert compare_to_labels(partition.labels, group)["ari"] == 1.0  # every group whole, the 15-point one too
    assert np.bincount(partition.labels).tolist() == [400, 120, 40, 15]  # category 0 is the largest
    again = leiden_partition(nearest_neighbors(points, 10).numpy(), 4, seed=0)
    assert np.array_equal(partition.labels, again.labels)


def test_fewer_types_than_groups_merges_whole_groups():
    points, group = _blobs([100] * 6)
    partition = leiden_partition(nearest_neighbors(points, 10).numpy(), 3, seed=1)
    assert partition.n_types == 3
    for g in range(6):  # no group is cut in two
        assert len(np.unique(partition.labels[group == g])) == 1
    assert partition.summary()["communities"] >= 3 and partition.summary()["cells"] == 600


def test_merge_smallest_joins_the_group_with_most_edges_to_it():
    # groups 0 (cells 0-3), 1 (4-6), 2 (7-8): group 2 has 2 edges to group 1 and 1 to group 0
    edges = [(0, 1), (1, 2), (2, 3), (4, 5), (5, 6), (7, 8), (7, 5), (8, 6), (8, 0)]
    rows, cols = zip(*edges)
    adjacency = sp.csr_matrix((np.ones(len(edges)), (rows, cols)), shape=(9, 9))
    adjacency = adjacency + adjacency.T
    merged = merge_smallest(np.array([0, 0, 0, 0, 1, 1, 1, 2, 2]), adjacency, 2)
    assert merged[7] == merged[8] == merged[4] != merged[0]


def test_merge_by_shared_edges_joins_a_piece_to_its_own_type_before_small_types_that_touch():
    # group 0 (cells 0-5) and its piece 1 (6-8) share 3 edges; small groups 2 (9-10) and 3 (11-12) share 1
    edges = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0), (6, 7), (7, 8), (6, 0), (7, 1), (8, 2),
             (9, 10), (11, 12), (10, 11)]
    rows, cols = zip(*edges)
    adjacency = sp.csr_matrix((np.ones(len(edges)), (rows, cols)), shape=(13, 13))
    adjacency = adjacency + adjacency.T
    membership = np.array([0] * 6 + [1] * 3 + [2] * 2 + [3] * 2)
    merged = merge_by_shared_edges(membership, adjacency, 3)
    assert len(set(merged[:9])) == 1  # the piece is back in its type
    assert merged[9] != merged[11] and merged[9] != merged[0]  # the two small types stay apart
    assert set(merged.tolist()) == {0, 1, 2}


def _large_and_small_types(seed):
    """Two large types far apart and six small types close to one another (as a class of rare subtypes):
    points and each point's type."""
    rng = np.random.default_rng(seed)
    large = rng.normal(0.0, 20.0, size=(2, 10))
    small = rng.normal(0.0, 20.0, size=(1, 10)) + rng.normal(0.0, 2.0, size=(6, 10))
    group = np.repeat(np.arange(8), [3000, 3000] + [50] * 6)
    points = np.vstack([large, small])[group] + rng.normal(0.0, 1.0, size=(len(group), 10))
    return torch.as_tensor(points, dtype=torch.float32), group


def test_the_start_found_among_twice_k_communities_keeps_large_types_whole_and_small_ones_apart():
    points, group = _large_and_small_types(seed=2)
    graph = LeidenGraph.from_neighbors(nearest_neighbors(points, 15).numpy())
    at_k = leiden_partition(graph, 8, seed=0)  # modularity at K: a large type cut in two, two small types lumped
    assert compare_to_labels(at_k.labels, group)["ari"] < 0.8
    start = start_partition(graph, 8, seed=0, overcluster=2.0)
    assert start.n_types == 8 and start.communities >= 16
    assert compare_to_labels(start.labels, group)["ari"] == 1.0
    plain = start_partition(graph, 8, seed=0, overcluster=1.0)  # 1: Leiden at K itself
    assert np.array_equal(plain.labels, at_k.labels)


def test_neighbor_graph_weighs_mutual_neighbors_twice_one_way_ones():
    table = np.array([[1], [0], [1]])  # 0 <-> 1 mutual, 2 -> 1 one way
    graph = neighbor_graph(table).toarray()
    assert graph[0, 1] == graph[1, 0] == 1.0 and graph[1, 2] == graph[2, 1] == 0.5 and graph[0, 2] == 0.0


def test_relabel_by_size_puts_the_largest_group_first():
    assert relabel_by_size(np.array([7, 3, 3, 7, 3, 9])).tolist() == [1, 0, 0, 1, 0, 2]


def test_after_the_warm_up_the_arms_type_cells_as_the_initial_partition():
    adata = mixture_counts(n_cells=600, n_types=4)
    model = CplMixVAE(adata, n_types=4, n_arms=2, labels="type", seed=0, type_init_steps=60)
    model.train(steps=60, progress=False)
    summary = model.info()["type_init"]
    assert summary["method"] == "leiden" and summary["steps"] == 60 and len(summary["group_sizes"]) == 4
    assert summary["cells"] == len(model.make_trainer().train_rows)
    types = model.predict().type_per_arm
    for arm in range(2):  # the partition is the mixture's types, so the arms now know them
        assert compare_to_labels(types[arm], adata.obs["type"].to_numpy())["acc"] >= 0.95


def test_random_start_trains_exactly_as_without_an_initial_partition():
    adata = mixture_counts(n_cells=300, n_genes=80)

    def weights(**options):
        model = CplMixVAE(adata, n_types=4, n_arms=2, seed=2, hidden_dim=32, n_hidden_layers=2, **options)
        model.train(steps=30, progress=False)
        assert model.type_init is None
        return model.module.state_dict()

    random_start, no_steps = weights(type_init="random"), weights(type_init_steps=0)
    assert all(torch.equal(random_start[k], no_steps[k]) for k in random_start)


def test_initial_partition_is_kept_in_the_saved_run_and_without_walks(tmp_path):
    adata = mixture_counts(n_cells=300, n_genes=80)
    model = CplMixVAE(adata, n_types=4, n_arms=1, seed=0, hidden_dim=32, n_hidden_layers=2, type_init_steps=20)
    model.train(steps=25, progress=False)  # one arm: no walks, the neighbors are found for the partition
    assert model.augment_used == "none" and model.type_init["method"] == "leiden"
    model.save(tmp_path / "run")
    loaded = CplMixVAE.load(tmp_path / "run", adata)
    assert loaded.type_init == model.type_init
    loaded.train(steps=5, progress=False)  # past the warm-up: the partition is not computed again, still recorded
    assert loaded.type_init == model.type_init


def test_fuzzy_connectivities_are_scanpys_umap_weights():
    # The start partition's graph carries the weights sc.pp.neighbors gives (umap-learn's fuzzy simplicial set,
    # which scanpy calls with each cell listed as its own first neighbor at distance 0).
    from umap.umap_ import fuzzy_simplicial_set

    from cplmix_explorer.model.neighbors import exact_neighbors, neighbor_distances
    from cplmix_explorer.model.type_init import LeidenGraph, fuzzy_connectivities

    points, _ = _blobs([150, 100], dim=5, spread=1.0)
    indices = exact_neighbors(points, 15)
    distances = neighbor_distances(points, indices)
    assert torch.allclose(distances[:, 0], (points - points[indices[:, 0]]).norm(dim=-1))
    ours = fuzzy_connectivities(indices.numpy(), distances.numpy())
    n = points.shape[0]
    with_self = np.concatenate([np.arange(n)[:, None], indices.numpy()], axis=1)
    self_distance = np.concatenate([np.zeros((n, 1)), distances.numpy()], axis=1).astype(np.float32)
    umap_weights, _, _ = fuzzy_simplicial_set(np.zeros((n, 1)), 16, None, None, knn_indices=with_self,
                                              knn_dists=self_distance)
    assert abs(ours - umap_weights.tocsr()).max() < 1e-5
    assert (ours != ours.T).nnz == 0 and ours.max() <= 1.0 + 1e-9
    graph = LeidenGraph.from_neighbors(indices.numpy(), distances.numpy())
    assert abs(graph.adjacency - ours).max() == 0
    assert sorted(graph.graph.es["weight"]) == sorted(sp.triu(ours, k=1).tocoo().data.tolist())


def test_the_start_graph_is_weighted_unless_uniform_weights_are_asked_for(mixture):
    weighted = CplMixVAE(mixture, n_types=4, n_arms=2, seed=0).make_trainer()
    weighted.prepare_type_init()
    assert weighted.augmenter.search.distances.shape == weighted.augmenter.search.indices.shape
    uniform = CplMixVAE(mixture, n_types=4, n_arms=2, seed=0, leiden_weights="uniform").make_trainer()
    uniform.prepare_type_init()
    for trainer in (weighted, uniform):  # well-separated types: both graphs find them
        covered = trainer.type_targets[0] >= 0
        truth = np.asarray(mixture.obs["type"])[covered.numpy()]
        assert compare_to_labels(trainer.type_targets[0][covered].numpy(), truth)["ari"] == 1.0


def test_types_with_markers_of_their_own_need_as_many_components_as_types():
    """24 types, each up in its own genes: in fewer principal components than types the start merges some of
    them; in as many as the types (the default when K is above 50) it finds them all."""
    from cplmix_explorer.config import CplMixConfig, neighbor_components
    from cplmix_explorer.datasets import simulate

    adata = simulate(n_cells=1440, n_genes=700, n_types=24, n_classes=None, abundance_ratio=3.0, markers_per_type=20,
                     n_ieg=40, n_hkg=40, panel_fraction=1.0, seed=1)
    truth = adata.obs["true_type"].to_numpy()

    def start_ari(components: int) -> float:
        model = CplMixVAE(adata, n_types=24, n_genes=700, seed=0, neighbor_components=components)
        trainer = model.make_trainer()
        trainer.prepare_type_init()
        rows = trainer.train_rows.numpy()
        return compare_to_labels(trainer.type_targets[0, rows].numpy(), truth[rows])["ari"]

    assert start_ari(24) > 0.95
    assert start_ari(6) < start_ari(24) - 0.1
    assert neighbor_components(CplMixConfig(n_types=120)) == 120 and neighbor_components(CplMixConfig(n_types=20)) == 50
    assert neighbor_components(CplMixConfig(n_types=120, neighbor_components=40)) == 40


def _marker_blocks(n_types: int, cells_per_type: int, genes_per_type: int, seed: int = 0):
    """Counts of types that each over-express a block of genes of their own (labels in obs['type'])."""
    from anndata import AnnData

    rng = np.random.default_rng(seed)
    types = np.repeat(np.arange(n_types), cells_per_type)
    rates = np.full((n_types, n_types * genes_per_type), 0.3)
    for k in range(n_types):
        rates[k, k * genes_per_type : (k + 1) * genes_per_type] = 6.0
    counts = rng.poisson(rates[types] * rng.lognormal(0.0, 0.2, (len(types), 1))).astype(np.float32)
    adata = AnnData(X=sp.csr_matrix(counts))
    adata.obs_names = [f"cell{i}" for i in range(len(types))]
    adata.var_names = [f"gene{j}" for j in range(counts.shape[1])]
    adata.obs["type"] = [f"T{t}" for t in types]
    return adata


def test_with_many_types_a_wider_type_bottleneck_learns_the_start_sooner():
    # 64 types in the paper's 10-d bottleneck: at the warm-up's first check each arm puts fewer cells of a
    # start category in it than with the default width for 64 types (16), on every category on average
    from cplmix_explorer.config import CplMixConfig, type_bottleneck_width

    assert type_bottleneck_width(CplMixConfig(n_types=64)) == 16 and type_bottleneck_width(CplMixConfig(n_types=40)) == 10
    assert type_bottleneck_width(CplMixConfig(n_types=64, type_bottleneck_dim=12)) == 12
    adata = _marker_blocks(n_types=64, cells_per_type=40, genes_per_type=4)
    fits = {}
    for width in (10, None):
        model = CplMixVAE(adata, n_types=64, seed=0, steps=301, type_bottleneck_dim=width, eval_every=10**9)
        model.train(progress=False)
        fits[width] = model.type_init["start_fit"]  # each arm's balanced fit at step 300
    assert model.module.type_head.in_features == 16 and model.module.state_head.in_features == 10 + 64
    assert min(fits[None]) > max(fits[10]), fits


def test_the_warm_up_goes_on_until_the_type_heads_have_learnt_the_start():
    # 12 types: five warm-up steps teach the heads little, and without the start as a prior afterwards the
    # objective alone then loses the types; the warm-up instead lasts until the heads fit the partition
    adata = mixture_counts(n_cells=1200, n_genes=240, n_types=12)
    labels = adata.obs["type"].to_numpy()
    options = dict(n_types=12, labels="type", seed=0, type_init_steps=5, type_prior_weight=0.0)
    fixed = CplMixVAE(adata, type_init_fit=0.0, **options)
    fixed.train(steps=120, progress=False)
    assert fixed.type_init["steps"] == 5
    fitted = CplMixVAE(adata, **options)  # type_init_fit 0.9, the default
    fitted.train(steps=120, progress=False)
    summary = fitted.type_init
    assert summary["warm_up_ended"] and 5 < summary["steps"] <= 60  # at most half the run
    assert min(summary["start_fit"]) >= 0.9
    ari = lambda model: min(compare_to_labels(t, labels)["ari"] for t in model.predict().type_per_arm)  # noqa: E731
    assert ari(fitted) >= 0.9 and ari(fixed) < 0.5


def test_a_run_stopped_inside_the_warm_up_goes_on_with_it_when_resumed():
    from cplmix_explorer.train.events import StepMetrics, TrainingControl

    adata = mixture_counts(n_cells=1200, n_genes=240, n_types=12)
    model = CplMixVAE(adata, n_types=12, labels="type", seed=0, type_init_steps=5, type_prior_weight=0.0, log_every=5)
    control = TrainingControl()
    model.events.subscribe(lambda event: isinstance(event, StepMetrics) and event.last_step >= 20 and control.stop())
    model.train(until_step=120, control=control, progress=False)  # stopped by the user inside the warm-up
    assert model.step < 55 and not model.type_init["warm_up_ended"] and model.type_init["steps"] > model.step
    model.train(until_step=120, progress=False)  # resumed to the planned end
    assert model.step == 120 and model.type_init["warm_up_ended"] and model.type_init["steps"] <= 60
    assert min(model.type_init["start_fit"]) >= 0.9
    for types in model.predict().type_per_arm:
        assert compare_to_labels(types, adata.obs["type"].to_numpy())["ari"] >= 0.9


def _count_leiden_runs(monkeypatch):
    """The list that records each igraph Leiden run's resolution from now on (the search's cost on big graphs)."""
    import igraph

    runs, original = [], igraph.Graph.community_leiden

    def counted(graph, *args, **kwargs):
        runs.append(kwargs["resolution"])
        return original(graph, *args, **kwargs)

    monkeypatch.setattr(igraph.Graph, "community_leiden", counted)
    return runs


def _nested_blobs(classes, subtypes, sizes, dim=20, subtype_spread=1.0, spread=0.8, seed=0):
    """Points of ``classes`` groups of ``subtypes`` close groups each (types within classes, as in cortex),
    so that the number of Leiden communities grows with the resolution; and each point's subtype."""
    rng = np.random.default_rng(seed)
    class_centres = rng.normal(0.0, 10.0, size=(classes, dim))
    centres = class_centres.repeat(subtypes, 0) + rng.normal(0.0, subtype_spread, size=(classes * subtypes, dim))
    group = np.repeat(np.arange(classes * subtypes), np.resize(sizes, classes * subtypes))
    points = centres[group] + rng.normal(0.0, spread, size=(len(group), dim))
    return torch.as_tensor(points, dtype=torch.float32), group


def test_the_resolution_search_finds_many_types_and_a_later_arm_in_one_run(monkeypatch):
    points, group = _nested_blobs(6, 5, [120, 80, 50, 30, 20])
    graph = LeidenGraph.from_neighbors(nearest_neighbors(points, 10).numpy())
    first = leiden_partition(graph, 30, seed=0)
    assert first.n_types == 30 and compare_to_labels(first.labels, group)["ari"] > 0.99
    runs = _count_leiden_runs(monkeypatch)
    second = leiden_partition(graph, 30, seed=1, first_resolution=first.resolution)
    assert runs == [first.resolution] * 2  # K again at once: one search run, then on to convergence
    assert second.n_types == 30 and compare_to_labels(second.labels, group)["ari"] > 0.99


def test_the_next_resolution_stays_inside_the_bracket_and_narrows_it():
    for low, high in [((0.5, 10), (4.0, 90)), ((1.0, 39), (1.01, 41)), ((2.0, 1), (3.0, 500))]:
        share = math.log(next_resolution(40, low, high) / low[0]) / math.log(high[0] / low[0])
        assert 0.1 - 1e-9 <= share <= 0.9 + 1e-9  # inside, and at least a tenth away from either end
    assert 1.0 < next_resolution(40, (1.0, 20), (RESOLUTION_RANGE[1], None)) <= math.sqrt(RESOLUTION_RANGE[1])
    assert math.sqrt(RESOLUTION_RANGE[0]) <= next_resolution(40, (RESOLUTION_RANGE[0], None), (1.0, 80)) < 1.0


def test_with_agreed_starts_only_a_cell_the_arms_leiden_runs_place_differently_has_no_start():
    # 4 types cut into 6: the made-up cuts fall differently in the two arms' Leiden runs
    adata = mixture_counts(n_cells=600, n_types=4)
    own = CplMixVAE(adata, n_types=6, n_arms=2, seed=0, start_agreed_only=False).make_trainer()
    own.prepare_type_init()
    agreed = CplMixVAE(adata, n_types=6, n_arms=2, seed=0, start_any_run=False).make_trainer()
    agreed.prepare_type_init()
    rows = own.train_rows.numpy()
    runs = own.type_targets[:, rows].numpy()
    same = runs[0] == runs[1]
    assert 0.5 < same.mean() < 1.0 and own.type_init_summary["runs_agree"] == round(float(same.mean()), 4)
    kept = agreed.type_targets[:, rows].numpy()
    assert (kept[0] == kept[1]).all()  # every arm is held to the same start
    held = np.isin(runs[0], agreed.type_init_summary.get("held_from_first_run", []))  # categories no other run has
    assert ((kept[0] >= 0) == (same | held)).all() and (kept[0][same] == runs[0][same]).all()
    assert held.mean() < 0.5
    checked = agreed._type_init_check_rows  # the warm-up's fit is checked on cells that have a start
    assert len(checked) and (agreed.type_targets[0, torch.as_tensor(checked)] >= 0).all()


def test_arms_held_only_where_their_leiden_runs_agree_end_up_agreeing():
    # 4 types cut into 6: held to their own runs' made-up cuts the arms keep disagreeing on those cells; left
    # free there, or held to either run's category, the objective and the coupling settle them on the same
    # categories. The starts are Leiden at K
    # (start_overcluster=1), whose made-up cuts are plain splits of a type, each run's elsewhere.
    adata = mixture_counts(n_cells=600, n_types=4)

    def trained(**options):
        model = CplMixVAE(adata, n_types=6, n_arms=2, seed=0, threads=1, start_overcluster=1.0, **options)
        model.train(steps=200, progress=False)
        return model.evaluate("type")

    own = trained(start_agreed_only=False)
    for agreed in (trained(start_any_run=False), trained()):  # disputed cells free; held to either run's (default)
        assert agreed["consensus"] >= 0.9 and agreed["consensus"] >= own["consensus"] + 0.1
        assert agreed["ari"] >= own["ari"] - 0.02


def test_a_start_category_the_other_run_does_not_reproduce_is_held_from_the_first_run_in_every_arm():
    # the runs agree on categories 0 and 1 (but one cell); category 2 of the first run is split by the second
    # between 0 and 1 on every cell: left to agreement alone it would hold no cell and the arms would drop it
    first = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    second = np.array([0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1])
    targets, unreproduced = targets_where_runs_agree(np.stack([first, second]), n_types=3)
    assert unreproduced == [2]
    assert (targets[0] == targets[1]).all()  # every arm held to the same start
    assert targets[0].tolist() == [0, 0, 0, -1, 1, 1, 1, 1, 2, 2, 2, 2]  # the disputed cell has no start
    assert set(targets[0][targets[0] >= 0]) == {0, 1, 2}  # every category asked for has cells that hold it


def test_with_any_run_a_disputed_cell_is_held_to_each_runs_category_and_an_agreed_one_to_the_shared_one():
    first = np.array([0, 0, 1, 1, 2, 2])
    second = np.array([0, 1, 1, 1, 2, 0])
    held, _ = targets_where_runs_agree(np.stack([first, second]), n_types=3)
    targets, alternatives = targets_from_any_run(np.stack([first, second]), held)
    assert held[0].tolist() == [0, -1, 1, 1, 2, -1]
    assert targets.tolist() == [[0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]]  # each arm its own run where disputed
    assert alternatives.shape == (2, 1, 6)
    assert alternatives[0, 0].tolist() == [-1, 1, -1, -1, -1, 0]  # ... or the other run's category
    assert alternatives[1, 0].tolist() == [-1, 0, -1, -1, -1, 2]


def test_with_any_run_the_prior_is_minus_the_log_of_the_runs_categories_summed_probability():
    adata = mixture_counts(n_cells=600, n_types=4)
    trainer = CplMixVAE(adata, n_types=6, n_arms=2, seed=0, start_any_run=True).make_trainer()
    trainer.prepare_type_init()
    rows = trainer.train_rows
    disputed = (trainer.type_alternatives[:, 0, rows] >= 0).cpu().numpy()
    assert disputed[0].any() and (disputed[0] == disputed[1]).all()  # the made-up cuts fall differently
    assert (trainer.type_targets[:, rows] >= 0).all()  # every cell has a start
    index = rows[:64]
    outputs, _, source = trainer._batch_objective(index)
    own = trainer.type_targets.gather(1, source)
    other = trainer.type_alternatives[:, 0].gather(1, source)
    q = outputs.log_q.exp()
    probability = q.gather(-1, own.unsqueeze(-1)).squeeze(-1)
    probability = probability + torch.where(other >= 0, q.gather(-1, other.clamp_min(0).unsqueeze(-1)).squeeze(-1), 0.0)
    expected = -probability.log().mean()
    assert (other >= 0).any()  # the batch holds disputed cells
    torch.testing.assert_close(trainer._start_cross_entropy(outputs, source), expected, rtol=1e-4, atol=1e-5)
    plain = CplMixVAE(adata, n_types=6, n_arms=2, seed=0, start_any_run=False).make_trainer()  # disputed cells free
    plain.prepare_type_init()
    assert plain.type_alternatives is None and (plain.type_targets[:, rows] < 0).any()


def test_the_runs_ordered_by_how_well_the_other_runs_reproduce_them():
    # two runs make the same cut (labels swapped in one), a third cuts elsewhere: it is reproduced least
    cut = np.repeat([0, 0, 1, 1, 2, 2], 10)
    same_cut = np.repeat([1, 1, 0, 0, 2, 2], 10)
    elsewhere = np.repeat([0, 1, 1, 2, 2, 2], 10)
    order, reproduced = most_reproduced([elsewhere, cut, same_cut], 3)
    assert order.tolist() == [1, 2, 0] and reproduced[1] == reproduced[2] > reproduced[0]
    between = compare_to_labels(cut, elsewhere)["ari"]
    np.testing.assert_allclose(reproduced, [between, (1 + between) / 2, (1 + between) / 2])
    assert most_reproduced([elsewhere, cut], 3)[0].tolist() == [0, 1]  # two runs: as drawn


def test_the_arms_start_from_the_leiden_runs_the_other_candidates_reproduce_best():
    # 4 types cut into 6: each Leiden run makes up its two extra cuts elsewhere; of 8 candidate runs (seeds
    # 0..7) the arms start from the two that the others reproduce best, not from the first two seeds
    adata = mixture_counts(n_cells=600, n_types=4)
    trainer = CplMixVAE(adata, n_types=6, n_arms=2, seed=0, start_overcluster=1.0, start_candidates=8).make_trainer()
    trainer.prepare_type_init()
    graph = trainer.start_graph()
    candidates = [start_partition(graph, 6, seed=0)]
    candidates += [start_partition(graph, 6, seed=run, first_resolution=candidates[0].resolution) for run in range(1, 8)]
    order, reproduced = most_reproduced([c.labels for c in candidates], 6)
    most = candidates[order[0]].labels
    assert compare_to_labels(most, candidates[0].labels)["ari"] < 1.0, "seed 0's run must not be the best reproduced"
    for arm, run in enumerate(order[:2]):
        assert compare_to_labels(trainer.start_runs[arm], candidates[run].labels)["ari"] == 1.0
    assert trainer.type_init_summary["candidates"] == 8
    assert trainer.type_init_summary["reproduced"] == [round(float(reproduced[i]), 4) for i in order[:2]]
    drawn = CplMixVAE(adata, n_types=6, n_arms=2, seed=0, start_overcluster=1.0).make_trainer()
    drawn.prepare_type_init()  # the default: one run per arm, seeds 0 and 1
    assert compare_to_labels(drawn.start_runs[0], candidates[0].labels)["ari"] == 1.0
    assert compare_to_labels(drawn.start_runs[1], candidates[1].labels)["ari"] == 1.0
