"""Gene groups for the continuous traversal: shipped mouse gene sets, custom sets, and marker genes.

Shipped with the package (``cplmix_explorer/data/files/gene_sets``), mouse symbols:

- ``IEG``: 139 immediate early genes, Wu, Y. E., Pan, L., Zuo, Y., Li, X. & Hong, W. (2017). Detecting
  activated cell populations using single-cell RNA-seq. *Neuron* 96(2):313-329, Supplementary Table 4.
- ``PRG``: 135 activity-induced primary response genes, Tyssowski, K. M. et al. (2018). Different neuronal
  activity patterns induce different gene expression programs. *Neuron* 98(3):530-546; ``rPRG`` (rapid,
  19 genes) and ``dPRG`` (delayed, 116 genes) are its two classes.
- ``HKG``: 3,277 housekeeping genes, Housekeeping and Reference Transcript Atlas (HRT Atlas v1.0), Hounkpe,
  B. W., Chenou, F., de Lima, F. & De Paula, E. V. (2021). *Nucleic Acids Research* 49(D1):D947-D955.

Matching against a dataset's gene names is exact first, then case-insensitive, so the mouse lists also
find human symbols that are the uppercase form of the mouse symbol (``Fos`` -> ``FOS``); human genes whose
symbol differs otherwise from the mouse one are reported as absent. Every match reports the requested genes
that the data lacks.

Marker genes (``MG``) are a property of a dataset's types, not a list: :func:`marker_scores` computes, for
every type at once, the AUROC of each gene for "cell of this type vs. the rest" on the model's input scale
(log1p of library-normalised counts for count data); :meth:`MarkerScores.markers` keeps the genes higher
in the type than in the rest (AUROC >= 0.6), ranks them by their margin over the highest other type (genes
specific to the type first, class-wide genes after) and leaves out genes of the IEG / HKG groups.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import rankdata

from ..errors import CplmixError
from .bundled import data_file

MARKERS = "MG"
IMMEDIATE_EARLY = "IEG"
HOUSEKEEPING = "HKG"
PRIMARY_RESPONSE = "PRG"


@dataclass(frozen=True)
class GeneSet:
    """A named list of gene symbols (in the order given, without duplicates) and where it comes from."""

    name: str
    genes: tuple[str, ...]
    description: str = ""
    citation: str = ""

    def __len__(self) -> int:
        return len(self.genes)


@dataclass(frozen=True)
class _ShippedSet:
    file: str
    description: str
    citation: str
    gene_class: str | None = None  # a value of the PRG table's "Gene Class" column


_WU_2017 = (
    "Wu YE, Pan L, Zuo Y, Li X, Hong W (2017). Detecting activated cell populations using single-cell RNA-seq. "
    "Neuron 96(2):313-329. Supplementary Table 4."
)
_TYSSOWSKI_2018 = (
    "Tyssowski KM et al. (2018). Different neuronal activity patterns induce different gene expression programs. "
    "Neuron 98(3):530-546."
)
_HRT_ATLAS = (
    "Hounkpe BW, Chenou F, de Lima F, De Paula EV (2021). HRT Atlas v1.0 database: redefining human and mouse "
    "housekeeping genes and candidate reference transcripts by mining massive RNA-seq datasets. "
    "Nucleic Acids Research 49(D1):D947-D955."
)

_SHIPPED: dict[str, _ShippedSet] = {
    IMMEDIATE_EARLY: _ShippedSet("gene_sets/mouse_ieg_wu2017.txt", "mouse immediate early genes", _WU_2017),
    HOUSEKEEPING: _ShippedSet("gene_sets/mouse_housekeeping_hrt_atlas.txt", "mouse housekeeping genes", _HRT_ATLAS),
    PRIMARY_RESPONSE: _ShippedSet(
        "gene_sets/mouse_prg_tyssowski2018.csv", "mouse activity-induced primary response genes", _TYSSOWSKI_2018
    ),
    "rPRG": _ShippedSet(
        "gene_sets/mouse_prg_tyssowski2018.csv", "mouse rapid primary response genes", _TYSSOWSKI_2018, "rPRG"
    ),
    "dPRG": _ShippedSet(
        "gene_sets/mouse_prg_tyssowski2018.csv", "mouse delayed primary response genes", _TYSSOWSKI_2018, "dPRG"
    ),
}

_CACHE: dict[str, GeneSet] = {}


def shipped_gene_set_names() -> list[str]:
    """Names of the gene sets that ship with the package: IEG, HKG, PRG, rPRG, dPRG."""
    return list(_SHIPPED)


def _canonical_name(name: str) -> str | None:
    for known in _SHIPPED:
        if known.casefold() == name.strip().casefold():
            return known
    return None


def is_shipped(name: str) -> bool:
    return _canonical_name(name) is not None


def shipped_gene_set(name: str) -> GeneSet:
    """A shipped gene set by name (case-insensitive): ``IEG``, ``HKG``, ``PRG``, ``rPRG`` or ``dPRG``."""
    canonical = _canonical_name(name)
    if canonical is None:
        raise CplmixError(f"unknown gene set '{name}' (shipped: {', '.join(_SHIPPED)})")
    if canonical not in _CACHE:
        entry = _SHIPPED[canonical]
        path = data_file(entry.file)
        if path.suffix == ".csv":
            table = pd.read_csv(path)
            if entry.gene_class is not None:
                table = table[table["Gene Class"] == entry.gene_class]
            genes = table["gene name"].astype(str).str.strip().tolist()
        else:
            genes = _symbols_from_lines(path.read_text().splitlines())
        _CACHE[canonical] = GeneSet(canonical, _unique(genes), entry.description, entry.citation)
    return _CACHE[canonical]


def _symbols_from_lines(lines: Iterable[str]) -> list[str]:
    """One symbol a line; ``#`` starts a comment; blank lines are skipped."""
    genes = []
    for line in lines:
        symbol = line.split("#", 1)[0].strip()
        if symbol:
            genes.append(symbol)
    return genes


def _unique(genes: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(genes))


def read_gene_set(path: str | os.PathLike, name: str | None = None) -> GeneSet:
    """A custom gene set from a text file: one symbol a line, ``#`` comments; named after the file's stem."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CplmixError(f"no such gene set file: '{path}'")
    if path.is_dir():
        raise CplmixError(f"'{path}' is a folder, not a gene set file (one gene symbol a line)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise CplmixError(f"cannot read gene set file '{path}': {type(error).__name__}") from None
    genes = _symbols_from_lines(text.splitlines())
    if not genes:
        raise CplmixError(f"gene set file '{path}' lists no genes (one symbol a line, '#' starts a comment)")
    bad = [g for g in genes if any(ch.isspace() or ch == "," for ch in g)]
    if bad:
        raise CplmixError(f"gene set file '{path}' must hold one symbol a line; found '{bad[0]}'")
    return GeneSet(name or path.stem, _unique(genes), f"custom gene set from {path.name}")


def as_gene_set(spec: str | os.PathLike | GeneSet | Sequence[str], name: str | None = None) -> GeneSet:
    """A :class:`GeneSet` from a shipped set's name, a text file, a list of symbols or a GeneSet."""
    if isinstance(spec, GeneSet):
        return spec if name is None else GeneSet(name, spec.genes, spec.description, spec.citation)
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if is_shipped(text):
            found = shipped_gene_set(text)
            return found if name is None else GeneSet(name, found.genes, found.description, found.citation)
        return read_gene_set(text, name)
    genes = [str(g).strip() for g in spec]
    genes = [g for g in genes if g]
    if not genes:
        raise CplmixError(f"gene set '{name or 'custom'}' is empty")
    return GeneSet(name or "custom", _unique(genes), "custom gene set")


@dataclass
class GeneMatch:
    """A gene set matched against a dataset's genes.

    genes: the dataset's names of the matched genes (the set's order, each once); indices: their positions
    (int array) in the dataset's gene list; missing: requested symbols with no gene in the data.
    """

    name: str
    genes: list[str]
    indices: np.ndarray
    missing: list[str]
    n_requested: int
    citation: str = ""

    def __len__(self) -> int:
        return len(self.genes)

    def summary(self) -> str:
        """One line, e.g. ``IEG: 26 of 139 genes in the data (113 absent: Ackr4, Acod1, ...)``."""
        text = f"{self.name}: {len(self.genes)} of {self.n_requested} genes in the data"
        if self.missing:
            shown = ", ".join(self.missing[:5]) + (", ..." if len(self.missing) > 5 else "")
            text += f" ({len(self.missing)} absent: {shown})"
        return text


def match_genes(
    gene_set: GeneSet | Sequence[str] | str | os.PathLike, gene_names: Sequence[str], name: str | None = None
) -> GeneMatch:
    """Find a gene set's symbols among ``gene_names``: exact match first, then case-insensitive (so mouse
    symbols find human ones written in upper case). Requested symbols without a gene are in ``missing``."""
    gene_set = as_gene_set(gene_set, name)
    names = [str(g) for g in gene_names]
    exact = {g: i for i, g in reversed(list(enumerate(names)))}
    folded = {g.casefold(): i for i, g in reversed(list(enumerate(names)))}
    indices, missing, seen = [], [], set()
    for symbol in gene_set.genes:
        index = exact.get(symbol, folded.get(symbol.casefold()))
        if index is None:
            missing.append(symbol)
        elif index not in seen:
            seen.add(index)
            indices.append(index)
    index_array = np.asarray(indices, dtype=np.int64)
    return GeneMatch(
        name=gene_set.name,
        genes=[names[i] for i in indices],
        indices=index_array,
        missing=missing,
        n_requested=len(gene_set.genes),
        citation=gene_set.citation,
    )


# -- marker genes computed from the data ---------------------------------------------------------------------
@dataclass
class MarkerScores:
    """Per-type marker statistics for K types and G genes, on the model's input scale.

    auroc: (K, G) probability that a cell of the type has a higher value than a cell of the rest (ties count
    half; 0.5 = no difference); mean_in / mean_out: (K, G) mean value in the type and in the rest;
    fraction_in: (K, G) fraction of the type's cells with a non-zero value; n_cells: (K,) cells of each type
    in the sample the statistics were computed on; genes: the G gene names.
    """

    auroc: np.ndarray
    mean_in: np.ndarray
    mean_out: np.ndarray
    fraction_in: np.ndarray
    n_cells: np.ndarray
    genes: list[str]
    sampled: bool = False

    @property
    def n_types(self) -> int:
        return self.auroc.shape[0]

    def margin(self, type_index: int) -> np.ndarray:
        """(G,) mean in the type minus the highest mean among the other types (> 0: higher than in every
        other type; a class-wide gene shared with a sibling type scores about 0)."""
        others = np.delete(self.mean_in, type_index, axis=0)
        highest_other = others.max(axis=0) if len(others) else np.zeros(self.mean_in.shape[1])
        return self.mean_in[type_index] - highest_other

    def table(self, type_index: int) -> pd.DataFrame:
        """All genes' statistics for one type (index = gene)."""
        return pd.DataFrame(
            {
                "auroc": self.auroc[type_index],
                "difference": self.mean_in[type_index] - self.mean_out[type_index],
                "margin": self.margin(type_index),
                "mean_in": self.mean_in[type_index],
                "mean_out": self.mean_out[type_index],
                "fraction_in": self.fraction_in[type_index],
            },
            index=pd.Index(self.genes, name="gene"),
        )

    def markers(self, type_index: int, n: int = 20, exclude: Iterable[str] = (), min_auroc: float = 0.6) -> pd.DataFrame:
        """The type's top ``n`` marker genes, genes in ``exclude`` left out.

        Candidates are higher in the type than in the rest (AUROC >= ``min_auroc`` and a positive mean
        difference); they are ranked by ``margin``, the difference to the highest other type, so genes
        specific to the type come before genes it shares with related types (a class-wide program)."""
        if not 0 <= type_index < self.n_types:
            raise CplmixError(f"type {type_index} is out of range 0..{self.n_types - 1}")
        if self.n_cells[type_index] == 0:
            return self.table(type_index).iloc[:0]
        table = self.table(type_index)
        excluded = {g.casefold() for g in exclude}
        keep = (table["auroc"] >= min_auroc) & (table["difference"] > 0)
        keep &= ~table.index.str.casefold().isin(excluded)
        return table[keep].sort_values("margin", ascending=False, kind="stable").head(n)


def _balanced_sample(assignment: np.ndarray, n_types: int, max_cells: int, seed: int) -> np.ndarray:
    """Sorted row indices with at most max(``max_cells // K``, 30) cells of each type (all cells of smaller
    types); every row when there are at most ``max_cells`` cells."""
    if len(assignment) <= max_cells:
        return np.arange(len(assignment))
    per_type = max(max_cells // max(n_types, 1), 30)
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_types):
        members = np.flatnonzero(assignment == k)
        if len(members) > per_type:
            members = rng.choice(members, per_type, replace=False)
        rows.append(members)
    return np.sort(np.concatenate(rows))


def marker_scores(
    values,
    assignment: np.ndarray,
    n_types: int,
    gene_names: Sequence[str],
    *,
    max_cells: int = 10_000,
    gene_chunk: int = 512,
    seed: int = 0,
) -> MarkerScores:
    """AUROC of every gene for every type against the rest, on ``values`` (cells, genes): a dense array,
    a CSR matrix, or a callable ``rows -> dense (len(rows), genes)`` (e.g. ``PreparedData.model_input``).

    Above ``max_cells`` cells the statistics use a seeded sample balanced across types (at most
    max(``max_cells // K``, 30) cells of each), which bounds memory to about ``max_cells x genes`` floats.
    """
    assignment = np.asarray(assignment, dtype=np.int64)
    rows = _balanced_sample(assignment, n_types, max_cells, seed)
    if callable(values):
        block = np.asarray(values(rows), dtype=np.float32)
    else:
        block = values[rows]
        block = block.toarray() if sp.issparse(block) else np.asarray(block, dtype=np.float32)
    if block.shape != (len(rows), len(gene_names)):
        raise CplmixError(f"marker genes: values of shape {block.shape} do not match {len(gene_names)} gene names")
    labels = assignment[rows]
    n = len(rows)
    one_hot = np.zeros((n_types, n), dtype=np.float64)
    one_hot[labels, np.arange(n)] = 1.0
    n_in = one_hot.sum(axis=1)
    n_out = n - n_in
    n_genes = block.shape[1]
    auroc = np.full((n_types, n_genes), 0.5)
    sums = one_hot @ block.astype(np.float64)
    nonzero = one_hot @ (block != 0).astype(np.float64)
    for start in range(0, n_genes, gene_chunk):
        stop = min(start + gene_chunk, n_genes)
        ranks = rankdata(block[:, start:stop], axis=0)
        rank_sums = one_hot @ ranks
        u = rank_sums - (n_in * (n_in + 1) / 2)[:, None]
        pairs = (n_in * n_out)[:, None]
        auroc[:, start:stop] = np.divide(u, pairs, out=np.full_like(u, 0.5), where=pairs > 0)
    totals = sums.sum(axis=0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_in = np.where(n_in[:, None] > 0, sums / n_in[:, None], 0.0)
        mean_out = np.where(n_out[:, None] > 0, (totals - sums) / n_out[:, None], 0.0)
        fraction_in = np.where(n_in[:, None] > 0, nonzero / n_in[:, None], 0.0)
    return MarkerScores(
        auroc=auroc,
        mean_in=mean_in,
        mean_out=mean_out,
        fraction_in=fraction_in,
        n_cells=n_in.astype(np.int64),
        genes=[str(g) for g in gene_names],
        sampled=n < len(assignment),
    )


def marker_genes(
    values,
    assignment: np.ndarray,
    type_index: int,
    gene_names: Sequence[str],
    *,
    n: int = 20,
    exclude: Iterable[str] | None = None,
    n_types: int | None = None,
) -> list[str]:
    """The top ``n`` marker genes of one type (see :meth:`MarkerScores.markers`). ``exclude`` defaults to
    the genes of the shipped IEG and HKG sets, as the traversal's MG group."""
    n_types = int(n_types if n_types is not None else np.max(assignment) + 1)
    scores = marker_scores(values, assignment, n_types, gene_names)
    if exclude is None:
        exclude = default_marker_exclusions(gene_names)
    return scores.markers(type_index, n=n, exclude=exclude).index.tolist()


def default_marker_exclusions(gene_names: Sequence[str]) -> list[str]:
    """Genes of ``gene_names`` in the shipped IEG or HKG sets (never reported as markers)."""
    excluded: list[str] = []
    for name in (IMMEDIATE_EARLY, HOUSEKEEPING):
        excluded.extend(match_genes(shipped_gene_set(name), gene_names).genes)
    return excluded
