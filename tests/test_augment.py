"""The generative augmenter: every term of its objective trains the generator, trained copies keep the types'
expression profiles, `cplmix augmenter train` -> `cplmix train --augment generative`, and refused inputs."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import mixture_counts

from cplmix_explorer.api import CplMixVAE
from cplmix_explorer.cli import main
from cplmix_explorer.config import AugmenterConfig
from cplmix_explorer.data.preprocess import prepare
from cplmix_explorer.model.generative import (
    METADATA_NAME,
    WEIGHTS_NAME,
    AugmentationGenerator,
    Discriminator,
    discriminator_loss,
    generator_loss,
    load_generative_augmenter,
)
from cplmix_explorer.train.augmenter import train_generative_augmenter

#: Small but real: the augmenter trains on 400 cells of 4 types in well under a minute on 2 cores.
TRAIN_FLAGS = ["--steps", "150", "--hidden-dim", "32", "--batch-size", "64", "--noise-dim", "8", "--quiet"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    assert err[0].startswith("cplmix: error: ")
    return err[0]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "mixture.h5ad"
    mixture_counts(n_cells=400, n_genes=80).write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def trained_augmenter(data_file, tmp_path_factory):
    """An augmenter trained long enough to judge its copies (through the command line)."""
    out = tmp_path_factory.mktemp("augmenters") / "augmenter"
    assert main(["augmenter", "train", str(data_file), "--out", str(out), *TRAIN_FLAGS]) == 0
    return out


@pytest.fixture(scope="module")
def saved_augmenter(data_file, tmp_path_factory):
    """A briefly trained augmenter (Python API): for the plumbing, loading and refusal tests."""
    out = tmp_path_factory.mktemp("augmenters") / "quick"
    options = AugmenterConfig(steps=5, hidden_dim=16, batch_size=32, noise_dim=4)
    train_generative_augmenter(str(data_file), out, options=options, progress=False)
    return out


def test_every_term_of_the_objective_sends_a_gradient_to_the_generator():
    torch.manual_seed(0)
    generator = AugmentationGenerator(n_genes=30, latent_dim=4, noise_dim=5, hidden_dim=16)
    discriminator = Discriminator(n_genes=30, hidden_dim=16)
    x = torch.log1p(torch.poisson(torch.rand(64, 30) * 3))
    # a large margin keeps the triplet hinge active, so its gradient is defined at this untrained start
    loss = generator_loss(generator, discriminator, x, AugmenterConfig(triplet_margin=10.0))
    for term in ("adversarial", "reconstruction", "triplet", "feature"):
        generator.zero_grad()
        getattr(loss, term).backward(retain_graph=True)
        output_gradient = generator.output.weight.grad
        assert output_gradient is not None and output_gradient.abs().sum() > 0, term
        if term != "reconstruction":  # the reconstruction is the noise-free copy; the others see the noise
            noise_gradient = generator.noise_map.weight.grad
            assert noise_gradient is not None and noise_gradient.abs().sum() > 0, f"{term}: noise branch"
    # the discriminator's own loss trains the discriminator and never the generator
    generator.zero_grad()
    discriminator.zero_grad()
    discriminator_loss(discriminator, x, loss.copies).backward()
    assert all(p.grad is None for p in generator.parameters())
    assert sum(p.grad.abs().sum() for p in discriminator.parameters() if p.grad is not None) > 0


@pytest.mark.slow
def test_copies_keep_shape_and_type_statistics(trained_augmenter, data_file):
    import anndata

    adata = anndata.read_h5ad(data_file)
    prepared = prepare(adata)
    augmenter = load_generative_augmenter(trained_augmenter, genes=prepared.genes, transform="log1p_normalize")
    x = torch.as_tensor(prepared.model_input())
    torch.manual_seed(0)
    copies = augmenter(x, 3)
    assert copies.shape == (3, *x.shape)
    assert not copies.requires_grad and (copies >= 0).all()
    # copies are new cells, not the input, and every arm draws its own
    assert (copies[0] - x).abs().mean() > 0.1
    assert (copies[0] - copies[1]).abs().mean() > 0.1
    types = adata.obs["type"].to_numpy()
    names = sorted(set(types))
    original = np.stack([x[types == t].mean(0).numpy() for t in names])
    for arm in range(3):
        augmented = np.stack([copies[arm][types == t].mean(0).numpy() for t in names])
        correlation = np.corrcoef(original, augmented)[: len(names), len(names):]
        own = np.diag(correlation)
        others = np.where(np.eye(len(names), dtype=bool), -np.inf, correlation).max(axis=1)
        assert own.min() > 0.85, correlation
        assert np.all(own > others + 0.5), correlation  # each type's copies look like that type, not another


def test_saved_folder_holds_safetensors_weights_and_json_metadata(saved_augmenter):
    from safetensors.torch import load_file

    assert {p.name for p in saved_augmenter.iterdir()} == {WEIGHTS_NAME, METADATA_NAME}
    metadata = json.loads((saved_augmenter / METADATA_NAME).read_text())
    assert len(metadata["genes"]) == 80 and metadata["preprocessing"]["transform"] == "log1p_normalize"
    assert metadata["architecture"]["noise_dim"] == 4 and len(metadata["sha256"]) == 64
    assert metadata["history"]["step"][-1] == 5
    weights = load_file(saved_augmenter / WEIGHTS_NAME)  # raw tensors, nothing unpickled
    assert weights["noise_map.weight"].shape == (4, 4)


@pytest.mark.slow
def test_cplmix_train_with_the_generative_augmenter(trained_augmenter, data_file, tmp_path):
    run = tmp_path / "run"
    code = main(["train", str(data_file), "--out", str(run), "--steps", "20", "--types", "4", "--batch-size", "64",
                 "--hidden-dim", "16", "--n-hidden-layers", "2",
                 "--augment", "generative", "--augmenter-path", str(trained_augmenter), "--quiet"])
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["augment"] == "generative" and metrics["status"] == "completed"
    assert np.isfinite(metrics["history"]["loss"]).all()


def test_training_the_mixture_model_leaves_the_generator_unchanged(saved_augmenter, data_file):
    model = CplMixVAE(str(data_file), n_types=4, augment="generative", augmenter_path=str(saved_augmenter),
                      hidden_dim=16, n_hidden_layers=2, batch_size=64, device="cpu")
    trainer = model.make_trainer()
    before = {k: v.clone() for k, v in trainer.augmenter.state_dict().items()}
    trainer.fit(5)
    assert all(torch.equal(before[k], v) for k, v in trainer.augmenter.state_dict().items())
    assert not any(p.requires_grad for p in trainer.augmenter.parameters())
    assert not trainer.augmenter.generator.training  # BatchNorm statistics frozen


def test_tampered_weights_are_refused_and_nothing_is_written(saved_augmenter, data_file, tmp_path, capsys):
    tampered = tmp_path / "tampered"
    shutil.copytree(saved_augmenter, tampered)
    weights = bytearray((tampered / WEIGHTS_NAME).read_bytes())
    weights[-5] ^= 0xFF  # one byte of a weight
    (tampered / WEIGHTS_NAME).write_bytes(bytes(weights))
    run = tmp_path / "run"
    code = main(["train", str(data_file), "--out", str(run), "--steps", "5", "--types", "4",
                 "--augment", "generative", "--augmenter-path", str(tampered)])
    assert code == 2
    assert "checksum" in _error_line(capsys)
    assert not run.exists()


def test_augmenter_from_other_genes_is_refused(saved_augmenter, data_file, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", str(data_file), "--out", str(run), "--steps", "5", "--types", "4", "--genes", "50",
                 "--augment", "generative", "--augmenter-path", str(saved_augmenter)])
    assert code == 2
    line = _error_line(capsys)
    assert "trained on 80 genes, this run uses 50" in line and "--genes" in line
    assert not run.exists()


def test_generative_augmentation_needs_a_trained_augmenter(data_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(data_file), "--out", str(run), "--augment", "generative"]) == 2
    assert "cplmix augmenter train" in _error_line(capsys)
    assert main(["train", str(data_file), "--out", str(run), "--augment", "generative",
                 "--augmenter-path", str(tmp_path)]) == 2
    assert "no generative augmenter" in _error_line(capsys)
    assert not run.exists()


def test_augmenter_train_refuses_bad_input(saved_augmenter, data_file, tmp_path, capsys):
    assert main(["augmenter", "train", str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "a")]) == 2
    assert "no such file" in _error_line(capsys)
    assert main(["augmenter", "train", str(data_file), "--out", str(saved_augmenter), "--steps", "2"]) == 2
    assert "already exists" in _error_line(capsys)
    negative = mixture_counts(n_cells=40, n_genes=20)
    negative.X = negative.X.toarray() - 1.0
    negative_file = tmp_path / "negative.h5ad"
    negative.write_h5ad(negative_file)
    assert main(["augmenter", "train", str(negative_file), "--out", str(tmp_path / "b"), "--steps", "2"]) == 2
    assert "negative values" in _error_line(capsys)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
