"""Agreement of the arms (method.md, "Category pruning"): for every pair of arms the K x K confusion of
their argmax assignments over all cells; agreement of category k = M_kk / max(row_k sum, column_k sum)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import comb


def pair_confusion(first: np.ndarray, second: np.ndarray, n_types: int) -> np.ndarray:
    """(K, K) counts of cells assigned to category i by one arm and j by the other."""
    confusion = np.zeros((n_types, n_types), dtype=np.int64)
    np.add.at(confusion, (np.asarray(first), np.asarray(second)), 1)
    return confusion


def category_agreement_of_pair(confusion: np.ndarray) -> np.ndarray:
    """(K,) M_kk / max(row_k, col_k); 0 for a category neither arm uses."""
    largest = np.maximum(confusion.sum(axis=1), confusion.sum(axis=0))
    return np.divide(np.diag(confusion), largest, out=np.zeros(len(largest)), where=largest > 0)


def adjusted_rand_index(table: np.ndarray) -> float:
    """Adjusted Rand index of two partitions from their contingency table (counts, one partition's levels by the
    other's): 1 for the same partition, about 0 for unrelated ones."""
    n = table.sum()
    sum_cells = comb(table, 2).sum()
    sum_rows = comb(table.sum(axis=1), 2).sum()
    sum_cols = comb(table.sum(axis=0), 2).sum()
    expected = sum_rows * sum_cols / comb(n, 2) if n > 1 else 0.0
    maximum = 0.5 * (sum_rows + sum_cols)
    if maximum == expected:  # both partitions trivial
        return 1.0
    return float((sum_cells - expected) / (maximum - expected))


@dataclass
class Consensus:
    """Arm agreement over all cells.

    agreement: (K,) per-category agreement averaged over arm pairs (0 where unused);
    used: (K,) whether any arm assigns cells to the category;
    matrix: (K, K) confusion summed over arm pairs, rows normalised to fractions (the consensus matrix);
    pair_agreement: (P, K) per pair of arms.
    """

    agreement: np.ndarray
    used: np.ndarray
    matrix: np.ndarray
    pair_agreement: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.agreement[self.used].mean()) if self.used.any() else 0.0

    @property
    def min(self) -> float:
        return float(self.agreement[self.used].min()) if self.used.any() else 0.0

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "min": self.min,
            "agreement": self.agreement.tolist(),
            "used": self.used.tolist(),
            "matrix": self.matrix.tolist(),
        }


def consensus(type_per_arm: np.ndarray, n_types: int) -> Consensus | None:
    """Agreement of the arms' assignments (A, N); None for a single arm (nothing to agree with)."""
    type_per_arm = np.asarray(type_per_arm)
    n_arms = type_per_arm.shape[0]
    if n_arms < 2:
        return None
    total = np.zeros((n_types, n_types), dtype=np.int64)
    pairs = []
    for a in range(n_arms):
        for b in range(a + 1, n_arms):
            confusion = pair_confusion(type_per_arm[a], type_per_arm[b], n_types)
            total += confusion
            pairs.append(category_agreement_of_pair(confusion))
    pair_agreement = np.stack(pairs)
    used = np.zeros(n_types, dtype=bool)
    for arm in type_per_arm:
        used[np.unique(arm)] = True
    row_sums = total.sum(axis=1, keepdims=True)
    matrix = np.divide(total, row_sums, out=np.zeros(total.shape), where=row_sums > 0)
    return Consensus(agreement=pair_agreement.mean(axis=0), used=used, matrix=matrix, pair_agreement=pair_agreement)
