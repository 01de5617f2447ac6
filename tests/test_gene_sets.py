"""Gene groups for the traversal: shipped sets, matching on mouse and human symbols, custom sets, markers."""

from __future__ import annotations

import numpy as np
import pytest

from cplmix_explorer import datasets
from cplmix_explorer.config import CplMixConfig
from cplmix_explorer.data.gene_sets import (
    GeneSet,
    as_gene_set,
    default_marker_exclusions,
    marker_genes,
    marker_scores,
    match_genes,
    read_gene_set,
    shipped_gene_set,
    shipped_gene_set_names,
)
from cplmix_explorer.data.preprocess import prepare
from cplmix_explorer.errors import CplmixError

pytestmark = pytest.mark.filterwarnings("ignore:.*genes have no counts:UserWarning")


def test_shipped_sets_have_their_published_sizes_and_citations():
    sizes = {name: len(shipped_gene_set(name)) for name in shipped_gene_set_names()}
    assert sizes == {"IEG": 139, "HKG": 3277, "PRG": 135, "rPRG": 19, "dPRG": 116}
    assert "Wu" in shipped_gene_set("IEG").citation and "Neuron" in shipped_gene_set("IEG").citation
    assert "HRT Atlas" in shipped_gene_set("HKG").citation and "Nucleic Acids" in shipped_gene_set("HKG").citation
    assert "Tyssowski" in shipped_gene_set("rPRG").citation
    assert {"Fos", "Arc", "Egr1", "Npas4"} <= set(shipped_gene_set("ieg").genes)  # names are case-insensitive
    assert set(shipped_gene_set("rPRG").genes) | set(shipped_gene_set("dPRG").genes) == set(shipped_gene_set("PRG").genes)


def test_mouse_symbols_match_the_cortex_data_and_report_the_absent_ones(zeisel):
    match = match_genes(shipped_gene_set("IEG"), zeisel.var_names)
    assert len(match.genes) == 26 and len(match.missing) == 139 - 26
    assert {"Fos", "Junb", "Egr1", "Arc", "Dusp1"} <= set(match.genes)
    assert "Npas4" in match.missing  # not measured in this dataset
    assert list(zeisel.var_names[match.indices]) == match.genes
    assert "26 of 139" in match.summary() and "113 absent" in match.summary()


def test_human_symbols_are_found_through_the_uppercase_form(zeisel):
    human_names = [g.upper() for g in zeisel.var_names]
    mouse = match_genes(shipped_gene_set("IEG"), zeisel.var_names)
    human = match_genes(shipped_gene_set("IEG"), human_names)
    assert human.genes == [g.upper() for g in mouse.genes]  # the data's own spelling is reported
    assert human.missing == mouse.missing
    assert "FOS" in human.genes


def test_an_exact_match_wins_over_a_case_insensitive_one():
    match = match_genes(["Fos", "JUNB"], ["FOS", "Fos", "Junb"])
    assert match.genes == ["Fos", "Junb"] and match.indices.tolist() == [1, 2]


def test_custom_sets_from_a_file_and_from_a_list(tmp_path):
    path = tmp_path / "my activity genes.txt"
    path.write_text("# my list\nFos\n\nArc   # the classic one\nFos\nNotAGene\n")
    gene_set = read_gene_set(path)
    assert gene_set.name == "my activity genes" and gene_set.genes == ("Fos", "Arc", "NotAGene")
    match = match_genes(gene_set, ["Arc", "Gapdh", "FOS"])
    assert match.genes == ["FOS", "Arc"] and match.missing == ["NotAGene"]
    listed = as_gene_set(["Gapdh", " Actb ", ""], name="reference")
    assert listed == GeneSet("reference", ("Gapdh", "Actb"), "custom gene set")
    assert as_gene_set(str(path)).genes == gene_set.genes
    assert as_gene_set("hkg").name == "HKG"


@pytest.mark.parametrize(
    "content, message",
    [(None, "no such gene set file"), ("# only a comment\n\n", "lists no genes"), ("Fos, Arc\n", "one symbol a line")],
)
def test_bad_gene_set_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "genes.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CplmixError, match=message) as error:
        read_gene_set(path)
    assert "\n" not in str(error.value)
    with pytest.raises(CplmixError, match="folder"):
        read_gene_set(tmp_path)
    with pytest.raises(CplmixError, match="is empty"):
        as_gene_set([])


@pytest.fixture(scope="module")
def simulated():
    # 10 types in 3 classes, 33 to 964 cells each; every UMI on the simulated genes (the bundled 'synthetic'
    # depth): at the realistic 10x depth (panel_fraction 0.2) a small type's 20 markers are too sparse to rank
    adata = datasets.simulate(seed=3, panel_fraction=1.0)
    prepared = prepare(adata, CplMixConfig())
    return adata, prepared


def test_markers_of_a_simulated_type_are_its_marker_program(simulated):
    adata, prepared = simulated
    types = adata.obs["true_type"].cat.codes.to_numpy()
    names = list(adata.obs["true_type"].cat.categories)
    scores = marker_scores(prepared.model_input, types, len(names), prepared.genes)
    exclusions = default_marker_exclusions(prepared.genes)
    marker_of = adata.var["marker_of"].reindex(prepared.genes)
    precision = {}
    for k, name in enumerate(names):
        top = scores.markers(k, n=20, exclude=exclusions)
        assert len(top) == 20
        assert not set(top.index) & set(exclusions)
        assert (top["auroc"] >= 0.6).all() and (top["difference"] > 0).all()
        precision[name] = float(np.mean(marker_of[top.index].to_numpy() == name))
    assert min(precision.values()) >= 0.8, precision
    # the convenience function gives the same list (IEG/HKG genes excluded by default)
    smallest = names[-1]
    expected = scores.markers(len(names) - 1, n=10, exclude=exclusions).index.tolist()
    assert marker_genes(prepared.model_input, types, len(names) - 1, prepared.genes, n=10, n_types=len(names)) == expected
    assert adata.obs["true_type"].value_counts()[smallest] < 50  # a small type is found too


def test_markers_from_a_balanced_sample_agree_with_all_cells(simulated):
    adata, prepared = simulated
    types = adata.obs["true_type"].cat.codes.to_numpy()
    full = marker_scores(prepared.model_input, types, 10, prepared.genes)
    sampled = marker_scores(prepared.model_input, types, 10, prepared.genes, max_cells=1000)
    assert sampled.sampled and not full.sampled
    assert sampled.n_cells.max() <= 100 and sampled.n_cells.min() == 33
    top_full = set(full.markers(0, n=20).index)
    top_sampled = set(sampled.markers(0, n=20).index)
    assert len(top_full & top_sampled) >= 15


def test_marker_exclusions_keep_activity_and_housekeeping_genes_out(zeisel):
    prepared = prepare(zeisel, CplMixConfig())
    codes = zeisel.obs["class"].astype("category").cat.codes.to_numpy()
    names = list(zeisel.obs["class"].astype("category").cat.categories)
    scores = marker_scores(prepared.model_input, codes, len(names), prepared.genes)
    oligodendrocytes = scores.markers(names.index("oligodendrocytes"), n=10, exclude=default_marker_exclusions(prepared.genes))
    assert {"Plp1", "Mbp"} <= set(oligodendrocytes.index)
    unfiltered = set(scores.markers(names.index("oligodendrocytes"), n=200).index)
    assert unfiltered & set(default_marker_exclusions(prepared.genes))  # there was something to exclude
    with pytest.raises(CplmixError, match="out of range"):
        scores.markers(len(names))
