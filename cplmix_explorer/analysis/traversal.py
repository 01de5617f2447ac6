"""Continuous traversal (method.md "Continuous traversal", paper Fig. 4): which genes does a state regulate?

For a type ``t`` (or one cell), keep the type fixed, sweep one state dimension across its conditional
distribution and decode with every arm::

    result = traverse(model, type=3, dim=0)            # model: a trained CplMixVAE
    result.expression          # (steps, genes) reconstruction, log-normalised scale, index = state value
    result.scores              # per gene: group, amplitude, rho, ...
    result.group_summary       # per group (MG | IEG | HKG | custom): median amplitude, median |rho|, ...
    result.top_genes(20)       # the genes most driven by this dimension

How the sweep is built
    * The type's cells are those whose consensus type (``obs['cplmix_type']``) is ``t``. For each of them
      and each arm the state mean is recomputed *given type t*, mu_a(h_a(x), c = t), from the encoder
      latent, so every arm describes the same cells under the same type.
    * Each arm sweeps its own range: ``steps`` evenly spaced values from the 2nd to the 98th percentile
      (``percentiles``) of its state means over the type's cells. The other state dimensions are held at the
      median over the type's cells (or at the chosen cell's own state means).
    * Arm alignment: the arms learn their state spaces independently, so dimension ``dim`` of arm 0 need
      not be dimension ``dim`` of arm 1, and may point the other way. Over the type's cells, every arm's
      dimensions are matched one-to-one to arm 0's by the largest absolute Pearson correlation (Hungarian
      matching) and an arm sweeps its matched dimension from high to low when the correlation is negative.
      Row ``i`` of every arm then describes the same position along the state, and the result is the mean
      of the arms' reconstructions. ``alignment`` reports the matched dimension, its sign and the
      correlation (near 0: the arms disagree about this state, read the per-arm results). ``arm=a``
      traverses one arm alone (``dim`` is then that arm's own dimension).
    * The state axis (``state``) is the reference arm's value (arm 0, or the chosen arm), increasing.

Scores (per gene, on the arms' mean reconstruction)
    amplitude: (max - min along the sweep) / the gene's standard deviation across all cells (model input
    scale), so 1 means the state moves the gene by one cell-to-cell standard deviation;
    rho: Spearman correlation of the reconstruction with the state value (monotonicity and direction;
    0 for a gene whose reconstruction is exactly constant).

Display form (``normalized``): ``"zscore"`` (default) z-scores each gene against all cells (the gene's
mean and standard deviation over cells), so a flat gene stays one flat colour and the colour says how high
the gene is relative to the population; ``"minmax"`` rescales each gene to [0, 1] across the sweep (the
paper's figure style; every gene then fills the colour range, read flatness from ``amplitude``; constant
genes are drawn at 0.5).

Speed: what depends only on the model (inference, gene statistics, marker AUROCs) and on the type (state
means given the type, alignment) is computed once and cached per model in a :class:`TraversalContext`;
a sweep is then one decoder pass over ``A x steps`` rows plus per-gene ranks (``benchmarks/traversal_speed.py``
measures it).

This module is pure numpy / pandas / torch (no UI): the app's traversal view and ``cplmix traverse`` call it.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment

from ..config import TraversalOptions
from ..data.gene_sets import (
    HOUSEKEEPING,
    IMMEDIATE_EARLY,
    MARKERS,
    GeneSet,
    MarkerScores,
    as_gene_set,
    is_shipped,
    marker_scores,
    match_genes,
    shipped_gene_set,
    shipped_gene_set_names,
)
from ..errors import CplmixError
from .metrics import contingency_table
from .names import SEPARATOR

ZSCORE = "zscore"
MINMAX = "minmax"
NORMALIZATIONS = tuple(TraversalOptions.param.normalize.objects)
_DEFAULTS = TraversalOptions()  # the declared defaults, shared with `cplmix traverse` and the app
DEFAULT_GROUPS = tuple(_DEFAULTS.genes.split(","))
DEFAULT_STEPS = _DEFAULTS.steps
DEFAULT_PERCENTILES = _DEFAULTS.percentiles
DEFAULT_MARKERS = _DEFAULTS.n_markers
#: |rho| at or above which a gene counts as monotone in the group summaries.
MONOTONE_RHO = 0.9
#: Floor of a gene's standard deviation across cells (log units) when dividing by it.
_SPREAD_FLOOR = 1e-3
_STATISTICS_MAX_CELLS = 50_000


# -- gene groups -----------------------------------------------------------------------------------------
@dataclass
class GeneGroup:
    """A column group of the traversal: its genes among the model's genes, in display order.

    missing: requested symbols that are not in the data at all; not_modelled: symbols in the data but not
    among the model's genes (dropped by the highly-variable-gene selection at training time); duplicates:
    genes already shown in an earlier group (each gene belongs to one group, the first that lists it).
    """

    name: str
    genes: list[str]
    n_requested: int
    missing: list[str] = field(default_factory=list)
    not_modelled: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    source: str = ""
    #: duplicates -> the earlier group that shows them
    shown_in: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        text = f"{self.name}: {len(self.genes)} of {self.n_requested} genes"
        if self.duplicates:
            by_group: dict[str, list[str]] = {}
            for gene in self.duplicates:
                by_group.setdefault(self.shown_in.get(gene, "an earlier group"), []).append(gene)
            for group, genes in by_group.items():
                shown = ", ".join(genes[:5]) + (", ..." if len(genes) > 5 else "")
                text += f"; {len(genes)} shown in {group} instead ({shown})"
        if self.not_modelled:
            text += f"; {len(self.not_modelled)} in the data but not among the model's genes"
        if self.missing:
            shown = ", ".join(self.missing[:5]) + (", ..." if len(self.missing) > 5 else "")
            text += f"; {len(self.missing)} absent from the data ({shown})"
        return text


GroupSpec = str | os.PathLike | GeneSet | tuple[str, Sequence[str]]


def parse_gene_groups(spec: str | GroupSpec | Sequence[GroupSpec] | Mapping[str, Sequence[str]] | None) -> list:
    """Normalise a gene-group request into a list of items, each ``"MG"``, a shipped set's name, a path, a
    GeneSet or a ``(name, genes)`` pair. A string may list several items separated by commas
    (``"MG,IEG,my_genes.txt"``, as ``cplmix traverse --genes``); a dict maps custom names to gene lists."""
    if spec is None:
        return list(DEFAULT_GROUPS)
    if isinstance(spec, Mapping):
        return [(str(name), list(genes)) for name, genes in spec.items()]
    if isinstance(spec, os.PathLike):
        return [spec]
    if isinstance(spec, str):
        items = [part.strip() for part in spec.split(",") if part.strip()]
        if not items:
            raise CplmixError("no gene groups given (e.g. MG,IEG,HKG or a file with one gene symbol a line)")
        return items
    if isinstance(spec, GeneSet):
        return [spec]
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and not isinstance(spec[1], str):
        return [spec]
    items = list(spec)
    if not items:
        raise CplmixError("no gene groups given (e.g. MG, IEG, HKG, or a list of gene symbols)")
    if all(isinstance(item, str) for item in items) and not any(_is_group_name(item) or _looks_like_path(item) for item in items):
        # a plain list of gene symbols: one custom group
        return [("custom", items)]
    return items


def check_gene_groups(spec) -> list:
    """Parse a gene-group request and check it without a model: known group names, readable gene files
    with at least one symbol. Returns the parsed items (see :func:`parse_gene_groups`)."""
    items = parse_gene_groups(spec)
    for item in items:
        _check_group_item(item)
        if isinstance(item, tuple):
            as_gene_set(item[1], name=item[0])
        elif not (isinstance(item, str) and item.strip().upper() == MARKERS):
            as_gene_set(item)
    return items


def _is_group_name(item: str) -> bool:
    return item.strip().upper() == MARKERS or is_shipped(item)


def _looks_like_path(item: str) -> bool:
    return os.sep in item or item.endswith((".txt", ".csv", ".tsv")) or os.path.exists(item)


def _check_group_item(item) -> None:
    if isinstance(item, str) and not _is_group_name(item) and not os.path.exists(item):
        known = ", ".join([MARKERS, *shipped_gene_set_names()])
        raise CplmixError(f"unknown gene group or file '{item}' (groups: {known}; or a text file, one symbol a line)")


# -- the per-model cache ---------------------------------------------------------------------------------
@dataclass
class _TypeStates:
    cells: np.ndarray  # (n,) row positions of the type's cells
    state_mean: np.ndarray  # (A, n, S) state means given the type
    held: np.ndarray  # (A, S) median over the type's cells
    matched_dim: np.ndarray  # (A, S) arm a's dimension matched to arm 0's dimension d
    sign: np.ndarray  # (A, S) +1 or -1
    correlation: np.ndarray  # (A, S) Pearson r of the matched dimension with arm 0's (NaN if undefined)


class TraversalContext:
    """What every sweep of one trained model shares, computed once (thread-safe, lazily).

    Holds the model's inference (types, latent), the genes' mean and standard deviation across cells on
    the model input scale, marker AUROCs of every type, and per type the state means given the type and
    the arm alignment. Use :func:`context_for` to get the cached context of a model.
    """

    def __init__(self, model, *, statistics_max_cells: int = _STATISTICS_MAX_CELLS, seed: int = 0):
        self.model = model
        self.module = model.module
        self.inference = model.predict()
        self.genes: list[str] = [str(g) for g in model.prepared.genes]
        self.gene_position = pd.Index(self.genes, name="gene")
        self.n_arms = int(self.module.n_arms)
        self.n_types = int(self.module.n_types)
        self.state_dim = int(self.module.state_dim)
        self.target_sum = float(model.prepared.preprocessing.target_sum)
        self.consensus_type = np.asarray(self.inference.consensus_type)
        self.type_counts = np.bincount(self.consensus_type, minlength=self.n_types)
        self._statistics_max_cells = statistics_max_cells
        self._seed = seed
        self._lock = threading.RLock()
        self._gene_statistics: tuple[np.ndarray, np.ndarray] | None = None
        self._markers: MarkerScores | None = None
        self._type_states: dict[int, _TypeStates] = {}
        self._matches: dict[Any, Any] = {}
        self._labels: dict[str, TypeLabels] = {}
        self._marker_lists: dict[tuple[int, int], list[str]] = {}

    # -- model-level statistics --------------------------------------------------------------------------
    @property
    def gene_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """(G,) mean and (G,) standard deviation of each gene across cells on the model input scale (on a
        seeded sample of at most 50,000 cells)."""
        with self._lock:
            if self._gene_statistics is None:
                prepared = self.model.prepared
                rows = np.arange(prepared.n_cells)
                if len(rows) > self._statistics_max_cells:
                    rng = np.random.default_rng(self._seed)
                    rows = np.sort(rng.choice(rows, self._statistics_max_cells, replace=False))
                total = np.zeros(prepared.n_genes)
                total_sq = np.zeros(prepared.n_genes)
                for start in range(0, len(rows), 8192):
                    block = prepared.model_input(rows[start : start + 8192]).astype(np.float64)
                    total += block.sum(axis=0)
                    total_sq += (block**2).sum(axis=0)
                mean = total / len(rows)
                variance = np.maximum(total_sq / len(rows) - mean**2, 0.0)
                self._gene_statistics = (mean, np.sqrt(variance))
            return self._gene_statistics

    @property
    def markers(self) -> MarkerScores:
        """Marker AUROCs of every type (consensus types) against the rest, model input scale."""
        with self._lock:
            if self._markers is None:
                self._markers = marker_scores(
                    self.model.prepared.model_input, self.consensus_type, self.n_types, self.genes, seed=self._seed
                )
            return self._markers

    # -- type-level ------------------------------------------------------------------------------------------
    def check_type(self, type_index: int) -> int:
        if isinstance(type_index, (bool, np.bool_)) or not isinstance(type_index, (int, np.integer)):
            raise CplmixError(f"type must be an integer index, got {type_index!r}")
        type_index = int(type_index)
        if not 0 <= type_index < self.n_types:
            raise CplmixError(f"type {type_index} is out of range: the model has {self.n_types} types (0..{self.n_types - 1})")
        return type_index

    def check_dim(self, dim: int) -> int:
        if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)):
            raise CplmixError(f"state dimension must be an integer, got {dim!r}")
        if not 0 <= int(dim) < self.state_dim:
            raise CplmixError(
                f"state dimension {dim} is out of range: the model has {self.state_dim} (0..{self.state_dim - 1})"
            )
        return int(dim)

    @torch.no_grad()
    def _state_given_type(self, latent: np.ndarray, type_index: int) -> np.ndarray:
        """State means (A, n, S) of cells with encoder latent (A, n, D), given ``type_index`` in every arm."""
        device = next(self.module.parameters()).device
        h = torch.as_tensor(latent, dtype=torch.float32, device=device)
        c = torch.zeros(h.shape[0], h.shape[1], self.n_types, device=device)
        c[..., type_index] = 1.0
        mu, _ = self.module.state_posterior(h, c)
        return mu.cpu().numpy().astype(np.float64)

    def type_states(self, type_index: int) -> _TypeStates:
        type_index = self.check_type(type_index)
        with self._lock:
            if type_index not in self._type_states:
                cells = np.flatnonzero(self.consensus_type == type_index)
                if len(cells) == 0:
                    used = np.flatnonzero(self.type_counts)
                    raise CplmixError(
                        f"type {type_index} has no cells assigned; types with cells: {_ranges(used)}"
                    )
                state = self._state_given_type(self.inference.latent[:, cells], type_index)
                matched, sign, correlation = _align_arms(state)
                self._type_states[type_index] = _TypeStates(
                    cells=cells, state_mean=state, held=np.median(state, axis=1),
                    matched_dim=matched, sign=sign, correlation=correlation,
                )
            return self._type_states[type_index]

    def cell_position(self, cell) -> int:
        obs_names = self.model.prepared.obs_names
        if isinstance(cell, (int, np.integer)) and not isinstance(cell, bool):
            if not 0 <= int(cell) < len(obs_names):
                raise CplmixError(f"cell {cell} is out of range: the data has {len(obs_names)} cells")
            return int(cell)
        position = obs_names.get_indexer([str(cell)])[0]
        if position < 0:
            raise CplmixError(f"no cell named '{cell}' in the data")
        return int(position)

    def cell_state(self, position: int, type_index: int) -> np.ndarray:
        """(A, S) state means of one cell given ``type_index``."""
        return self._state_given_type(self.inference.latent[:, position : position + 1], type_index)[:, 0]

    # -- gene groups -----------------------------------------------------------------------------------------
    def _match(self, key, gene_set: GeneSet):
        with self._lock:
            if key not in self._matches:
                in_model = match_genes(gene_set, self.genes)
                in_data = match_genes(gene_set, [str(g) for g in self.model.adata.var_names]) if in_model.missing else in_model
                absent_from_data = {g.casefold() for g in in_data.missing}
                missing = [g for g in in_model.missing if g.casefold() in absent_from_data]
                not_modelled = [g for g in in_model.missing if g.casefold() not in absent_from_data]
                self._matches[key] = (in_model.genes, missing, not_modelled, len(gene_set.genes), gene_set.citation or gene_set.description)
            return self._matches[key]

    def marker_exclusions(self) -> set[str]:
        excluded: set[str] = set()
        for name in (IMMEDIATE_EARLY, HOUSEKEEPING):
            excluded.update(self._match(("shipped", name), shipped_gene_set(name))[0])
        return excluded

    def marker_genes(self, type_index: int, n: int = DEFAULT_MARKERS) -> list[str]:
        """The MG group of a type: its top ``n`` markers, never genes of the shipped IEG or HKG sets."""
        with self._lock:
            key = (int(type_index), int(n))
            if key not in self._marker_lists:
                table = self.markers.markers(type_index, n=n, exclude=self.marker_exclusions())
                self._marker_lists[key] = table.index.tolist()
            return list(self._marker_lists[key])

    def gene_groups(self, spec, type_index: int, n_markers: int = DEFAULT_MARKERS) -> dict[str, GeneGroup]:
        """Resolve a gene-group request (see :func:`parse_gene_groups`) for one type, in display order.
        MG = the type's top ``n_markers`` marker genes, never genes of the shipped IEG or HKG sets."""
        groups: dict[str, GeneGroup] = {}
        taken: dict[str, str] = {}  # gene -> the group that shows it
        for item in parse_gene_groups(spec):
            _check_group_item(item)
            if isinstance(item, str) and item.strip().upper() == MARKERS:
                genes, missing, not_modelled, requested = self.marker_genes(type_index, n_markers), [], [], n_markers
                name, source = MARKERS, "marker genes of the type computed from the data (AUROC vs. the rest)"
            else:
                if isinstance(item, tuple):
                    gene_set = as_gene_set(item[1], name=item[0])
                else:
                    gene_set = as_gene_set(item)
                key = ("shipped", gene_set.name) if isinstance(item, str) and is_shipped(item) else ("set", gene_set.name, gene_set.genes)
                genes, missing, not_modelled, requested, source = self._match(key, gene_set)
                name = gene_set.name
            if name in groups:
                raise CplmixError(f"gene group '{name}' is given twice")
            unique = [g for g in genes if g not in taken]
            duplicates = [g for g in genes if g in taken]
            shown_in = {g: taken[g] for g in duplicates}
            taken.update((g, name) for g in unique)
            groups[name] = GeneGroup(name, unique, requested, list(missing), list(not_modelled), duplicates, source, shown_in)
        return groups

    def type_labels(self, labels: str) -> TypeLabels:
        with self._lock:
            if labels not in self._labels:
                self._labels[labels] = label_types(self.consensus_type, self.model.adata.obs, labels, self.n_types)
            return self._labels[labels]


def _ranges(values: np.ndarray) -> str:
    values = list(map(int, values))
    if len(values) > 12:
        return ", ".join(map(str, values[:12])) + ", ..."
    return ", ".join(map(str, values))


def _align_arms(state: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match each arm's state dimensions to arm 0's over the cells of ``state`` (A, n, S).

    Returns matched (A, S): arm a's dimension for arm 0's dimension d; sign (A, S): -1 where the matched
    dimension runs against arm 0's; correlation (A, S): Pearson r of the matched pair (NaN when undefined).
    """
    n_arms, n_cells, state_dim = state.shape
    matched = np.tile(np.arange(state_dim), (n_arms, 1))
    sign = np.ones((n_arms, state_dim))
    correlation = np.full((n_arms, state_dim), np.nan)
    correlation[0] = 1.0
    if n_cells < 3:
        return matched, sign, correlation
    reference = state[0]
    for arm in range(1, n_arms):
        r = _cross_correlation(reference, state[arm])  # (S, S): arm 0 dim i vs arm dim j
        defined = np.nan_to_num(np.abs(r), nan=0.0)
        rows, cols = linear_sum_assignment(-defined)
        matched[arm, rows] = cols
        correlation[arm, rows] = r[rows, cols]
        sign[arm, rows] = np.where(r[rows, cols] < 0, -1.0, 1.0)
    return matched, sign, correlation


def _cross_correlation(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Pearson r between the columns of first (n, S) and second (n, S): (S, S), NaN for constant columns."""
    a = first - first.mean(axis=0)
    b = second - second.mean(axis=0)
    norm = np.sqrt((a**2).sum(axis=0))[:, None] * np.sqrt((b**2).sum(axis=0))[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (a.T @ b) / norm, np.nan)


_CONTEXTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CONTEXTS_LOCK = threading.Lock()


def context_for(model) -> TraversalContext:
    """The cached :class:`TraversalContext` of a model; rebuilt when the model's inference changed (after
    more training)."""
    with _CONTEXTS_LOCK:
        context = _CONTEXTS.get(model)
        inference = model.predict()
        if context is None or context.inference is not inference or context.module is not model.module:
            context = TraversalContext(model)
            _CONTEXTS[model] = context
        return context


def forget(model) -> None:
    """Drop the cached context of ``model`` (a model no longer shown), so that it can be freed: the cache is
    weakly keyed, but its values hold the model, so an entry never expires on its own."""
    with _CONTEXTS_LOCK:
        _CONTEXTS.pop(model, None)


# -- type names from known labels -------------------------------------------------------------------------
@dataclass
class TypeLabels:
    """Names for the inferred types from a column of known labels.

    label: each type with cells -> a label. Types and labels are first matched one-to-one by minimum-weight
    (Hungarian) matching of their contingency table (the matching behind ACC); types left over (more types
    than labels) take the label most of their cells carry. matched: label -> its one-to-one matched type
    (what a label name resolves to). purity: type -> fraction of its cells that carry its label.
    """

    column: str
    label: dict[int, str]
    matched: dict[str, int]
    purity: dict[int, float]

    def name(self, type_index: int) -> str | None:
        return self.label.get(int(type_index))


def label_types(consensus_type: np.ndarray, obs: pd.DataFrame, labels: str, n_types: int) -> TypeLabels:
    """Map inferred types to the labels of ``obs[labels]`` (see :class:`TypeLabels`)."""
    if labels not in obs.columns:
        raise CplmixError(f"unknown labels column '{labels}' (obs columns: {', '.join(map(str, obs.columns))})")
    table, type_levels, label_levels = contingency_table(consensus_type, obs[labels].to_numpy())
    if table.size == 0:
        raise CplmixError(f"labels column '{labels}' holds no labels")
    rows, cols = linear_sum_assignment(-table)
    label, matched, purity = {}, {}, {}
    for row, level in enumerate(type_levels):
        column = int(table[row].argmax())
        label[int(level)] = str(label_levels[column])
    for row, column in zip(rows, cols):
        type_index = int(type_levels[row])
        label[type_index] = str(label_levels[column])
        matched[str(label_levels[column])] = type_index
    for row, level in enumerate(type_levels):
        chosen = list(label_levels).index(label[int(level)])
        purity[int(level)] = float(table[row, chosen] / max(table[row].sum(), 1))
    return TypeLabels(column=labels, label=label, matched=matched, purity=purity)


def resolve_type(model, type_spec, labels: str | None = None) -> int:
    """A type index from an index (int or digits), a type's name (``model.type_names()``, any case) or,
    when a labels column is known (``labels`` or the model's ``config.labels``), a label name (its
    one-to-one matched type; see :class:`TypeLabels`)."""
    context = context_for(model)
    if isinstance(type_spec, (int, np.integer)) and not isinstance(type_spec, bool):
        return context.check_type(int(type_spec))
    text = str(type_spec).strip()
    if text.lstrip("-").isdigit():
        return context.check_type(int(text))
    if hasattr(model, "type_names"):  # a type's name (as shown in the app, result.h5ad and the markers table)
        shown = [name.casefold() for name in model.type_names()]
        if text.casefold() in shown:
            return shown.index(text.casefold())
    labels = labels or getattr(model.config, "labels", None)
    if labels is None:
        raise CplmixError(
            f"type '{text}' is not an index 0..{context.n_types - 1} and the run has no labels column to name types "
            "(pass --labels OBS_KEY)"
        )
    names = context.type_labels(labels)
    if text in names.matched:
        return names.matched[text]
    folded = {name.casefold(): t for name, t in names.matched.items()}
    if text.casefold() in folded:
        return folded[text.casefold()]
    known = sorted(names.matched)
    shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
    raise CplmixError(f"no type is matched to label '{text}' in '{labels}' (matched labels: {shown})")


def _type_name(model, type_index: int, labels: str | None) -> str | None:
    """The type's name in titles, tables and file names: the model's type name (its rename, or the
    automatic name from the run's labels or markers); with another ``labels`` column, ``3 · <its matched
    label>``."""
    if labels is not None and labels != getattr(model.config, "labels", None) and labels in model.adata.obs.columns:
        label = context_for(model).type_labels(labels).name(type_index)
        return f"{type_index}{SEPARATOR}{label}" if label else None
    if hasattr(model, "type_names"):
        return model.type_names()[type_index]
    return None


# -- the result ---------------------------------------------------------------------------------------------
@dataclass
class DisplayMatrix:
    """Columns of a traversal chosen and ordered for a heatmap: values (steps, columns) with the state as
    index; groups: (name, first column, end column) spans in column order."""

    values: pd.DataFrame
    groups: list[tuple[str, int, int]]
    normalization: str

    @property
    def group_of_column(self) -> list[str]:
        out: list[str] = []
        for name, start, stop in self.groups:
            out.extend([name] * (stop - start))
        return out


@dataclass
class Traversal:
    """A sweep of one state dimension for one type (``steps`` rows, ``G`` = all the model's genes).

    type, type_label, dim, cell: what was swept (``cell`` = obs name when the sweep is centred on one cell);
    arms: the arms averaged (``[a]`` when one arm was asked for); state: (steps,) the reference arm's state
    value per row, increasing; percentile: (steps,) where each row's value falls among the type's cells (0-100);
    state_per_arm: (len(arms), steps) each arm's value of its matched dimension; expression: DataFrame
    (steps, G), index = state, the arms' mean reconstruction on the log-normalised scale
    (log1p(counts / library x 1e4) for count data; the model input's scale otherwise);
    expression_per_arm: (len(arms), steps, G); normalized: DataFrame (steps, G), the display form named by
    ``normalization`` ("zscore" against all cells, or "minmax" across the sweep); groups: gene groups in
    display order; scores: DataFrame indexed by gene (all G genes): group ("" when in none), amplitude, rho,
    range, change (last - first row), spread and mean (across cells); alignment: per arm its matched
    dimension, sign and correlation with arm 0; held_state: (len(arms), S) values of the state dimensions
    not swept; n_cells: cells of the type; cell_state: the cell's own value on the swept dimension.
    """

    type: int
    type_label: str | None
    dim: int
    cell: str | None
    arms: list[int]
    state: np.ndarray
    percentile: np.ndarray
    state_per_arm: np.ndarray
    expression: pd.DataFrame
    expression_per_arm: np.ndarray
    normalized: pd.DataFrame
    normalization: str
    groups: dict[str, GeneGroup]
    scores: pd.DataFrame
    alignment: pd.DataFrame
    held_state: np.ndarray
    n_cells: int
    percentiles: tuple[float, float]
    cell_state: float | None = None
    #: reasons to read this traversal with care (a short run, markers decoded against the data), one line each
    warnings: list[str] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.state)

    @property
    def genes(self) -> list[str]:
        return list(self.expression.columns)

    @property
    def title(self) -> str:
        name = self.type_label or f"type {self.type}"
        if self.cell is not None:
            name += f", cell {self.cell}"
        return f"{name}, state dimension {self.dim}"

    @property
    def group_summary(self) -> pd.DataFrame:
        """Per group: genes, median amplitude, median |rho|, median rho, fraction monotone (|rho| >= 0.9),
        largest amplitude and the gene that has it."""
        rows = []
        for name, group in self.groups.items():
            scores = self.scores.loc[group.genes] if group.genes else self.scores.iloc[:0]
            if len(scores):
                top = scores["amplitude"].idxmax()
                rows.append({
                    "group": name, "genes": len(scores),
                    "median_amplitude": float(scores["amplitude"].median()),
                    "median_abs_rho": float(scores["rho"].abs().median()),
                    "median_rho": float(scores["rho"].median()),
                    "fraction_monotone": float((scores["rho"].abs() >= MONOTONE_RHO).mean()),
                    "max_amplitude": float(scores["amplitude"].max()), "top_gene": top,
                })
            else:
                rows.append({"group": name, "genes": 0, "median_amplitude": np.nan, "median_abs_rho": np.nan,
                             "median_rho": np.nan, "fraction_monotone": np.nan, "max_amplitude": np.nan, "top_gene": None})
        return pd.DataFrame(rows).set_index("group")

    def top_genes(self, n: int = 20, group: str | None = None) -> pd.DataFrame:
        """The ``n`` genes most driven by this state dimension (largest amplitude), optionally in one group."""
        scores = self.scores
        if group is not None:
            if group not in self.groups:
                raise CplmixError(f"unknown gene group '{group}' (groups: {', '.join(self.groups)})")
            scores = scores.loc[self.groups[group].genes]
        ranked = scores.sort_values("amplitude", ascending=False, kind="stable").head(n)
        return ranked.assign(rank=np.arange(1, len(ranked) + 1))

    def nearest_step(self, state_value: float) -> int:
        """Row index whose state value is closest to ``state_value``."""
        return int(np.abs(self.state - float(state_value)).argmin())

    def display_matrix(
        self, max_genes_per_group: int | None = 30, normalized: bool = True, columns: Mapping[str, Sequence[str]] | None = None
    ) -> DisplayMatrix:
        """The grouped columns for a heatmap: per group the ``max_genes_per_group`` genes with the largest
        amplitude (all when None), ordered by rho from rising to falling; empty groups are left out.
        ``columns`` (group -> genes) fixes the columns of some groups (type comparisons use it so that the
        shared groups show the same genes in the same order in every panel)."""
        source = self.normalized if normalized else self.expression
        chosen: list[str] = []
        spans = []
        for name, group in self.groups.items():
            if columns is not None and name in columns:
                genes = list(columns[name])
            else:
                genes = self._choose_columns(group.genes, max_genes_per_group)
            if not genes:
                continue
            spans.append((name, len(chosen), len(chosen) + len(genes)))
            chosen.extend(genes)
        return DisplayMatrix(values=source[chosen], groups=spans, normalization=self.normalization)

    def _choose_columns(self, genes: Sequence[str], max_genes: int | None, select_by: pd.Series | None = None) -> list[str]:
        genes = list(genes)
        if max_genes is not None and len(genes) > max_genes:
            score = (select_by if select_by is not None else self.scores["amplitude"]).reindex(genes).fillna(0.0)
            genes = score.sort_values(ascending=False, kind="stable").index[:max_genes].tolist()
        return self.scores.loc[genes].sort_values("rho", ascending=False, kind="stable").index.tolist()

    def matrix(self, genes: str = "groups", values: str = "expression") -> pd.DataFrame:
        """The table to export: rows = state value, columns = genes of the groups in display order
        (``genes="all"``: every model gene); ``values`` = "expression" or "normalized"."""
        if values not in ("expression", "normalized"):
            raise CplmixError(f"values must be 'expression' or 'normalized', got '{values}'")
        frame = self.expression if values == "expression" else self.normalized
        if genes == "all":
            return frame
        columns = [g for group in self.groups.values() for g in group.genes]
        return frame[columns]

    def to_long(self, genes: str = "groups") -> pd.DataFrame:
        """Tidy (long) form: one row per (step, gene) with state, percentile, group, expression, normalized."""
        expression = self.matrix(genes, "expression")
        normalized = self.normalized[expression.columns]
        steps, n_genes = expression.shape
        return pd.DataFrame({
            "step": np.repeat(np.arange(steps), n_genes),
            "state": np.repeat(self.state, n_genes),
            "percentile": np.repeat(self.percentile, n_genes),
            "gene": np.tile(expression.columns.to_numpy(dtype=object), steps),
            "group": np.tile(self.scores.loc[expression.columns, "group"].to_numpy(dtype=object), steps),
            "expression": expression.to_numpy().ravel(),
            "normalized": normalized.to_numpy().ravel(),
        })


# -- the sweep -------------------------------------------------------------------------------------------
def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 2 <= int(steps) <= 10_000:
        raise CplmixError(f"steps must be an integer from 2 to 10000, got {steps!r}")
    return int(steps)


def _check_percentiles(percentiles) -> tuple[float, float]:
    try:
        low, high = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise CplmixError(f"percentiles must be two numbers (low, high), got {percentiles!r}") from None
    if not 0.0 <= low < high <= 100.0:
        raise CplmixError(f"percentiles must satisfy 0 <= low < high <= 100, got ({low:g}, {high:g})")
    return low, high


def spearman_with_steps(values: np.ndarray) -> np.ndarray:
    """Spearman rho of each column of ``values`` (steps, G) with the row order (an increasing state), ties
    given their average rank; 0 for constant columns.

    rho is the Pearson correlation of the two rank vectors. With the rows sorted per column, the ranks of
    the values are known in sorted order and the rank of the state is the original row, so
    sum_i rank(x_i) (i - mean) = sum_k rank_sorted(k) (order(k) - mean): no scatter back is needed."""
    steps, n_genes = values.shape
    by_gene = np.ascontiguousarray(values.T)  # (G, steps): each gene's sweep contiguous
    order = np.argsort(by_gene, axis=1)  # the order inside a run of ties does not change the sums below
    ordered = np.take_along_axis(by_gene, order, axis=1)
    starts = np.ones(by_gene.shape, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    position = np.arange(steps)
    if starts.all():  # no ties: the ranks in sorted order are 0..steps-1
        ranks = np.broadcast_to(position - (steps - 1) / 2.0, by_gene.shape)
    else:
        ends = np.ones(by_gene.shape, dtype=bool)
        ends[:, :-1] = starts[:, 1:]
        first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
        last = np.minimum.accumulate(np.where(ends, position, steps - 1)[:, ::-1], axis=1)[:, ::-1]
        ranks = (first + last) / 2.0 - (steps - 1) / 2.0  # centred average ranks, in sorted order
    numerator = (ranks * (order - (steps - 1) / 2.0)).sum(axis=1)
    denominator = np.sqrt((ranks**2).sum(axis=1) * (steps**3 - steps) / 12.0)
    return np.divide(numerator, denominator, out=np.zeros(n_genes), where=denominator > 0)


def traverse(
    model,
    type: int | str | None = None,  # noqa: A002 - the word users know
    dim: int = _DEFAULTS.dim,
    steps: int = DEFAULT_STEPS,
    *,
    cell: int | str | None = None,
    genes=None,
    n_markers: int = DEFAULT_MARKERS,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    normalize: str = _DEFAULTS.normalize,
    arm: int | None = _DEFAULTS.arm,
    labels: str | None = None,
) -> Traversal:
    """Sweep state dimension ``dim`` of a type (or of one cell) with the type held fixed (module docstring).

    model: a trained :class:`~cplmix_explorer.CplMixVAE`. type: an index, or a label name when ``labels``
    (or the model's ``config.labels``) names an obs column of known labels; default: the cell's type.
    cell: an obs name or row position; the other state dimensions are then held at that cell's state means
    (given the type) instead of the type's median. genes: gene groups in display order (default MG, IEG,
    HKG; see :func:`parse_gene_groups`). n_markers: genes in the MG group. percentiles: the swept range
    within the type's state distribution. normalize: "zscore" or "minmax" (display form). arm: one arm
    instead of the arms' mean.
    """
    context = context_for(model)
    steps = _check_steps(steps)
    low, high = _check_percentiles(percentiles)
    if normalize not in NORMALIZATIONS:
        raise CplmixError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got '{normalize}'")
    dim = context.check_dim(dim)
    cell_position = context.cell_position(cell) if cell is not None else None
    if type is None:
        if cell_position is None:
            raise CplmixError("give a type (index or label) or a cell to traverse")
        type_index = int(context.consensus_type[cell_position])
    else:
        type_index = resolve_type(model, type, labels)
    if isinstance(n_markers, bool) or not isinstance(n_markers, (int, np.integer)) or n_markers < 1:
        raise CplmixError(f"n_markers must be a positive integer, got {n_markers!r}")
    if arm is not None and (isinstance(arm, bool) or not isinstance(arm, (int, np.integer)) or not 0 <= arm < context.n_arms):
        raise CplmixError(f"arm must be one of 0..{context.n_arms - 1}, got {arm!r}")

    states = context.type_states(type_index)
    arms = list(range(context.n_arms)) if arm is None else [int(arm)]
    if arm is None:
        matched, sign = states.matched_dim[:, dim], states.sign[:, dim]
    else:
        matched, sign = np.array([dim]), np.array([1.0])
    held = states.held[arms].copy()
    if cell_position is not None:
        held = context.cell_state(cell_position, type_index)[arms]
    grid = np.linspace(0.0, 1.0, steps)
    swept = np.empty((len(arms), steps))
    for row, a in enumerate(arms):
        values = states.state_mean[a, :, matched[row]]
        lo, hi = np.percentile(values, [low, high])
        swept[row] = lo + (hi - lo) * (grid if sign[row] > 0 else 1.0 - grid)
    reference = swept[0]
    if not reference[-1] > reference[0]:
        raise CplmixError(
            f"type {type_index} has too few distinct state values ({states.state_mean.shape[1]} cells) to sweep "
            f"dimension {dim}; pick a type with more cells"
        )

    expression_per_arm = _decode_sweep(context, type_index, arms, matched, swept, held)
    mean_expression = expression_per_arm.mean(axis=0)
    gene_mean, gene_std = context.gene_statistics
    spread = np.maximum(gene_std, _SPREAD_FLOOR)
    high_value, low_value = mean_expression.max(axis=0), mean_expression.min(axis=0)
    value_range = high_value - low_value
    rho = spearman_with_steps(mean_expression)
    if normalize == ZSCORE:
        normalized = (mean_expression - gene_mean) / spread
    else:
        normalized = np.divide(mean_expression - low_value, value_range, out=np.full_like(mean_expression, 0.5), where=value_range > 0)

    groups = context.gene_groups(genes, type_index, n_markers)
    group_column = np.full(len(context.genes), "", dtype=object)
    for name, group in groups.items():
        group_column[context.gene_position.get_indexer(group.genes)] = name
    index = pd.Index(reference, name="state")
    columns = context.gene_position
    scores = pd.DataFrame(
        {
            "group": group_column,
            "amplitude": value_range / spread,
            "rho": rho,
            "range": value_range,
            "change": mean_expression[-1] - mean_expression[0],
            "spread": gene_std,
            "mean": gene_mean,
        },
        index=columns,
    )
    type_cells = states.state_mean[arms[0], :, matched[0]]
    sorted_cells = np.sort(type_cells)
    percentile = 100.0 * np.searchsorted(sorted_cells, reference, side="right") / len(sorted_cells)
    alignment = pd.DataFrame(
        {
            "arm": arms,
            "dimension": matched.astype(int),
            "sign": sign.astype(int),
            "correlation": states.correlation[arms, dim] if arm is None else np.ones(1),
        }
    ).set_index("arm")
    label = _type_name(model, type_index, labels)
    cell_name = None if cell_position is None else str(model.prepared.obs_names[cell_position])
    cautions = trust_warnings(model, context, type_index, mean_expression, n_markers)
    return Traversal(
        type=type_index,
        type_label=label,
        dim=dim,
        cell=cell_name,
        arms=arms,
        state=reference,
        percentile=percentile,
        state_per_arm=swept,
        expression=pd.DataFrame(mean_expression, index=index, columns=columns),
        expression_per_arm=expression_per_arm,
        normalized=pd.DataFrame(normalized, index=index.copy(), columns=columns),
        normalization=normalize,
        groups=groups,
        scores=scores,
        alignment=alignment,
        held_state=held,
        n_cells=int(len(states.cells)),
        percentiles=(low, high),
        cell_state=None if cell_position is None else float(held[0, matched[0]]),
        warnings=cautions,
    )


#: Training steps below which a traversal warns that the model is barely trained (the default run has 5,000).
SHORT_RUN_STEPS = 1000
_TYPE_MEAN_MAX_CELLS = 5000


def trust_warnings(model, context: TraversalContext, type_index: int, decoded: np.ndarray,
                   n_markers: int = DEFAULT_MARKERS) -> list[str]:
    """Why a traversal of ``type_index`` may not describe the data, one line each: the model was trained for
    fewer than :data:`SHORT_RUN_STEPS` steps, or the decoder puts most of the type's own marker genes below
    the population mean although the type's cells have them above it (the decoded profile then disagrees
    with the data). ``decoded``: the sweep's (steps, G) mean reconstruction."""
    cautions = []
    step = int(getattr(model, "step", 0) or 0)
    if step < SHORT_RUN_STEPS:
        cautions.append(
            f"the model was trained for only {step:,} steps (fewer than {SHORT_RUN_STEPS:,}): its decoded profiles "
            "may not match the data yet; train longer before reading this traversal"
        )
    markers = context.marker_genes(type_index, n_markers)
    if not markers:
        return cautions
    columns = context.gene_position.get_indexer(markers)
    gene_mean, _ = context.gene_statistics
    cells = context.type_states(type_index).cells
    if len(cells) > _TYPE_MEAN_MAX_CELLS:
        cells = np.sort(np.random.default_rng(0).choice(cells, _TYPE_MEAN_MAX_CELLS, replace=False))
    type_mean = np.asarray(model.prepared.model_input(cells), dtype=np.float64)[:, columns].mean(axis=0)
    above_in_data = type_mean > gene_mean[columns]
    below_decoded = decoded[:, columns].mean(axis=0) < gene_mean[columns]
    disagree = int((above_in_data & below_decoded).sum())
    if above_in_data.sum() and disagree > above_in_data.sum() / 2:
        cautions.append(
            f"the decoder puts {disagree} of type {type_index}'s {int(above_in_data.sum())} marker genes that its "
            "cells express above the population mean below that mean: the reconstruction disagrees with the data "
            f"(model trained for {step:,} steps); read this traversal with care"
        )
    return cautions


@torch.no_grad()
def _decode_sweep(context: TraversalContext, type_index: int, arms: list[int], matched: np.ndarray,
                  swept: np.ndarray, held: np.ndarray) -> np.ndarray:
    """Decode every arm along its sweep: (len(arms), steps, G) on the log-normalised expression scale.

    The decoder is run for all arms at once (its weights are stacked); arms not asked for decode a copy
    of arm 0's inputs and are dropped. The decoder has no dropout or batch norm, so the module's
    train/eval mode does not matter and is left untouched (a training thread may be using it)."""
    module = context.module
    device = next(module.parameters()).device
    n_steps = swept.shape[1]
    s = np.repeat(np.asarray(held)[:, None, :], n_steps, axis=1)  # (len(arms), steps, S)
    for row in range(len(arms)):
        s[row, :, matched[row]] = swept[row]
    full_s = np.zeros((context.n_arms, n_steps, context.state_dim))
    full_s[:] = s[0]
    full_s[arms] = s
    c = torch.zeros(context.n_arms, n_steps, context.n_types, device=device)
    c[..., type_index] = 1.0
    decoded = module.decode(c, torch.as_tensor(full_s, dtype=torch.float32, device=device))
    expression = module.expression(decoded, context.target_sum)
    return expression[arms].double().cpu().numpy()


# -- more than one sweep --------------------------------------------------------------------------------------
def driven_genes(model, type: int | str, n: int = 20, **options) -> pd.DataFrame:  # noqa: A002
    """For every state dimension of a type, its ``n`` most driven genes ("which genes does this state
    regulate"): columns dim, rank, gene, group, amplitude, rho, change. ``options`` go to :func:`traverse`."""
    context = context_for(model)
    frames = []
    for dim in range(context.state_dim):
        result = traverse(model, type, dim, **options)
        top = result.top_genes(n).reset_index()
        top.insert(0, "dim", dim)
        frames.append(top[["dim", "rank", "gene", "group", "amplitude", "rho", "change"]])
    return pd.concat(frames, ignore_index=True)


@dataclass
class TypeComparison:
    """The same sweep for several types side by side (paper: L5 NP vs. L6 CT).

    traversals: one :class:`Traversal` per type, in the order asked; shared groups (IEG, HKG, custom) hold
    the same genes for every type, MG differs per type."""

    traversals: list[Traversal]

    @property
    def labels(self) -> list[str]:
        return [t.type_label or f"type {t.type}" for t in self.traversals]

    @property
    def scores(self) -> pd.DataFrame:
        """Long table of every type's gene scores (columns type, type_label, gene, group, amplitude, rho, ...)."""
        frames = []
        for result in self.traversals:
            frame = result.scores[result.scores["group"] != ""].reset_index()
            frame.insert(0, "type_label", result.type_label)
            frame.insert(0, "type", result.type)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    @property
    def group_summary(self) -> pd.DataFrame:
        frames = []
        for result in self.traversals:
            frame = result.group_summary.reset_index()
            frame.insert(0, "type_label", result.type_label)
            frame.insert(0, "type", result.type)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def contrast(self, group: str | None = None) -> pd.DataFrame:
        """Genes of the shared groups (or one group) with each type's rho and amplitude side by side,
        ordered by how differently the types respond (spread of rho x amplitude across types)."""
        shared = [name for name in self.traversals[0].groups if name != MARKERS]
        if group is not None:
            if group not in shared:
                raise CplmixError(f"unknown shared gene group '{group}' (shared groups: {', '.join(shared)})")
            shared = [group]
        genes = [g for name in shared for g in self.traversals[0].groups[name].genes]
        parts = {}
        for label, result in zip(self.labels, self.traversals):
            parts[("rho", label)] = result.scores.loc[genes, "rho"]
            parts[("amplitude", label)] = result.scores.loc[genes, "amplitude"]
        frame = pd.DataFrame(parts)
        frame.insert(0, "group", self.traversals[0].scores.loc[genes, "group"])
        signed = np.stack([r.scores.loc[genes, "rho"] * r.scores.loc[genes, "amplitude"] for r in self.traversals])
        frame["difference"] = signed.max(axis=0) - signed.min(axis=0)
        return frame.sort_values("difference", ascending=False, kind="stable")

    def display_matrices(self, max_genes_per_group: int | None = 30, normalized: bool = True) -> list[DisplayMatrix]:
        """One :class:`DisplayMatrix` per type. Shared groups show the same genes in every panel (those with
        the largest amplitude in any of the types) ordered by the first type's rho; MG is per type."""
        first = self.traversals[0]
        largest = pd.concat([r.scores["amplitude"] for r in self.traversals], axis=1).max(axis=1)
        shared = {
            name: first._choose_columns(group.genes, max_genes_per_group, select_by=largest)
            for name, group in first.groups.items()
            if name != MARKERS
        }
        return [r.display_matrix(max_genes_per_group, normalized, columns=shared) for r in self.traversals]


def compare_types(model, types: Iterable[int | str], dim: int = 0, steps: int = DEFAULT_STEPS, **options) -> TypeComparison:
    """Sweep the same state dimension for two or more types (``options`` as :func:`traverse`)."""
    types = list(types)
    if len(types) < 2:
        raise CplmixError("compare at least two types")
    results = [traverse(model, t, dim, steps, **options) for t in types]
    seen = [r.type for r in results]
    if len(set(seen)) < len(seen):
        raise CplmixError(f"the types to compare must differ, got {', '.join(map(str, types))}")
    return TypeComparison(results)
