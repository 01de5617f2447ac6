"""Markers per type (one-vs-rest Wilcoxon, checked against scanpy) and type names (from labels, from markers,
renamed), on simulated data with known markers and a small real training run."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from cplmix_explorer import datasets
from cplmix_explorer.analysis import markers as markers_module
from cplmix_explorer.analysis.markers import benjamini_hochberg, dotplot_figure, wilcoxon_markers
from cplmix_explorer.analysis.names import NAMES_FILE
from cplmix_explorer.analysis.traversal import traverse
from cplmix_explorer.api import CplMixVAE
from cplmix_explorer.cli import main
from cplmix_explorer.config import CplMixConfig
from cplmix_explorer.data.preprocess import prepare
from cplmix_explorer.errors import CplmixError
from cplmix_explorer.workflows.run import RESULT_FILE, load_run, train_run

pytestmark = pytest.mark.filterwarnings("ignore:.*genes have no counts:UserWarning")

#: Three types with 30 clear markers each; no class programme, so every marker belongs to one type.
SIMULATION = dict(n_cells=600, n_genes=300, n_types=3, n_classes=None, abundance_ratio=1.5, n_ieg=20, n_hkg=20,
                  markers_per_type=30, marker_log_fold=(2.5, 4.0), seed=3)
#: One type more than simulated, so that two types can carry the same label most.
TRAINING = dict(n_types=4, n_arms=2, state_dim=2, batch_size=128, steps=300, lr=2e-3, augment="none",
                labels="true_type", device="cpu", seed=0)


@pytest.fixture(scope="module")
def simulated() -> ad.AnnData:
    return datasets.simulate(**SIMULATION)


@pytest.fixture(scope="module")
def run(tmp_path_factory, simulated):
    """A real run folder trained on the simulation with the true types as its labels column."""
    folder = tmp_path_factory.mktemp("types")
    path = folder / "simulated.h5ad"
    simulated.write_h5ad(path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        train_run(str(path), folder / "run", CplMixConfig().update(**TRAINING), progress=False)
    finally:
        torch.set_num_threads(threads)
    return folder / "run"


def simulated_markers(adata: ad.AnnData, type_name: str) -> set[str]:
    return set(adata.var_names[adata.var["marker_of"] == type_name])


# -- markers ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("storage", ["sparse", "dense", "sparse in small chunks"])
def test_markers_are_the_simulated_ones_and_agree_with_scanpy(simulated, storage, monkeypatch):
    sc = pytest.importorskip("scanpy")
    prepared = prepare(simulated, CplMixConfig(n_genes=SIMULATION["n_genes"]))
    if storage == "dense":
        prepared.matrix = prepared.matrix.toarray()
    if storage == "sparse in small chunks":
        monkeypatch.setattr(markers_module, "_SPARSE_CHUNK", 7)
    truth = simulated.obs["true_type"]
    statistics = wilcoxon_markers(prepared, truth.cat.codes.to_numpy(), len(truth.cat.categories))

    for index, name in enumerate(truth.cat.categories):
        assert set(statistics.top_genes(index, 20)) <= simulated_markers(simulated, name), name

    reference = ad.AnnData(X=sp.csr_matrix(prepared.model_input()), obs=pd.DataFrame({"t": truth.astype(str).to_numpy()}))
    reference.var_names = prepared.genes
    sc.tl.rank_genes_groups(reference, "t", method="wilcoxon", pts=True)
    result = reference.uns["rank_genes_groups"]
    position = {g: i for i, g in enumerate(prepared.genes)}
    for index, name in enumerate(truth.cat.categories):
        genes = list(result["names"][name])
        columns = [position[g] for g in genes]
        np.testing.assert_allclose(statistics.score[index, columns], result["scores"][name], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(statistics.logfoldchange[index, columns], result["logfoldchanges"][name], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(statistics.pval_adj[index, columns], result["pvals_adj"][name], rtol=1e-4, atol=1e-300)
        np.testing.assert_allclose(statistics.frac_in[index, columns], result["pts"][name].loc[genes].to_numpy())
        np.testing.assert_allclose(statistics.frac_out[index, columns], result["pts_rest"][name].loc[genes].to_numpy())


def test_benjamini_hochberg_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(0).uniform(size=200) ** 3
    p[[3, 9]] = p[5]  # ties
    np.testing.assert_allclose(benjamini_hochberg(p), multitest.multipletests(p, method="fdr_bh")[1])


def test_the_dot_plot_draws_every_type_and_its_markers(simulated):
    prepared = prepare(simulated, CplMixConfig(n_genes=SIMULATION["n_genes"]))
    truth = simulated.obs["true_type"]
    statistics = wilcoxon_markers(prepared, truth.cat.codes.to_numpy(), 3)
    names = [f"{k} · {name}" for k, name in enumerate(truth.cat.categories)]
    figure = dotplot_figure(statistics, 2, names)
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert len(ax.get_xticklabels()) == 6  # two markers of each of three types, none shared
    with pytest.raises(CplmixError, match="from 1 to 1000"):
        dotplot_figure(statistics, 0, names)


# -- names ---------------------------------------------------------------------------------------------------
def test_types_are_named_by_the_label_their_cells_carry_most(run, simulated):
    model = load_run(run)
    names = model.type_names()
    types = model.predict().consensus_type
    table = pd.crosstab(types, simulated.obs["true_type"].to_numpy())
    assert len(set(names)) == len(names)
    seen: dict[str, list[int]] = {}
    for t, name in enumerate(names):
        if t not in table.index:
            assert name == str(t)
            continue
        majority = table.loc[t].idxmax()
        assert name.startswith(f"{t} · {majority}"), (t, name, table.loc[t].to_dict())
        seen.setdefault(majority, []).append(t)
    for label, owners in seen.items():  # the type holding most cells of a label keeps its plain name
        owners = sorted(owners, key=lambda t: -table.loc[t, label])
        assert [names[t] for t in owners] == [f"{owners[0]} · {label}"] + [f"{t} · {label} #{i + 2}" for i, t in enumerate(owners[1:])]

    result = ad.read_h5ad(run / RESULT_FILE)
    assert list(result.obs["cplmix_type"].cat.categories) == names
    np.testing.assert_array_equal(result.obs["cplmix_type_id"].to_numpy(), types)
    assert (result.obs["cplmix_type"].astype(str).to_numpy() == np.asarray(names)[types]).all()
    saved = json.loads((run / NAMES_FILE).read_text())
    assert saved["names"] == names and saved["labels"] == "true_type" and saved["renamed"] == {}


def test_without_labels_types_are_named_by_their_top_two_markers(run, simulated):
    unlabelled = simulated.copy()
    del unlabelled.obs["true_type"]
    model = load_run(run, source=unlabelled)
    names = model.type_names()
    table = model.markers(top=2)
    truth = simulated.obs["true_type"].to_numpy()
    by_label = load_run(run).type_names()
    for t, rows in table.groupby("type"):
        genes = rows.sort_values("rank")["gene"].tolist()
        assert names[t] == f"{t} · {genes[0]}/{genes[1]}"
        if "#" not in by_label[t]:  # (a second type of one label is a part of it, e.g. split along a state)
            majority = pd.Series(truth[model.predict().consensus_type == t]).mode()[0]
            assert set(genes) <= simulated_markers(simulated, majority), (t, genes, majority)
    assert (table["name"] == [names[t] for t in table["type"]]).all()
    assert model.write_results(unlabelled.copy()).obs["cplmix_type"].cat.categories.tolist() == names


def test_a_rename_persists_in_the_run_folder_result_and_exports(run, tmp_path):
    model = load_run(run)
    before = model.type_names()
    renamed = model.rename_type(0, "  Chandelier   cells ", run_dir=run)
    assert renamed[0] == "Chandelier cells" and renamed[1:] == before[1:]
    with pytest.raises(CplmixError, match="already named"):
        model.rename_type(1, "chandelier cells", run_dir=run)
    with pytest.raises(CplmixError, match="out of range"):
        model.rename_type(7, "x")
    assert model.type_names()[1] == before[1], "a refused rename changes nothing"

    again = load_run(run)
    assert again.type_names() == renamed
    result = ad.read_h5ad(run / RESULT_FILE)
    assert result.obs["cplmix_type"].cat.categories[0] == "Chandelier cells"
    assert list(result.uns["cplmix"]["type_names"]) == renamed
    traversal = traverse(again, "Chandelier cells", 0, steps=10)
    assert traversal.type == 0 and traversal.title.startswith("Chandelier cells")

    assert main(["markers", str(run), "--top", "2"]) == 0
    assert main(["markers", str(run), "--out", str(tmp_path / "markers.csv"), "--top", "3"]) == 0
    table = pd.read_csv(tmp_path / "markers.csv")
    assert set(table.loc[table["type"] == 0, "name"]) == {"Chandelier cells"} and (table.groupby("type").size() == 3).all()
    assert main(["markers", str(run), "--out", str(tmp_path / "dots.svg"), "--quiet"]) == 0
    svg = ElementTree.parse(tmp_path / "dots.svg").getroot()
    assert "Chandelier cells" in "".join(svg.itertext())

    assert main(["rename", str(run), "Chandelier cells", ""]) == 0  # back to the automatic name
    assert load_run(run).type_names() == before
    assert list(ad.read_h5ad(run / RESULT_FILE).obs["cplmix_type"].cat.categories) == before


def test_cli_markers_print_a_table_and_refuse_bad_input_in_one_line(run, tmp_path, capsys):
    assert main(["markers", str(run), "--top", "2"]) == 0
    printed = capsys.readouterr().out
    names = load_run(run).type_names()
    assert all(name in printed for name in names) and "log2FC" in printed
    for argv, message in [
        (["markers", str(run), "--top", "0"], "from 1 to 1000"),
        (["markers", str(run), "--out", str(tmp_path / "m.txt")], "cannot tell the format"),
        (["markers", str(tmp_path / "nowhere")], "no run folder at"),
        (["rename", str(tmp_path / "nowhere"), "0", "x"], "no run folder at"),  # both open a run alike
        (["markers", str(run), "--data", str(tmp_path / "moved.h5ad")], "moved.h5ad"),
        (["rename", str(run), "0", "x", "--data", str(tmp_path / "moved.h5ad")], "moved.h5ad"),
        (["rename", str(run), "no such type", "x"], "no type is named"),
    ]:
        assert main(argv) == 2
        error = capsys.readouterr().err
        assert error.startswith("cplmix: error:") and message in error and error.count("\n") == 1
    assert not (tmp_path / "m.txt").exists()
    assert load_run(run).type_names() == names, "a refused rename changes nothing"


def test_the_api_returns_markers_and_a_dot_plot(run, simulated):
    model = CplMixVAE.load(run, simulated)
    table = model.markers(top=4)
    assert list(table.columns[:4]) == ["type", "name", "rank", "gene"] and (table.groupby("type").size() == 4).all()
    assert (table["score"] > 0).all() and (table["frac_in"] > table["frac_out"]).mean() > 0.9
    figure = model.dotplot(top=2)
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == [model.type_names()[t] for t in sorted(set(table["type"]))]


def test_the_markers_view_renames_a_run_type_and_every_view_shows_it(run):
    from cplmix_explorer.views import plots
    from cplmix_explorer.views.cells import CellsView
    from cplmix_explorer.views.markers import MarkersView
    from cplmix_explorer.views.state import ExplorerState
    from cplmix_explorer.views.traversal import TraversalView

    state = ExplorerState()
    state.open_run(run)
    names = state.type_names()
    view, cells, traversal = MarkersView(state), CellsView(state), TraversalView(state)
    assert set(view.table.object["type"]) == {names[t] for t in np.unique(state.inference.consensus_type)}
    assert view.export_bytes("png").startswith(b"\x89PNG\r\n\x1a\n") and b"<svg" in view.export_bytes("svg")[:2000]
    try:
        view.rename_type.value = 1
        view.new_name.value = "Fast spiking"
        view.rename_button.clicks += 1
        assert view.message.visible is False, view.message.object
        assert state.type_names()[1] == "Fast spiking"
        assert "Fast spiking" in set(view.table.object["type"])
        assert "Fast spiking" in cells.highlight.options
        assert "Fast spiking" in list(cells.cell_table()["type"].cat.categories)
        assert any(text.startswith("Fast spiking (") for text in traversal.type.options)
        assert "Fast spiking" in plots.order_consensus(state.consensus, state.type_names()).rows
        assert "Fast spiking" in cells.comparison("true_type").matrix.rows
        assert "Fast spiking" in pd.read_csv(pd.io.common.BytesIO(view.export_bytes("csv")))["name"].tolist()
        assert ad.read_h5ad(run / RESULT_FILE).obs["cplmix_type"].cat.categories[1] == "Fast spiking"

        view.rename_type.value = 2
        view.new_name.value = "fast SPIKING"
        view.rename_button.clicks += 1
        assert view.message.visible and "already named" in view.message.object
        assert state.type_names()[2] == names[2]
    finally:
        state.rename_type(1, "")
    assert load_run(run).type_names() == names


def test_a_saved_model_keeps_its_renames(run, simulated, tmp_path):
    model = load_run(run)
    model.rename_type(2, "Kept with the model")
    model.save(tmp_path / "copy")
    assert CplMixVAE.load(tmp_path / "copy", simulated).type_names()[2] == "Kept with the model"
    assert load_run(run).type_names()[2] != "Kept with the model", "a rename without run_dir leaves the run as it was"
