"""Continuous traversal on a model trained on simulated data with a known, type-dependent activity state;
exports and the ``cplmix traverse`` command end to end on the run folder."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree

import numpy as np
import pandas as pd
import pytest
import torch

from cplmix_explorer import datasets
from cplmix_explorer.analysis.export import (
    default_file_name,
    export,
    heatmap_figure,
    safe_file_name,
    save_heatmap,
    save_table,
)
from cplmix_explorer.analysis.metrics import contingency_table
from cplmix_explorer.analysis.traversal import (
    compare_types,
    context_for,
    driven_genes,
    resolve_type,
    spearman_with_steps,
    traverse,
)
from cplmix_explorer.cli import main
from cplmix_explorer.config import CplMixConfig
from cplmix_explorer.errors import CplmixError
from cplmix_explorer.workflows.run import load_run, train_run

# a few simulated genes are never detected; preparing the data says so (tested in the data tests)
pytestmark = pytest.mark.filterwarnings("ignore:.*genes have no counts:UserWarning")

#: Four types of 323 to 484 cells with clear markers. State 0 drives 40 IEG-named genes with a type-dependent
#: gain (one type has zero gain, one responds downwards); state 1 drives 60 HKG-named genes. The IEG program
#: is a small share of each cell's counts, as in real cells: a large one would move every other gene's
#: normalised expression, markers included, through the library-size normalisation.
SIMULATION = dict(
    n_cells=1600, n_genes=600, n_types=4, n_classes=None, state_dim=2, abundance_ratio=1.5, n_ieg=40, n_hkg=60,
    activity_gain=4.0, metabolic_gain=1.0, markers_per_type=40, marker_log_fold=(2.5, 4.0), seed=2,
)
#: Explicit training settings: as many types as simulated, a state weight (beta) that lets the state carry
#: the activity program, enough steps to learn it.
TRAINING = dict(
    n_types=4, n_arms=2, state_dim=2, hidden_dim=100, n_hidden_layers=2, batch_size=128, lr=2e-3, beta=0.1,
    input_dropout=0.1, augment="none", steps=1000, seed=0, labels="true_type", device="cpu",
)


@pytest.fixture(scope="module")
def simulated_run(tmp_path_factory):
    """A run folder trained on the simulation (written as .h5ad so that run.json points at it)."""
    folder = tmp_path_factory.mktemp("traversal")
    adata = datasets.simulate(**SIMULATION)
    data_path = folder / "simulated.h5ad"
    adata.write_h5ad(data_path)
    run_dir = folder / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic, so the same model, whatever the machine's thread count
    torch.manual_seed(TRAINING["seed"])  # the initial weights are drawn from torch's global generator
    try:
        train_run(str(data_path), run_dir, CplMixConfig().update(**TRAINING), progress=False)
    finally:
        torch.set_num_threads(threads)
    return run_dir, adata


@pytest.fixture(scope="module")
def model(simulated_run):
    run_dir, _ = simulated_run
    return load_run(run_dir)


@pytest.fixture(scope="module")
def true_types(model, simulated_run):
    """Inferred type index -> true type name (one-to-one matching) and the run's accuracy."""
    _, adata = simulated_run
    predicted = model.predict().consensus_type
    table, levels, names = contingency_table(predicted, adata.obs["true_type"].to_numpy())
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-table)
    accuracy = table[rows, cols].sum() / table.sum()
    return {int(levels[r]): str(names[c]) for r, c in zip(rows, cols)}, float(accuracy)


def activity_dimension(model, adata, type_index: int) -> tuple[int, float]:
    """The inferred state dimension that best tracks the true activity state (state 0) over the type's cells."""
    states = context_for(model).type_states(type_index)
    truth = adata.obs["true_state_0"].to_numpy()[states.cells]
    correlation = [abs(np.corrcoef(states.state_mean[0, :, d], truth)[0, 1]) for d in range(model.module.state_dim)]
    return int(np.argmax(correlation)), float(np.max(correlation))


@pytest.mark.slow
def test_activity_genes_follow_the_state_only_in_types_that_respond(model, simulated_run, true_types):
    _, adata = simulated_run
    mapping, accuracy = true_types
    assert accuracy >= 0.9, f"the engine did not recover the simulated types (ACC {accuracy:.2f}); nothing to traverse"
    gains = adata.uns["simulation"]["gains"]
    responsive, silent = {}, []
    for type_index, name in mapping.items():
        if gains[name][0] != 0:
            dim, correlation = activity_dimension(model, adata, type_index)
            summary = traverse(model, type_index, dim).group_summary
            responsive[name] = (dim, correlation, summary)
        else:
            silent.append(type_index)
    assert len(responsive) == 3 and len(silent) == 1
    figures = {
        name: {"dim": dim, "corr": round(corr, 2), **summary[["median_amplitude", "median_abs_rho"]].round(3).to_dict()}
        for name, (dim, corr, summary) in responsive.items()
    }
    for name, (dim, _, summary) in responsive.items():
        assert summary.loc["IEG", "genes"] >= 35 and summary.loc["MG", "genes"] == 20
        assert summary.loc["IEG", "median_abs_rho"] >= 0.9, figures
        assert summary.loc["IEG", "median_amplitude"] >= 2 * summary.loc["MG", "median_amplitude"], figures
    typical_response = np.median([s.loc["IEG", "median_amplitude"] for _, _, s in responsive.values()])
    for dim in range(model.module.state_dim):  # flat along every dimension of the type that does not respond
        silent_summary = traverse(model, silent[0], dim).group_summary
        assert silent_summary.loc["IEG", "median_amplitude"] <= 0.25 * typical_response, (
            dim, silent_summary.loc["IEG", "median_amplitude"], typical_response, figures,
        )


def test_the_sweep_spans_the_type_and_is_the_models_decoder(model):
    context = context_for(model)
    type_index = int(np.bincount(context.consensus_type).argmax())
    result = traverse(model, type_index, 1, steps=40, normalize="minmax")
    n_genes = len(model.prepared.genes)
    assert result.expression.shape == (40, n_genes) and result.normalized.shape == (40, n_genes)
    assert list(result.expression.columns) == list(model.prepared.genes)
    assert np.all(np.diff(result.state) > 0) and result.expression.index.name == "state"
    assert result.expression_per_arm.shape == (2, 40, n_genes) and result.state_per_arm.shape == (2, 40)
    np.testing.assert_allclose(result.expression.to_numpy(), result.expression_per_arm.mean(axis=0))
    # from the 2nd to the 98th percentile of the type's state distribution: within one cell's share, the
    # cells below each end make up at most, and those at or below it at least, that percentage (cells whose
    # state means are equal share one rank; result.percentile counts them all)
    cells = context.type_states(type_index).state_mean[0, :, int(result.alignment.loc[0, "dimension"])]
    share = 100 / result.n_cells + 1e-9
    for value, target, reported in ((result.state[0], 2, result.percentile[0]), (result.state[-1], 98, result.percentile[-1])):
        assert 100 * np.mean(cells < value) - share <= target <= 100 * np.mean(cells <= value) + share
        assert reported == pytest.approx(100 * np.mean(cells <= value))
    own_type = model.predict().type_per_arm[0] == type_index
    states = model.predict().state_mean[0][own_type & (context.consensus_type == type_index), 1]
    assert 0.5 <= 100 * np.mean(states < result.state[0]) <= 4
    assert 0.0 <= result.normalized.to_numpy().min() and result.normalized.to_numpy().max() <= 1.0
    # row i of one arm's sweep is what the decoder returns for that arm's state at row i
    single = traverse(model, type_index, 1, steps=5, arm=1)
    s = np.repeat(single.held_state[None], 5, axis=1).copy()
    s[0, :, 1] = single.state
    c = torch.zeros(1, 5, model.module.n_types)
    c[..., type_index] = 1
    with torch.no_grad():  # the decoder is stacked over arms: run both, keep arm 1
        decoded = model.module.decode(c.expand(2, -1, -1), torch.as_tensor(np.repeat(s, 2, axis=0), dtype=torch.float32))
    np.testing.assert_allclose(single.expression.to_numpy(), decoded[1].numpy(), rtol=1e-5, atol=1e-5)


def test_scores_groups_and_display_order(model):
    result = traverse(model, 0, 0)
    assert list(result.groups) == ["MG", "IEG", "HKG"]
    groups = [set(g.genes) for g in result.groups.values()]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert all(result.scores.loc[list(g), "group"].eq(name).all() for name, g in zip(result.groups, groups))
    ieg = result.groups["IEG"]
    assert ieg.n_requested == 139 and len(ieg.missing) == 139 - 40  # the simulation uses 40 of the list
    assert len(ieg.genes) + len(ieg.not_modelled) == 40
    expected_amplitude = (result.expression.max() - result.expression.min()) / result.scores["spread"].clip(lower=1e-3)
    np.testing.assert_allclose(result.scores["amplitude"], expected_amplitude.to_numpy())
    zscore = (result.expression - result.scores["mean"]) / result.scores["spread"].clip(lower=1e-3)
    np.testing.assert_allclose(result.normalized.to_numpy(), zscore.to_numpy())
    top = result.top_genes(15)
    assert list(top["rank"]) == list(range(1, 16)) and top["amplitude"].is_monotonic_decreasing
    assert set(result.top_genes(5, group="IEG").index) <= set(result.groups["IEG"].genes)
    display = result.display_matrix(max_genes_per_group=8)
    assert [name for name, _, _ in display.groups] == ["MG", "IEG", "HKG"]
    assert display.values.shape == (50, 24)
    ieg_columns = display.values.columns[display.groups[1][1] : display.groups[1][2]]
    assert result.scores.loc[ieg_columns, "rho"].is_monotonic_decreasing
    long = result.to_long()
    assert len(long) == 50 * sum(len(g) for g in groups) and set(long["group"]) == {"MG", "IEG", "HKG"}


def test_spearman_matches_scipy_with_ties_and_constant_genes():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    values = rng.normal(size=(30, 40))
    values[:, :10] = np.round(values[:, :10])  # ties
    values[:, 10] = 2.0  # constant
    values[:12, 11] = 0.0  # zero (a ReLU at rest), then rising
    values[12:, 11] = np.arange(18)
    expected = [0.0 if j == 10 else spearmanr(np.arange(30), values[:, j])[0] for j in range(40)]
    np.testing.assert_allclose(spearman_with_steps(values), expected, atol=1e-12)


def test_one_cell_custom_groups_and_labels(model, simulated_run, true_types, tmp_path):
    _, adata = simulated_run
    mapping, _ = true_types
    type_index, name = next(iter(mapping.items()))
    assert resolve_type(model, name) == type_index  # the run's labels column (true_type) names the types
    assert resolve_type(model, name.lower(), labels="true_type") == type_index
    cell = adata.obs_names[np.flatnonzero(model.predict().consensus_type == type_index)[0]]
    gene_file = tmp_path / "picked.txt"
    activity = [g for g in adata.var_names[adata.var["program"] == "ieg"] if g in model.prepared.genes][:2]
    gene_file.write_text("# two activity genes and one that is not measured\n" + "\n".join(activity) + "\nNotAGene\n")
    modelled = model.prepared.genes[-1]
    result = traverse(model, dim=0, cell=cell, genes=["IEG", str(gene_file), ("mine", [modelled, "Nope"])])
    assert result.type == type_index and result.cell == cell
    assert result.type_label == model.type_names()[type_index] == f"{type_index} · {name}"  # named by its label
    assert list(result.groups) == ["IEG", "picked", "mine"]
    assert result.groups["picked"].missing == ["NotAGene"]
    assert result.groups["picked"].genes == [] and result.groups["picked"].duplicates == activity
    assert f"picked: 0 of 3 genes; 2 shown in IEG instead ({', '.join(activity)})" in result.groups["picked"].summary()
    assert result.groups["mine"].genes == [modelled] and result.groups["mine"].missing == ["Nope"]
    cell_states = context_for(model).cell_state(int(np.flatnonzero(adata.obs_names == cell)[0]), type_index)
    np.testing.assert_allclose(result.held_state, cell_states)
    assert result.cell_state == pytest.approx(cell_states[0, result.alignment.loc[0, "dimension"]])


def test_a_barely_trained_model_warns_that_its_traversal_may_not_match_the_data(model, simulated_run):
    from cplmix_explorer.api import CplMixVAE

    _, adata = simulated_run
    for type_index in np.flatnonzero(np.bincount(model.predict().consensus_type) >= 3):
        assert traverse(model, int(type_index), 0).warnings == [], "1,000 steps reproduce every type's markers"
    early = CplMixVAE(adata, config=model.config.copy(steps=2))  # a decoder that has hardly learnt anything
    early.train(steps=2, progress=False)
    largest = int(np.bincount(early.predict().consensus_type).argmax())
    warnings = traverse(early, largest, 0).warnings
    assert any("trained for only 2 steps (fewer than 1,000)" in w for w in warnings), warnings
    assert any("the decoder puts" in w and f"of type {largest}'s" in w and "below that mean" in w for w in warnings), warnings


def test_types_side_by_side_and_driven_genes(model):
    comparison = compare_types(model, [0, 1, 2], dim=0, normalize="minmax")
    assert [t.type for t in comparison.traversals] == [0, 1, 2]
    panels = comparison.display_matrices(max_genes_per_group=10)
    shared = [[c for c, g in zip(p.values.columns, p.group_of_column) if g != "MG"] for p in panels]
    assert shared[0] == shared[1] == shared[2] and len(shared[0]) == 20
    assert set(panels[0].values.columns[:10]) != set(panels[1].values.columns[:10])  # each type its own markers
    contrast = comparison.contrast("IEG")
    assert len(contrast) == len(comparison.traversals[0].groups["IEG"].genes)
    assert ("rho", comparison.labels[1]) in contrast.columns and contrast["difference"].is_monotonic_decreasing
    assert set(comparison.scores["type"]) == {0, 1, 2}
    driven = driven_genes(model, 0, n=5)
    assert list(driven["dim"]) == [0] * 5 + [1] * 5 and list(driven["rank"]) == [1, 2, 3, 4, 5] * 2
    with pytest.raises(CplmixError, match="at least two"):
        compare_types(model, [0])
    with pytest.raises(CplmixError, match="must differ"):
        compare_types(model, [1, "1"])


@pytest.mark.parametrize(
    "call, message",
    [
        (dict(type=7), "type 7 is out of range: the model has 4 types"),
        (dict(type=-1), "out of range"),
        (dict(type="L5 NP"), "no type is matched to label 'L5 NP'"),
        (dict(type=0, dim=2), "state dimension 2 is out of range: the model has 2"),
        (dict(type=0, dim=0.5), "state dimension must be an integer"),
        (dict(type=0, genes="MG,IEGS"), "unknown gene group or file 'IEGS'"),
        (dict(type=0, genes="MG,missing/genes.txt"), "unknown gene group or file 'missing/genes.txt'"),
        (dict(type=0, genes=["MG", "MG"]), "given twice"),
        (dict(type=0, steps=1), "steps must be an integer from 2"),
        (dict(type=0, percentiles=(90, 10)), "percentiles must satisfy"),
        (dict(type=0, normalize="log"), "normalize must be one of"),
        (dict(type=0, arm=2), "arm must be one of 0..1"),
        (dict(cell="no-such-cell"), "no cell named 'no-such-cell'"),
        (dict(), "give a type"),
    ],
)
def test_bad_requests_give_one_line_errors(model, call, message):
    with pytest.raises(CplmixError, match=message) as error:
        traverse(model, **call)
    assert "\n" not in str(error.value)


def test_negative_binomial_models_traverse_on_the_log_normalised_scale(mixture):
    from cplmix_explorer import CplMixVAE

    torch.manual_seed(0)
    model = CplMixVAE(mixture, n_types=4, n_arms=2, state_dim=2, likelihood="nb", hidden_dim=16, n_hidden_layers=1)
    model.train(steps=30, progress=False)
    type_index = int(np.bincount(model.predict().consensus_type).argmax())
    result = traverse(model, type_index, 0, steps=10, genes=["MG", ("block", [f"gene{j}" for j in range(25)])])
    values = result.expression.to_numpy()
    assert np.isfinite(values).all() and values.min() >= 0
    # each arm's decoder gives gene proportions: on the log1p(x / library x 1e4) scale a row sums to 1e4
    np.testing.assert_allclose(np.expm1(result.expression_per_arm).sum(axis=-1), 1e4, rtol=1e-3)


def test_type_without_labels_column_needs_an_index(model):
    labels = model.config.labels
    try:
        model.config.labels = None
        with pytest.raises(CplmixError, match="no labels column"):
            traverse(model, "T01")
    finally:
        model.config.labels = labels


# -- exports -----------------------------------------------------------------------------------------------
def test_heatmap_files_are_valid(model, tmp_path):
    result = traverse(model, 0, 0)
    png = save_heatmap(result, tmp_path / "figure.png", mark_state=float(result.state[10]), dpi=80)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = save_heatmap(result, tmp_path / "figure.svg", max_genes_per_group=5, gene_labels=True)
    root = ElementTree.parse(svg).getroot()
    assert root.tag.endswith("svg")
    texts = {"".join(node.itertext()).strip() for node in root.iter() if node.tag.endswith("text")}
    assert {"MG", "IEG", "HKG"} <= texts  # group labels kept as text
    assert set(result.display_matrix(5).values.columns) <= texts  # gene labels
    pdf = save_heatmap(compare_types(model, [0, 1]), tmp_path / "comparison.pdf", figsize=(9, 4), cmap="magma")
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["comparison.pdf", "figure.png", "figure.svg"]  # no temporaries


def test_tables_have_state_rows_and_gene_columns(model, tmp_path):
    result = traverse(model, 1, 0, steps=20)
    written = export(result, tmp_path / "sweep.csv")
    assert [p.name for p in written] == ["sweep.csv", "sweep.scores.csv"]
    matrix = pd.read_csv(written[0])
    genes = [g for group in result.groups.values() for g in group.genes]
    assert list(matrix.columns) == ["state", *genes] and len(matrix) == 20
    np.testing.assert_allclose(matrix["state"], result.state)
    np.testing.assert_allclose(matrix[genes].to_numpy(), result.expression[genes].to_numpy(), rtol=1e-6)
    scores = pd.read_csv(written[1])
    assert {"gene", "group", "amplitude", "rho"} <= set(scores.columns) and len(scores) == len(genes)
    parquet = save_table(result, tmp_path / "sweep.parquet", values="normalized", genes="all")
    table = pd.read_parquet(parquet)
    assert table.shape == (20, 1 + len(model.prepared.genes))
    np.testing.assert_allclose(table.drop(columns="state").to_numpy(), result.normalized.to_numpy(), rtol=1e-6)
    summary = pd.read_csv(save_table(result, tmp_path / "summary.csv", what="summary"))
    assert list(summary["group"]) == ["MG", "IEG", "HKG"]


def test_export_mistakes_write_nothing(model, tmp_path):
    result = traverse(model, 0, 0)
    for name, message in [("figure.jpg", "cannot tell the format"), ("figure", "no suffix")]:
        with pytest.raises(CplmixError, match=message):
            export(result, tmp_path / name)
    with pytest.raises(CplmixError, match="is a folder"):
        export(result, tmp_path)
    with pytest.raises(CplmixError, match="unknown colour map"):
        save_heatmap(result, tmp_path / "figure.png", cmap="no-such-map")
    with pytest.raises(CplmixError, match="figure size"):
        heatmap_figure(result, figsize=(0, 3))
    assert list(tmp_path.iterdir()) == []
    assert safe_file_name("L5/6 NP: CT?") == "L5_6_NP_CT" and safe_file_name("../..") == "traversal"
    assert "/" not in default_file_name(result, "png")


# -- the command -------------------------------------------------------------------------------------------
def test_traverse_command_end_to_end(simulated_run, model, true_types, tmp_path, capsys):
    run_dir, adata = simulated_run
    mapping, _ = true_types
    type_index, name = next(iter(mapping.items()))
    figure = tmp_path / "out" / "sweep.png"
    assert main(["traverse", str(run_dir), "--type", name, "--dim", "1", "--steps", "30", "--out", str(figure),
                 "--max-genes", "6", "--mark", "0.0", "--dpi", "60"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report["written"] == [str(figure)]
    assert report["types"][0]["type"] == type_index and report["types"][0]["label"] == f"{type_index} · {name}"  # its name
    assert [g["group"] for g in report["types"][0]["groups"]] == ["MG", "IEG", "HKG"]
    assert report["types"][0]["warnings"] == []  # a model trained long enough: no caution printed

    gene_file = tmp_path / "activity.txt"
    activity = [g for g in adata.var_names[adata.var["program"] == "ieg"] if g in model.prepared.genes][:10]
    gene_file.write_text("\n".join(activity) + "\n")
    table = tmp_path / "sweep.csv"
    assert main(["traverse", str(run_dir), "--type", "0", "--type", "2", "--genes", f"MG,{gene_file}",
                 "--out", str(table), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    matrix = pd.read_csv(table)
    assert list(matrix["type"].unique()) == [0, 2] and len(matrix) == 100
    assert set(activity) <= set(matrix.columns)
    assert (tmp_path / "sweep.scores.csv").exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--type", "9", "--out", "x.png"], "type 9 is out of range"),
        (["--type", "0", "--out", "x.gif"], "cannot tell the format of 'x.gif'"),
        (["--type", "0", "--dim", "3", "--out", "x.png"], "state dimension 3 is out of range"),
        (["--type", "0", "--genes", "MG,Fos-list.txt", "--out", "x.png"], "unknown gene group or file 'Fos-list.txt'"),
        (["--out", "x.png"], "give --type"),
    ],
)
def test_traverse_command_mistakes(simulated_run, tmp_path, capsys, monkeypatch, arguments, message):
    run_dir, _ = simulated_run
    monkeypatch.chdir(tmp_path)
    assert main(["traverse", str(run_dir), *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("cplmix: error: ") and message in error and "\n" not in error
    assert list(tmp_path.iterdir()) == []
