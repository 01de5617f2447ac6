"""Image deskewing in the data path: slanted strokes set upright and centred, the recipe kept in the run and
applied to new images, the option to keep images as they are, and what it changes for digits."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from cplmix_explorer import CplMixVAE, datasets
from cplmix_explorer.config import CplMixConfig
from cplmix_explorer.data.preprocess import Preprocessing, deskew_images, prepare
from cplmix_explorer.errors import CplmixError
from cplmix_explorer.model.neighbors import nearest_neighbors

SHAPE = (28, 28)


def moments(image: np.ndarray) -> tuple[float, float, float]:
    """Centre of mass (row, col) and slant cov(row, col) / var(row) of one (28, 28) image."""
    rows, cols = np.mgrid[: image.shape[0], : image.shape[1]]
    total = image.sum()
    row, col = (rows * image).sum() / total, (cols * image).sum() / total
    slant = ((rows - row) * (cols - col) * image).sum() / ((rows - row) ** 2 * image).sum()
    return row, col, slant


def slanted_stroke(slant: float, row_shift: int = 0, col_shift: int = 0) -> np.ndarray:
    """A 2-pixel-wide stroke from row 5 to 22 leaning by ``slant`` columns per row, moved off centre."""
    image = np.zeros(SHAPE, dtype=np.float32)
    for row in range(5, 23):
        col = int(round(13 + slant * (row - 13.5)))
        image[row + row_shift, col + col_shift : col + col_shift + 2] = 1.0
    return image


def test_a_slanted_off_centre_stroke_is_set_upright_and_centred():
    image = slanted_stroke(0.5, row_shift=3, col_shift=-6)
    row, col, slant = moments(image)
    assert abs(slant) > 0.4 and abs(col - 13.5) > 4  # leaning and off centre before
    out = deskew_images(image.reshape(1, -1), SHAPE)
    assert out.shape == (1, 784) and out.dtype == np.float32
    row, col, slant = moments(out.reshape(SHAPE))
    assert abs(slant) < 0.05
    assert abs(row - 13.5) < 0.3 and abs(col - 13.5) < 0.3
    assert 0.0 <= out.min() and out.max() <= 1.0  # bilinear: within the input's range and 0
    assert out.sum() == pytest.approx(image.sum(), rel=0.05)  # the stroke is moved, not lost


def test_the_background_fills_what_the_shift_uncovers():
    image = slanted_stroke(0.5, row_shift=3, col_shift=-6) * 2.0 - 1.0  # background -1, stroke +1
    out = deskew_images(image.reshape(1, -1), SHAPE).reshape(SHAPE)
    assert out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6
    assert np.allclose(out[:, :3], -1.0)  # the columns the shift to the right uncovers are background, not 0
    row, col, slant = moments(out + 1.0)
    assert abs(slant) < 0.05 and abs(col - 13.5) < 0.3


def test_blank_images_stay_blank_and_sparse_input_gives_the_same_values():
    images = np.stack([np.zeros(SHAPE, np.float32), slanted_stroke(-0.3), np.full(SHAPE, 0.5, np.float32)]).reshape(3, -1)
    dense = deskew_images(images, SHAPE)
    assert not dense[0].any() and np.allclose(dense[2], 0.5)  # uniform images are kept
    sparse = deskew_images(sp.csr_matrix(images), SHAPE)
    assert sp.issparse(sparse) and np.allclose(sparse.toarray(), dense)
    with pytest.raises(CplmixError, match="image_shape 28x28 does not match the data's 100 values"):
        deskew_images(np.zeros((2, 100), np.float32), SHAPE)


def test_digits_are_deskewed_by_default_and_kept_as_they_are_on_request():
    adata = datasets.load("mnist5k")[:400].copy()
    raw = np.asarray(adata.X, dtype=np.float32)
    prepared = prepare(adata, CplMixConfig(n_types=10))
    assert prepared.preprocessing.deskew
    assert np.allclose(prepared.matrix, deskew_images(raw, SHAPE)) and not np.allclose(prepared.matrix, raw)
    kept = prepare(adata, CplMixConfig(n_types=10, deskew_images=False))
    assert not kept.preprocessing.deskew and np.array_equal(kept.matrix, raw)


def test_expression_data_is_never_deskewed(mixture):
    prepared = prepare(mixture, CplMixConfig(n_types=4, deskew_images=True))
    assert not prepared.preprocessing.deskew


def test_the_recipe_deskews_new_images_as_in_training(tmp_path):
    adata = datasets.load("mnist5k")[:300].copy()
    model = CplMixVAE(adata, n_types=10, steps=5, state_dim=4, type_init="random", seed=0)
    model.train(progress=False)
    model.save(tmp_path)
    loaded = CplMixVAE.load(tmp_path, adata.copy())
    assert loaded.prepared.preprocessing.deskew
    assert np.array_equal(loaded.prepared.matrix, model.prepared.matrix)
    assert np.allclose(loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-5)
    # a recipe written before deskewing existed has no entry: images are used as they are
    old = Preprocessing.from_dict({k: v for k, v in model.prepared.preprocessing.to_dict().items() if k != "deskew"})
    assert not old.deskew
    with pytest.raises(CplmixError, match="preprocessing deskew is not true or false"):
        Preprocessing.from_dict({**model.prepared.preprocessing.to_dict(), "deskew": "yes"})


def test_the_train_command_turns_deskewing_off(tmp_path):
    from cplmix_explorer.cli import main

    path = tmp_path / "digits.h5ad"
    datasets.load("mnist5k")[:300].copy().write_h5ad(path)
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--steps", "3", "--types", "10",
                 "--no-deskew-images", "--type-init", "random", "--quiet"]) == 0
    adata = datasets.load("mnist5k")[:300].copy()
    assert not CplMixVAE.load(tmp_path / "run", adata).prepared.preprocessing.deskew


def test_deskewed_digits_have_neighbors_of_the_same_digit_more_often():
    """What it is for: the 15 nearest neighbors in pixel space (the graph of the neighbor walks and of the
    initial partition) more often show the same digit once the writers' slant is removed."""
    adata = datasets.load("mnist5k")
    digits = np.asarray(adata.obs["digit"])

    def purity(values: np.ndarray) -> float:
        neighbors = nearest_neighbors(torch.from_numpy(values)).numpy()
        return float((digits[neighbors] == digits[:, None]).mean())

    raw = purity(np.asarray(adata.X, dtype=np.float32))
    deskewed = purity(prepare(adata, CplMixConfig(n_types=10)).matrix)
    assert deskewed > raw + 0.03, (raw, deskewed)
