"""The one preprocessing path: AnnData in, a gene-selected matrix plus the recipe that produced it out.

Raw counts (non-negative integers) are library-size normalised to the config's ``target_sum`` (10^4) and
log1p-transformed, as scanpy's ``normalize_total`` + ``log1p``; the transform is applied per mini-batch on the device, so the
stored matrix keeps the raw counts (sparse stays sparse) and the negative-binomial likelihood can use them.
At most ``n_genes`` highly variable genes are kept (Seurat-flavour normalised dispersion for counts, variance
otherwise), in their original order. Images (``uns['image_shape']``) keep every pixel and are deskewed
(:func:`deskew_images`) unless ``deskew_images`` is off; anything else is used as it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..config import TARGET_SUM, CplMixConfig
from ..errors import CplmixError
from .simulate import CsrBuilder
from .validate import _iter_row_chunks, check_types_fit_cells, expression_matrix, validate_anndata

LOG1P_NORMALIZE = "log1p_normalize"
AS_IS = "none"


@dataclass
class Preprocessing:
    """The recipe applied to a dataset; stored in checkpoints so new data is prepared the same way."""

    transform: str  # LOG1P_NORMALIZE (counts -> log1p(x / library * target_sum)) or AS_IS
    genes: list[str]  # the model's genes, in the input's order
    target_sum: float = TARGET_SUM
    gene_selection: str = "all"  # "all", "seurat_dispersion" or "variance"
    layer: str | None = None
    image_shape: tuple[int, int] | None = None
    deskew: bool = False  # images sheared upright and centred by their moments (deskew_images)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        """The recipe from its JSON form (a checkpoint header); entries of the wrong type raise
        :class:`CplmixError` naming the entry."""
        if not isinstance(values, dict):
            raise CplmixError("preprocessing is not a mapping")
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise CplmixError(f"unknown preprocessing entries: {', '.join(map(str, unknown))}")
        values = dict(values)
        if values.get("transform") not in (LOG1P_NORMALIZE, AS_IS):
            raise CplmixError(f"unknown preprocessing transform {values.get('transform')!r}")
        genes = values.get("genes")
        if not isinstance(genes, list) or not genes or not all(isinstance(g, str) for g in genes):
            raise CplmixError("the preprocessing gene list is not a non-empty list of names")
        target_sum = values.get("target_sum", TARGET_SUM)
        if isinstance(target_sum, bool) or not isinstance(target_sum, (int, float)) or not 0 < target_sum < float("inf"):
            raise CplmixError(f"preprocessing target_sum {target_sum!r} is not a positive number")
        for key in ("gene_selection", "layer"):
            if values.get(key) is not None and not isinstance(values[key], str):
                raise CplmixError(f"preprocessing {key} is not a string")
        if not isinstance(values.get("deskew", False), bool):
            raise CplmixError("preprocessing deskew is not true or false")
        shape = values.get("image_shape")
        if shape is not None:
            if not isinstance(shape, (list, tuple)) or len(shape) != 2 or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape
            ):
                raise CplmixError("preprocessing image_shape is not two positive integers")
            values["image_shape"] = tuple(shape)
        return cls(**values)


@dataclass
class PreparedData:
    """A dataset ready for the engine (host memory).

    matrix: (cells, genes) float32, CSR or dense: raw counts when ``transform`` is log1p_normalize, else the
    values used as they are. library_size: (cells,) total counts over *all* input genes (None when not counts).
    """

    matrix: np.ndarray | sp.csr_matrix
    library_size: np.ndarray | None
    preprocessing: Preprocessing
    obs_names: pd.Index
    is_counts: bool = False
    extras: dict = field(default_factory=dict)

    @property
    def n_cells(self) -> int:
        return self.matrix.shape[0]

    @property
    def n_genes(self) -> int:
        return self.matrix.shape[1]

    @property
    def genes(self) -> list[str]:
        return self.preprocessing.genes

    def model_input(self, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """The transformed values the encoder sees, (len(rows), genes) float32 dense, computed on the host."""
        rows = slice(None) if rows is None else rows
        block = self.matrix[rows]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        block = block.astype(np.float32, copy=False)
        if self.preprocessing.transform == LOG1P_NORMALIZE:
            scale = self.preprocessing.target_sum / self.library_size[rows]
            block = np.log1p(block * scale[:, None].astype(np.float32))
        return block


def _library_sizes(matrix) -> np.ndarray:
    totals = [np.asarray(block.sum(axis=1)).ravel() for block in _iter_row_chunks(matrix)]
    return np.concatenate(totals).astype(np.float64)


def _gene_moments(matrix, scale: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and unbiased variance of (matrix * scale[:, None]) computed in row chunks."""
    n_rows, n_cols = matrix.shape
    total = np.zeros(n_cols)
    total_sq = np.zeros(n_cols)
    start = 0
    for block in _iter_row_chunks(matrix):
        rows = block.shape[0]
        block = sp.csr_matrix(block, dtype=np.float64) if sp.issparse(block) else np.asarray(block, np.float64)
        if scale is not None:
            factor = scale[start : start + rows]
            block = sp.diags(factor) @ block if sp.issparse(block) else block * factor[:, None]
        total += np.asarray(block.sum(axis=0)).ravel()
        squared = block.multiply(block) if sp.issparse(block) else block**2
        total_sq += np.asarray(squared.sum(axis=0)).ravel()
        start += rows
    mean = total / n_rows
    variance = (total_sq - n_rows * mean**2) / max(n_rows - 1, 1)
    return mean, np.maximum(variance, 0.0)


def highly_variable_genes(matrix, library_size: np.ndarray | None, n_genes: int) -> tuple[np.ndarray, str]:
    """Indices (sorted, original order) of at most ``n_genes`` most variable genes, and the method's name.

    Counts: Seurat-flavour normalised dispersion of library-normalised counts (mean binned in 20 bins),
    as ``scanpy.pp.highly_variable_genes(flavor="seurat")``. Other values: plain variance.
    """
    n_total = matrix.shape[1]
    if n_genes >= n_total:
        return np.arange(n_total), "all"
    if library_size is None:
        _, variance = _gene_moments(matrix, None)
        order = np.argsort(-variance, kind="stable")
        return np.sort(order[:n_genes]), "variance"
    scale = TARGET_SUM / np.maximum(library_size, 1e-12)
    mean, variance = _gene_moments(matrix, scale)
    mean = np.where(mean == 0, 1e-12, mean)
    dispersion = np.log(np.where(variance == 0, np.nan, variance / mean))
    log_mean = np.log1p(mean)
    bins = pd.cut(log_mean, bins=20)
    frame = pd.DataFrame({"dispersion": dispersion, "bin": bins})
    grouped = frame.groupby("bin", observed=False)["dispersion"]
    bin_mean = grouped.transform("mean").to_numpy()
    bin_std = grouped.transform("std").to_numpy()
    bin_std = np.where(np.isnan(bin_std) | (bin_std == 0), 1.0, bin_std)
    normalized = (dispersion - bin_mean) / bin_std
    normalized = np.where(np.isnan(normalized), -np.inf, normalized)
    order = np.argsort(-normalized, kind="stable")
    return np.sort(order[:n_genes]), "seurat_dispersion"


def choose_transform(is_counts: bool, normalize: str, is_image: bool) -> str:
    if normalize == "none" or is_image or not is_counts:
        return AS_IS
    return LOG1P_NORMALIZE


def prepare(
    adata: AnnData,
    config: CplMixConfig | None = None,
    preprocessing: Preprocessing | None = None,
) -> PreparedData:
    """Validate ``adata`` and prepare it for the engine.

    With ``preprocessing`` (from a checkpoint) the same genes and transform are applied; genes the model
    needs but the data lacks raise :class:`CplmixError`. Otherwise genes are selected per ``config``.
    """
    config = config or CplMixConfig()
    layer = preprocessing.layer if preprocessing is not None else config.layer
    labels = config.labels if preprocessing is None else None
    summary = validate_anndata(adata, layer=layer, labels=labels, require_counts=config.likelihood == "nb")
    image_shape = adata.uns.get("image_shape")
    image_shape = tuple(int(v) for v in image_shape) if image_shape is not None else None
    matrix = expression_matrix(adata, layer)

    if preprocessing is None:
        transform = choose_transform(summary.is_counts, config.normalize, image_shape is not None)
        library_size = _library_sizes(matrix) if transform == LOG1P_NORMALIZE else None
        if image_shape is not None:
            gene_index, selection = np.arange(adata.n_vars), "all"
        else:
            gene_index, selection = highly_variable_genes(matrix, library_size, config.n_genes)
        preprocessing = Preprocessing(
            transform=transform,
            genes=[str(g) for g in adata.var_names[gene_index]],
            gene_selection=selection,
            layer=layer,
            image_shape=image_shape,
            deskew=image_shape is not None and config.deskew_images,
            target_sum=float(config.target_sum),
        )
    else:
        position = pd.Index(adata.var_names.astype(str)).get_indexer(preprocessing.genes)
        missing = [g for g, p in zip(preprocessing.genes, position) if p < 0]
        if missing:
            raise CplmixError(
                f"the data lacks {len(missing)} of the model's {len(preprocessing.genes)} genes "
                f"(e.g. {', '.join(missing[:3])}); the checkpoint was trained on another gene set"
            )
        if preprocessing.transform == LOG1P_NORMALIZE and not summary.is_counts:
            raise CplmixError("the model was trained on raw counts but this data's X does not hold counts")
        gene_index = position
        library_size = _library_sizes(matrix) if preprocessing.transform == LOG1P_NORMALIZE else None

    if config.likelihood == "nb" and preprocessing.transform != LOG1P_NORMALIZE:
        raise CplmixError("the negative-binomial likelihood needs raw counts with --normalize auto")
    selected = _select_columns(matrix, gene_index)
    if preprocessing.deskew:
        selected = deskew_images(selected, preprocessing.image_shape)
    check_types_fit_cells(config.n_types, adata.n_obs)
    return PreparedData(
        matrix=selected,
        library_size=None if library_size is None else library_size.astype(np.float32),
        preprocessing=preprocessing,
        obs_names=adata.obs_names.copy(),
        is_counts=summary.is_counts,
    )


#: Images per chunk of :func:`deskew_images` (bounds its working memory to a few chunk x H x W floats).
DESKEW_CHUNK = 4096


def deskew_images(values: np.ndarray | sp.csr_matrix, image_shape: tuple[int, int]) -> np.ndarray | sp.csr_matrix:
    """Flattened images (N, H*W) sheared upright and centred, as (N, H*W) float32 (CSR when the input is).

    The moments of each image's intensity above its background (its minimum) give its centre of mass (r, c)
    and slant alpha = cov(row, col) / var(row); the output pixel (i, j) takes the input's bilinear value at
    (i + r - r0, j + c - c0 + alpha (i - r0)), with (r0, c0) the image centre and the background outside the
    image: the deskewing of LeCun et al. (1998), which removes the slant that writers add to the same digit.
    A uniform image is kept as it is. Values stay within each image's range.
    """
    import torch  # lazy: only image deskewing uses torch; reading and preparing data does not

    height, width = image_shape
    if height * width != values.shape[1]:
        raise CplmixError(f"image_shape {height}x{width} does not match the data's {values.shape[1]} values per image")
    rows = torch.arange(height, dtype=torch.float64).view(1, height, 1)
    cols = torch.arange(width, dtype=torch.float64).view(1, 1, width)
    row_centre, col_centre = (height - 1) / 2.0, (width - 1) / 2.0
    blocks = []
    for start in range(0, values.shape[0], DESKEW_CHUNK):
        block = values[start : start + DESKEW_CHUNK]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        images = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float64)).view(-1, height, width)
        background = images.amin(dim=(1, 2), keepdim=True)
        weight = images - background  # intensity above the background, >= 0
        # a uniform image has no weight: its moments come out 0 and any shift of it is its background again
        total = weight.sum(dim=(1, 2), keepdim=True).clamp(min=torch.finfo(torch.float64).tiny)
        row_mean = (weight * rows).sum(dim=(1, 2), keepdim=True) / total
        col_mean = (weight * cols).sum(dim=(1, 2), keepdim=True) / total
        row_var = (weight * (rows - row_mean) ** 2).sum(dim=(1, 2), keepdim=True) / total
        covariance = (weight * (rows - row_mean) * (cols - col_mean)).sum(dim=(1, 2), keepdim=True) / total
        slant = torch.where(row_var > 0, covariance / row_var.clamp(min=1e-12), torch.zeros_like(row_var))
        source_row = rows + (row_mean - row_centre)  # (n, H, 1)
        source_col = cols + (col_mean - col_centre) + slant * (rows - row_centre)  # (n, H, W)
        grid = torch.stack(  # grid_sample's (x, y) in [-1, 1], corners on the pixel centres
            [2.0 * source_col / max(width - 1, 1) - 1.0, (2.0 * source_row / max(height - 1, 1) - 1.0).expand_as(source_col)],
            dim=-1,
        )
        warped = torch.nn.functional.grid_sample(
            weight.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        out = (warped.view(-1, height, width) + background).view(-1, height * width).numpy().astype(np.float32)
        blocks.append(sp.csr_matrix(out) if sp.issparse(values) else out)
    if sp.issparse(values):
        return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix(values.shape, dtype=np.float32)
    return np.vstack(blocks) if blocks else np.zeros(values.shape, dtype=np.float32)


def _select_columns(matrix, gene_index: np.ndarray):
    """Column subset as float32, CSR when the input is sparse, read in row chunks (backed files too) and
    written into one growing buffer (sparse) or one preallocated array (dense), so the peak stays near the
    output's size instead of the chunks plus their concatenation."""
    n_rows = matrix.shape[0]
    builder = dense = None
    start = 0
    for block in _iter_row_chunks(matrix):
        if sp.issparse(block):
            block = sp.csr_matrix(block)[:, gene_index].astype(np.float32)
            block.sort_indices()
            builder = builder or CsrBuilder(n_rows, len(gene_index))
            builder.append(block.data, block.indices, np.diff(block.indptr))
        else:
            dense = np.empty((n_rows, len(gene_index)), np.float32) if dense is None else dense
            dense[start : start + block.shape[0]] = np.asarray(block)[:, gene_index]
        start += block.shape[0]
    if builder is not None:
        return builder.finish()
    return dense if dense is not None else np.zeros((n_rows, len(gene_index)), np.float32)
