"""A single-cell count simulator with known types and known continuous, type-dependent states.

The generative model (per cell c of type k in class m, gene g; all logs natural)::

    eta[c, g]  = base[g] + class_lfc[m, g] + type_lfc[k, g] + sum_j gain[k, j] * loading[k, j, g] * (state[c, j] - 1/2)
    mu[c, g]   = library[c] * exp(eta[c, g]) / sum_g' exp(eta[c, g'])        (expected counts; sum = library)
    counts     ~ NegativeBinomial(mean mu, variance mu + dispersion[g] * mu^2)
    dropout    : a non-zero count is set to 0 with probability 1 / (1 + exp(slope * (log mu - midpoint)))

Programs of genes (``var['program']``):

- ``marker``: up in one type (type markers) or in every type of one class (class markers, the shared class
  program of a hierarchy); ``var['marker_of']`` names the type or the class.
- ``ieg``: immediate-early genes (real mouse symbols from the shipped Wu et al. 2017 list) driven by the
  activity states (state dimensions 0, 2, 4, ...) with a type-dependent gain: its sign is the direction of
  the response, some types have zero gain (they do not respond), and the per-type loadings make each type
  use the program differently.
- ``hkg``: housekeeping / metabolic genes (real symbols from the HRT Atlas list), higher expressed, driven
  by the metabolic states (dimensions 1, 3, ...) with a positive type-dependent gain.
- ``background``: no type or state effect.

States are Uniform(0, 1) per cell and dimension, independent of the type. Type abundances fall
geometrically from the largest type to the smallest (``abundance_ratio``), types are dealt round-robin to
classes so every class holds large and small types. Library sizes vary per type and per cell (log-normal).

Determinism: the parameters and the per-cell ground truth come from streams seeded by ``seed``; counts are
drawn in fixed blocks of :data:`RNG_BLOCK_CELLS` cells, each with its own stream, so the result does not
depend on ``chunk_size`` (which only bounds memory: one dense chunk of ``chunk_size x n_genes`` at a time).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import rankdata
from anndata import AnnData

from ..errors import CplmixError

#: Cells per random stream of the count draws (fixed, so chunked and one-shot generation agree).
RNG_BLOCK_CELLS = 1024
#: Version of the generative model recorded in ``uns['simulation']`` (bump when the output changes).
SIMULATOR_VERSION = 2  # 2: panel_fraction (default 0.2; 1.0 gives version 1's counts)
PROGRAMS = ("marker", "ieg", "hkg", "background")

_PARAMETER_STREAM, _CELL_STREAM, _COUNT_STREAM = 0, 1, 2


@lru_cache(maxsize=None)
def gene_set_symbols(filename: str) -> tuple[str, ...]:
    """Symbols of a shipped gene-set file (``data/files/gene_sets/<filename>``), in file order."""
    text = resources.files("cplmix_explorer.data").joinpath("files", "gene_sets", filename).read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def ieg_symbols() -> tuple[str, ...]:
    return gene_set_symbols("mouse_ieg_wu2017.txt")


def hkg_symbols() -> tuple[str, ...]:
    """Housekeeping symbols that are not also immediate-early genes (the two programs stay disjoint)."""
    immediate_early = set(ieg_symbols())
    return tuple(s for s in gene_set_symbols("mouse_housekeeping_hrt_atlas.txt") if s not in immediate_early)


def state_program(dimension: int) -> str:
    """The program a state dimension drives: 'ieg' for even dimensions (activity), 'hkg' for odd (metabolic)."""
    return "ieg" if dimension % 2 == 0 else "hkg"


def geometric_sizes(n_cells: int, n_types: int, abundance_ratio: float) -> np.ndarray:
    """(n_types,) cell counts falling geometrically from the largest to the smallest (ratio ~ abundance_ratio),
    summing to n_cells, each at least 1 (largest-remainder rounding)."""
    weights = abundance_ratio ** (-np.arange(n_types) / max(n_types - 1, 1))
    spare = n_cells - n_types
    exact = spare * weights / weights.sum()
    sizes = np.floor(exact).astype(np.int64)
    remainder_order = np.argsort(-(exact - sizes), kind="stable")
    sizes[remainder_order[: spare - sizes.sum()]] += 1
    return sizes + 1


def _fail(message: str) -> None:
    raise CplmixError(f"simulate: {message}")


def simulate(
    n_cells: int = 3000,
    n_genes: int = 1500,
    n_types: int = 10,
    n_classes: int | None = 3,
    state_dim: int = 2,
    *,
    abundance_ratio: float = 30.0,
    type_sizes: Sequence[int] | None = None,
    markers_per_type: int = 20,
    markers_per_class: int = 30,
    marker_log_fold: tuple[float, float] = (1.5, 3.0),
    n_ieg: int = 80,
    n_hkg: int = 200,
    activity_gain: float = 2.5,
    metabolic_gain: float = 1.5,
    n_unresponsive: int = 1,
    gains: np.ndarray | Sequence[Sequence[float]] | None = None,
    library_size: float = 3000.0,
    panel_fraction: float = 0.2,
    library_spread: float = 0.3,
    dispersion: float = 0.2,
    dropout_midpoint: float | None = -1.0,
    dropout_slope: float = 1.5,
    seed: int = 0,
    chunk_size: int = 8 * RNG_BLOCK_CELLS,
) -> AnnData:
    """Simulated raw counts with ground truth for types, classes and continuous states.

    Parameters
    ----------
    n_cells, n_genes, n_types: shape. ``n_classes``: classes of the type hierarchy (types of a class share a
        class marker program); None or 0 for flat types.
    state_dim: continuous state dimensions S; even dimensions drive the IEG program, odd ones the HKG program.
    abundance_ratio: cells of the largest type / cells of the smallest (geometric fall-off); or
        ``type_sizes`` (n_types,) to set the counts (their sum overrides ``n_cells``).
    markers_per_type, markers_per_class, marker_log_fold: marker programs; each marker's log fold change
        is drawn uniformly from ``marker_log_fold``.
    n_ieg, n_hkg: genes of the IEG (<= 139) and HKG programs, named with real mouse symbols.
    activity_gain, metabolic_gain: typical |log fold change| of the IEG / HKG program from state 0 to 1.
        Activity gains get a type-dependent magnitude and sign (about a third of the responsive types go
        down); ``n_unresponsive`` of the larger types get zero activity gain. Metabolic gains are positive.
        ``gains`` (n_types, state_dim) overrides all of this.
    library_size: median UMIs per cell over its whole transcriptome (10x: a few thousand);
        ``panel_fraction``: the share of them that falls on the simulated genes (a panel of variable genes of
        the transcriptome; 0.2 gives about 10 % non-zeros at 2,000 genes, as 10x data restricted to 2,000
        variable genes; 1.0 puts every UMI on the panel: denser data, as deep full-length protocols);
        ``library_spread``: sd of the log library size across cells.
    dispersion: mean negative-binomial dispersion (variance = mu + dispersion * mu^2), varies per gene.
    dropout_midpoint, dropout_slope: log mean count at which half of the non-zero counts drop out, and the
        steepness; ``dropout_midpoint=None`` disables dropout.
    seed: same seed, same data. chunk_size: cells generated per dense chunk (memory only; rounded up to a
        multiple of RNG_BLOCK_CELLS; does not change the result).

    Returns
    -------
    AnnData (n_cells, n_genes) with
        X: CSR float32 raw counts (integers); obs_names ``sim-cell-<i>``, var_names unique;
        obs['true_type'] (categorical 'T01'.. by decreasing abundance), obs['true_class'] (categorical
        'C1'.., when hierarchical), obs['true_state_<j>'] (float in [0, 1]) for each state dimension,
        obs['true_library_size'] (expected counts on the simulated genes);
        obsm['true_state'] (n_cells, S) float32;
        var['program'] (categorical: marker, ieg, hkg, background), var['marker_of'] (the type or class of a
        marker gene, '' otherwise), var['state_dimension'] (the state dimension driving an IEG/HKG gene,
        -1 otherwise);
        uns['simulation']: every parameter, plus 'type_sizes', 'class_of_type', 'gains' (type -> list of S
        gains, log fold change per unit of state), 'state_programs' (program of each state dimension),
        'responsive' (type -> list of S booleans: non-zero gain), 'version'.
    """
    n_classes = int(n_classes or 0)
    if type_sizes is not None:
        sizes = np.asarray(type_sizes, dtype=np.int64)
        if sizes.ndim != 1 or len(sizes) != n_types:
            _fail(f"type_sizes must list one size per type ({n_types}), got {len(np.atleast_1d(sizes))}")
        if (sizes < 1).any():
            _fail("every type needs at least one cell in type_sizes")
        n_cells = int(sizes.sum())
    _check_arguments(
        n_cells, n_genes, n_types, n_classes, state_dim, abundance_ratio, markers_per_type, markers_per_class,
        marker_log_fold, n_ieg, n_hkg, n_unresponsive, library_size, library_spread, dispersion, chunk_size,
    )
    if not 0 < panel_fraction <= 1:
        _fail(f"panel_fraction must be in (0, 1], got {panel_fraction}")
    if type_sizes is None:
        sizes = geometric_sizes(n_cells, n_types, abundance_ratio)

    parameters = np.random.default_rng([seed, _PARAMETER_STREAM])
    type_names = [f"T{k + 1:0{max(2, len(str(n_types)))}d}" for k in range(n_types)]
    class_names = [f"C{m + 1}" for m in range(n_classes)]
    class_of_type = np.arange(n_types) % n_classes if n_classes else np.full(n_types, -1)

    # -- genes: programs, names, base expression --------------------------------------------------------
    n_type_markers = markers_per_type * n_types
    n_class_markers = markers_per_class * n_classes
    n_markers = n_class_markers + n_type_markers
    n_background = n_genes - n_markers - n_ieg - n_hkg
    program = np.array(["marker"] * n_markers + ["ieg"] * n_ieg + ["hkg"] * n_hkg + ["background"] * n_background)
    marker_of = np.array(
        [class_names[i // markers_per_class] for i in range(n_class_markers)]
        + [type_names[i // markers_per_type] for i in range(n_type_markers)]
        + [""] * (n_genes - n_markers),
        dtype=object,
    )
    ieg_names = list(parameters.choice(ieg_symbols(), size=n_ieg, replace=False))
    hkg_names = list(parameters.choice(hkg_symbols(), size=n_hkg, replace=False))
    gene_names = (
        [f"Sim-marker-{i + 1:03d}" for i in range(n_markers)] + ieg_names + hkg_names
        + [f"Sim-bg-{i + 1:04d}" for i in range(n_background)]
    )
    base = parameters.normal(-1.0, 1.2, n_genes)  # background: mostly low, a few high genes
    base[program == "marker"] = parameters.normal(-0.5, 1.0, n_markers)
    base[program == "ieg"] = parameters.normal(-0.3, 0.7, n_ieg)
    base[program == "hkg"] = parameters.normal(0.5, 0.5, n_hkg)
    base = np.maximum(base, -2.5)  # no gene so rare that a few hundred cells never show it
    gene_dispersion = dispersion * parameters.lognormal(0.0, 0.5, n_genes)

    # -- type profiles: base + class program + type program (K, G) ---------------------------------------
    low, high = marker_log_fold
    profile = np.tile(base, (n_types, 1))
    for m in range(n_classes):
        genes = np.arange(m * markers_per_class, (m + 1) * markers_per_class)
        profile[np.ix_(class_of_type == m, genes)] += parameters.uniform(low, high, len(genes))
    for k in range(n_types):
        genes = n_class_markers + np.arange(k * markers_per_type, (k + 1) * markers_per_type)
        profile[k, genes] += parameters.uniform(low, high, len(genes))

    # -- state responses: (K, S, G) log fold change per unit of state ------------------------------------
    gain_table = _gains(parameters, gains, n_types, state_dim, activity_gain, metabolic_gain, n_unresponsive)
    response = np.zeros((n_types, state_dim, n_genes))
    state_dimension = np.full(n_genes, -1, dtype=np.int64)
    for j in range(state_dim):
        genes = np.flatnonzero(program == state_program(j))
        state_dimension[genes] = j  # with S > 2 a gene reports the last dimension driving its program
        shared_loading = parameters.uniform(0.5, 1.5, len(genes))
        loading = shared_loading * parameters.lognormal(0.0, 0.4, (n_types, len(genes)))
        loading /= loading.mean(axis=1, keepdims=True)  # gain = mean log fold change over the program
        response[:, j, genes] = gain_table[:, j : j + 1] * loading
    type_library = parameters.lognormal(0.0, 0.25, n_types)

    # -- cells: types, states, library sizes ---------------------------------------------------------------
    cells = np.random.default_rng([seed, _CELL_STREAM])
    cell_type = cells.permutation(np.repeat(np.arange(n_types), sizes))
    state = cells.uniform(0.0, 1.0, (n_cells, state_dim))
    library = library_size * panel_fraction * type_library[cell_type] * cells.lognormal(0.0, library_spread, n_cells)

    # -- counts, in chunks of whole RNG blocks --------------------------------------------------------------
    chunk_rows = int(np.ceil(chunk_size / RNG_BLOCK_CELLS)) * RNG_BLOCK_CELLS
    profile32, response32 = profile.astype(np.float32), response.astype(np.float32)
    builder = CsrBuilder(n_cells, n_genes)
    for start in range(0, n_cells, chunk_rows):
        stop = min(start + chunk_rows, n_cells)
        rows = slice(start, stop)
        # expected counts in float32 (half the memory traffic of the largest arrays; draws are float64)
        eta = profile32[cell_type[rows]]
        for j in range(state_dim):
            eta += (state[rows, j : j + 1] - 0.5).astype(np.float32) * response32[cell_type[rows], j]
        eta -= eta.max(axis=1, keepdims=True)
        mean = np.exp(eta, out=eta)
        mean *= (library[rows] / mean.sum(axis=1, dtype=np.float64)).astype(np.float32)[:, None]
        _draw_counts(mean, gene_dispersion, start, seed, dropout_midpoint, dropout_slope, builder)
        del eta, mean
    matrix = builder.finish()

    # -- AnnData --------------------------------------------------------------------------------------------
    width = len(str(n_cells))
    obs = pd.DataFrame(index=pd.Index([f"sim-cell-{i:0{width}d}" for i in range(n_cells)]))
    obs["true_type"] = pd.Categorical.from_codes(cell_type, categories=type_names)
    if n_classes:
        obs["true_class"] = pd.Categorical.from_codes(class_of_type[cell_type], categories=class_names)
    for j in range(state_dim):
        obs[f"true_state_{j}"] = state[:, j].astype(np.float32)
    obs["true_library_size"] = library.astype(np.float32)
    var = pd.DataFrame(
        {
            "program": pd.Categorical(program, categories=list(PROGRAMS)),
            "marker_of": marker_of.astype(str),
            "state_dimension": state_dimension,
        },
        index=pd.Index(gene_names),
    )
    adata = AnnData(X=matrix, obs=obs, var=var)
    adata.obsm["true_state"] = state.astype(np.float32)
    adata.uns["simulation"] = {
        "version": SIMULATOR_VERSION,
        "seed": int(seed),
        "n_cells": int(n_cells),
        "n_genes": int(n_genes),
        "n_types": int(n_types),
        "n_classes": int(n_classes),
        "state_dim": int(state_dim),
        "abundance_ratio": float(abundance_ratio),
        "markers_per_type": int(markers_per_type),
        "markers_per_class": int(markers_per_class),
        "marker_log_fold": [float(low), float(high)],
        "n_ieg": int(n_ieg),
        "n_hkg": int(n_hkg),
        "activity_gain": float(activity_gain),
        "metabolic_gain": float(metabolic_gain),
        "n_unresponsive": int(n_unresponsive),
        "library_size": float(library_size),
        "panel_fraction": float(panel_fraction),
        "library_spread": float(library_spread),
        "dispersion": float(dispersion),
        "dropout": dropout_midpoint is not None,
        "dropout_midpoint": float(dropout_midpoint) if dropout_midpoint is not None else float("nan"),
        "dropout_slope": float(dropout_slope),
        "state_distribution": "uniform(0, 1)",
        "state_programs": [state_program(j) for j in range(state_dim)],
        "type_sizes": {name: int(n) for name, n in zip(type_names, sizes)},
        "class_of_type": {name: (class_names[m] if m >= 0 else "") for name, m in zip(type_names, class_of_type)},
        "gains": {name: [float(g) for g in gain_table[k]] for k, name in enumerate(type_names)},
        "responsive": {name: [bool(g != 0) for g in gain_table[k]] for k, name in enumerate(type_names)},
    }
    return adata


def _check_arguments(
    n_cells, n_genes, n_types, n_classes, state_dim, abundance_ratio, markers_per_type, markers_per_class,
    marker_log_fold, n_ieg, n_hkg, n_unresponsive, library_size, library_spread, dispersion, chunk_size,
) -> None:
    if n_types < 1:
        _fail(f"n_types must be at least 1, got {n_types}")
    if n_cells < n_types:
        _fail(f"n_cells ({n_cells}) must be at least n_types ({n_types}): every type needs a cell")
    if n_classes < 0 or n_classes > n_types:
        _fail(f"n_classes must be between 0 and n_types ({n_types}), got {n_classes}")
    if state_dim < 1:
        _fail(f"state_dim must be at least 1, got {state_dim}")
    if abundance_ratio < 1:
        _fail(f"abundance_ratio must be >= 1 (largest / smallest type), got {abundance_ratio}")
    if min(markers_per_type, markers_per_class, n_ieg, n_hkg) < 0:
        _fail("gene counts (markers_per_type, markers_per_class, n_ieg, n_hkg) must be >= 0")
    if n_ieg < 1 or n_ieg > len(ieg_symbols()):
        _fail(f"n_ieg must be between 1 and {len(ieg_symbols())} (the shipped IEG list), got {n_ieg}")
    if state_dim > 1 and n_hkg < 1:
        _fail("n_hkg must be at least 1 when state_dim > 1 (odd state dimensions drive the HKG program)")
    if n_hkg > len(hkg_symbols()):
        _fail(f"n_hkg must be at most {len(hkg_symbols())} (the shipped housekeeping list), got {n_hkg}")
    needed = markers_per_type * n_types + markers_per_class * n_classes + n_ieg + n_hkg
    if n_genes < needed:
        _fail(f"n_genes ({n_genes}) is smaller than the programs need ({needed} marker, IEG and HKG genes)")
    low, high = marker_log_fold
    if not 0 <= low <= high:
        _fail(f"marker_log_fold must be (low, high) with 0 <= low <= high, got {marker_log_fold}")
    if not 0 <= n_unresponsive < n_types:
        _fail(f"n_unresponsive must be between 0 and n_types - 1, got {n_unresponsive}")
    if library_size <= 0 or library_spread < 0 or dispersion < 0:
        _fail("library_size must be > 0, library_spread and dispersion >= 0")
    if chunk_size < 1:
        _fail(f"chunk_size must be at least 1, got {chunk_size}")


def _gains(parameters, gains, n_types, state_dim, activity_gain, metabolic_gain, n_unresponsive) -> np.ndarray:
    """(n_types, state_dim) gain table: log fold change of a program per unit of its state (see simulate)."""
    if gains is not None:
        table = np.asarray(gains, dtype=np.float64)
        if table.shape != (n_types, state_dim) or not np.isfinite(table).all():
            _fail(f"gains must be a finite (n_types, state_dim) = ({n_types}, {state_dim}) array, got {table.shape}")
        return table
    table = np.zeros((n_types, state_dim))
    # zero-gain types among the larger half, so their non-response is observable; types are sorted by size
    larger_half = np.arange(max(1, (n_types + 1) // 2))
    unresponsive = parameters.choice(larger_half, size=min(n_unresponsive, len(larger_half)), replace=False)
    unresponsive = np.concatenate([unresponsive, np.arange(n_types - (n_unresponsive - len(unresponsive)), n_types)])
    responsive = np.setdiff1d(np.arange(n_types), unresponsive)
    # about a third of the responsive types respond downwards, at least one when there are three or more
    n_down = len(responsive) // 3
    down = parameters.choice(responsive, size=n_down, replace=False) if n_down else np.array([], dtype=int)
    sign = np.ones(n_types)
    sign[down] = -1.0
    for j in range(state_dim):
        if state_program(j) == "ieg":
            magnitude = activity_gain * parameters.uniform(0.7, 1.3, n_types)
            table[:, j] = sign * magnitude
            table[unresponsive, j] = 0.0
        else:
            table[:, j] = metabolic_gain * parameters.uniform(0.7, 1.3, n_types)
    return table


def _draw_counts(mean: np.ndarray, gene_dispersion: np.ndarray, first_cell: int, seed: int, midpoint, slope,
                 builder: CsrBuilder) -> None:
    """Negative-binomial counts with dropout for cells first_cell.. (rows of ``mean``), block by block,
    appended to ``builder``."""
    n_genes = mean.shape[1]
    poisson_genes = gene_dispersion <= 0
    shape = 1.0 / np.where(poisson_genes, 1.0, gene_dispersion)
    for offset in range(0, mean.shape[0], RNG_BLOCK_CELLS):
        block_mean = mean[offset : offset + RNG_BLOCK_CELLS]
        rng = np.random.default_rng([seed, _COUNT_STREAM, (first_cell + offset) // RNG_BLOCK_CELLS])
        # Gamma-Poisson: rate = mu * Gamma(shape 1/phi, scale phi); phi = 0 is plain Poisson
        rate = rng.standard_gamma(np.broadcast_to(shape, block_mean.shape))
        rate *= block_mean / shape
        if poisson_genes.any():
            rate[:, poisson_genes] = block_mean[:, poisson_genes]
        counts = rng.poisson(rate)
        del rate
        flat = np.flatnonzero(counts)
        kept = counts.ravel()[flat].astype(np.float32)
        if midpoint is not None and flat.size:
            log_mean = np.log(np.maximum(block_mean.ravel()[flat], np.float32(1e-30)))
            drop_probability = 1.0 / (1.0 + np.exp(slope * (log_mean - midpoint)))
            survive = rng.random(flat.size) >= drop_probability
            flat, kept = flat[survive], kept[survive]
        rows = flat // n_genes
        builder.append(kept, flat - rows * n_genes, np.bincount(rows, minlength=block_mean.shape[0]))


class CsrBuilder:
    """Appends row blocks into one growing CSR buffer (values float32, column indices int32).

    The buffers start at an estimate and grow / shrink with ``ndarray.resize`` (realloc: large blocks are
    remapped rather than copied), so the peak stays near the final size instead of parts plus a copy.
    """

    def __init__(self, n_rows: int, n_cols: int):
        self.n_rows, self.n_cols = n_rows, n_cols
        self.data = np.empty(0, np.float32)
        self.indices = np.empty(0, np.int32)
        self.row_nnz = np.zeros(n_rows, np.int64)
        self.nnz = self.rows = 0

    def append(self, values: np.ndarray, columns: np.ndarray, row_nnz: np.ndarray) -> None:
        needed = self.nnz + len(values)
        if needed > len(self.data):
            rows_after = self.rows + len(row_nnz)
            # expected total from the density so far (types are shuffled, so blocks are alike), 5 % spare
            estimate = int(needed / rows_after * self.n_rows * 1.05) + 1024
            capacity = max(needed, estimate if self.rows == 0 else int(len(self.data) * 1.25), 1)
            self.data.resize(capacity, refcheck=False)
            self.indices.resize(capacity, refcheck=False)
        self.data[self.nnz : needed] = values
        self.indices[self.nnz : needed] = columns
        self.row_nnz[self.rows : self.rows + len(row_nnz)] = row_nnz
        self.nnz, self.rows = needed, self.rows + len(row_nnz)

    def finish(self) -> sp.csr_matrix:
        self.data.resize(self.nnz, refcheck=False)
        self.indices.resize(self.nnz, refcheck=False)
        index_dtype = np.int32 if self.nnz < np.iinfo(np.int32).max else np.int64
        indptr = np.zeros(self.n_rows + 1, dtype=index_dtype)
        np.cumsum(self.row_nnz, out=indptr[1:])
        indices = self.indices.astype(index_dtype, copy=False)
        matrix = sp.csr_matrix((self.data, indices, indptr), shape=(self.n_rows, self.n_cols), copy=False)
        matrix.has_sorted_indices = True
        return matrix


def state_recovery(adata: AnnData, inferred_state: np.ndarray, min_cells: int = 3) -> pd.DataFrame:
    """How well inferred continuous states recover the simulated ones, within each true type.

    inferred_state: (N, D) or (A, N, D) per-arm state means (e.g. ``Inference.state_mean``). For each true
    type and arm, |Spearman rho| between every inferred dimension and every true state dimension; a true
    dimension counts only where the type responds to it (non-zero gain). Returns one row per type (index:
    type name): ``n_cells``, ``best_abs_rho`` (best |rho| over inferred dimensions and responsive true
    dimensions, averaged across arms), ``abs_rho_state_<j>`` (best |rho| over inferred dimensions for true
    dimension j, averaged across arms; NaN where the type does not respond to j). NaN for types with fewer
    than ``min_cells`` cells.
    """
    if "simulation" not in adata.uns or "true_state" not in adata.obsm:
        raise CplmixError("state_recovery needs simulated data (uns['simulation'] and obsm['true_state'])")
    inferred = np.asarray(inferred_state, dtype=np.float64)
    inferred = inferred[None] if inferred.ndim == 2 else inferred
    if inferred.ndim != 3 or inferred.shape[1] != adata.n_obs:
        raise CplmixError(f"inferred_state must be (N, D) or (A, N, D) with N = {adata.n_obs}, got {inferred_state.shape}")
    true_state = np.asarray(adata.obsm["true_state"], dtype=np.float64)
    n_true = true_state.shape[1]
    responsive = adata.uns["simulation"]["responsive"]
    types = adata.obs["true_type"].astype(str).to_numpy()
    rows = {}
    for name in adata.obs["true_type"].cat.categories:
        inside = np.flatnonzero(types == name)
        responds = np.asarray(responsive[name], dtype=bool)
        row = {"n_cells": len(inside), "best_abs_rho": np.nan, **{f"abs_rho_state_{j}": np.nan for j in range(n_true)}}
        if len(inside) >= min_cells:
            truth = rankdata(true_state[inside], axis=0)
            per_arm = []
            for arm_state in inferred:
                ranks = rankdata(arm_state[inside], axis=0)
                with np.errstate(invalid="ignore", divide="ignore"):
                    rho = np.corrcoef(ranks.T, truth.T)[: ranks.shape[1], ranks.shape[1] :]  # (D, S_true)
                per_arm.append(np.nan_to_num(np.abs(rho), nan=0.0).max(axis=0))  # (S_true,) best over inferred
            best_per_true = np.mean(per_arm, axis=0)
            for j in range(n_true):
                if responds[j]:
                    row[f"abs_rho_state_{j}"] = float(best_per_true[j])
            if responds.any():
                row["best_abs_rho"] = float(np.mean([values[responds].max() for values in per_arm]))
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")
