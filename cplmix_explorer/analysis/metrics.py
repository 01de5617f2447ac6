"""Clustering metrics against known labels (paper Section 4): Hungarian-matched accuracy, ARI, NMI and
KL(q(c) || p(c)) between the inferred category marginal and the label marginal."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from ..model.consensus import adjusted_rand_index


def contingency_table(predicted, truth) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts (n_predicted_levels, n_true_levels) and the levels of each; cells with a missing label
    (None/NaN) are left out."""
    predicted = pd.Series(np.asarray(predicted)).reset_index(drop=True)
    truth = pd.Series(np.asarray(truth, dtype=object)).reset_index(drop=True)
    keep = truth.notna().to_numpy()
    predicted_codes, predicted_levels = pd.factorize(predicted[keep], sort=True)
    true_codes, true_levels = pd.factorize(truth[keep].astype(str), sort=True)
    table = np.zeros((len(predicted_levels), len(true_levels)), dtype=np.int64)
    np.add.at(table, (predicted_codes, true_codes), 1)
    return table, np.asarray(predicted_levels), np.asarray(true_levels)


def match_categories(table: np.ndarray) -> np.ndarray:
    """For each predicted level, the matched true level (index), by minimum-weight (Hungarian) matching of
    the contingency table; predicted levels left over (more categories than labels) take their majority label."""
    rows, cols = linear_sum_assignment(-table)
    mapping = table.argmax(axis=1)
    mapping[rows] = cols
    return mapping


def hungarian_accuracy(table: np.ndarray) -> float:
    """Fraction of cells on the one-to-one matching of categories to labels (the paper's ACC)."""
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / max(table.sum(), 1))


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_information(table: np.ndarray) -> float:
    """Mutual information over the arithmetic mean of the two entropies (scikit-learn's default)."""
    n = table.sum()
    joint = table / n
    row = joint.sum(axis=1, keepdims=True)
    col = joint.sum(axis=0, keepdims=True)
    nonzero = joint > 0
    mutual = float((joint[nonzero] * np.log(joint[nonzero] / (row @ col)[nonzero])).sum())
    h_rows, h_cols = _entropy(table.sum(axis=1)), _entropy(table.sum(axis=0))
    if h_rows == 0 and h_cols == 0:
        return 1.0
    denominator = 0.5 * (h_rows + h_cols)
    return float(mutual / denominator) if denominator > 0 else 0.0


def marginal_kl(table: np.ndarray, eps: float = 1e-10) -> float:
    """KL(q(c) || p(c)): the inferred categories' marginal (mapped onto labels) against the labels' marginal."""
    mapping = match_categories(table)
    inferred = np.zeros(table.shape[1])
    np.add.at(inferred, mapping, table.sum(axis=1))
    q = inferred / inferred.sum()
    p = table.sum(axis=0) / table.sum()
    return float(np.sum(np.where(q > 0, q * np.log((q + eps) / (p + eps)), 0.0)))


def compare_to_labels(predicted, truth) -> dict[str, float]:
    """ACC, ARI, NMI and KL of one assignment against known labels."""
    table, _, _ = contingency_table(predicted, truth)
    return {
        "acc": hungarian_accuracy(table),
        "ari": adjusted_rand_index(table),
        "nmi": normalized_mutual_information(table),
        "kl": marginal_kl(table),
    }
