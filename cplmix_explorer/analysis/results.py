"""Results back into AnnData, scverse-style: obs / obsm / uns keys documented in the README."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from ..model.consensus import Consensus
from ..model.inference import Inference
from .metrics import compare_to_labels

TYPE_KEY = "cplmix_type"
#: The consensus type as its integer index 0..K-1 (``cplmix_type`` holds the type names).
TYPE_ID_KEY = "cplmix_type_id"
CONFIDENCE_KEY = "cplmix_confidence"
AGREE_KEY = "cplmix_arms_agree"
STATE_KEY = "X_cplmix_state"
LATENT_KEY = "X_cplmix_latent"
UNS_KEY = "cplmix"


def type_labels(n_types: int) -> list[str]:
    """Category names as strings "0" ... "K-1" (as Leiden's), for categorical obs columns."""
    return [str(k) for k in range(n_types)]


def as_categorical(assignment: np.ndarray, n_types: int, names: list[str] | None = None) -> pd.Categorical:
    """Type indices as a categorical whose categories are ``names`` (default "0" ... "K-1")."""
    categories = list(names) if names is not None else type_labels(n_types)
    return pd.Categorical.from_codes(np.asarray(assignment, dtype=np.int64), categories=categories)


def h5ad_safe(value: Any) -> Any:
    """Drop None values and turn tuples/lists of numbers into arrays so ``uns`` can be written to .h5ad."""
    if isinstance(value, dict):
        return {str(k): h5ad_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (bool, int, float, np.number, np.bool_)) for v in value) and len(value):
            return np.asarray(value)
        if all(isinstance(v, str) for v in value) and len(value):
            return np.asarray(value, dtype=object)
        if len(value) and all(isinstance(v, (list, tuple, np.ndarray)) for v in value):
            return np.asarray(value)
        return {str(i): h5ad_safe(v) for i, v in enumerate(value) if v is not None}
    return value


def evaluate_inference(inference: Inference, labels) -> dict[str, Any]:
    """Metrics against known labels: per arm, averaged across arms (the paper's convention), and for the
    consensus type."""
    per_arm = [compare_to_labels(assigned, labels) for assigned in inference.type_per_arm]
    mean = {key: float(np.mean([m[key] for m in per_arm])) for key in per_arm[0]}
    return {**mean, "per_arm": per_arm, "consensus_type": compare_to_labels(inference.consensus_type, labels)}


def write_results(
    adata: AnnData,
    inference: Inference,
    *,
    n_types: int,
    agreement: Consensus | None,
    info: dict[str, Any],
    type_names: list[str] | None = None,
) -> AnnData:
    """Write results into ``adata`` (in place) and return it.

    obs: cplmix_type (consensus type, categorical; categories = ``type_names``, default "0".."K-1"),
    cplmix_type_id (its integer index), cplmix_confidence, cplmix_arms_agree, cplmix_type_arm{a}; obsm: X_cplmix_state (arm 0's state means, (N, S)), X_cplmix_state_arms (N, A*S),
    X_cplmix_latent (arm 0's latent h that the state reads, (N, D): the state encoder's bottleneck, or the type
    encoder's with state_encoder='shared'); uns['cplmix']: configuration, metrics, consensus.
    """
    adata.obs[TYPE_KEY] = as_categorical(inference.consensus_type, n_types, type_names)
    adata.obs[TYPE_ID_KEY] = np.asarray(inference.consensus_type, dtype=np.int64)
    adata.obs[CONFIDENCE_KEY] = inference.consensus_confidence.astype(np.float32)
    adata.obs[AGREE_KEY] = inference.arms_agree
    for arm, assigned in enumerate(inference.type_per_arm):
        adata.obs[f"{TYPE_KEY}_arm{arm}"] = as_categorical(assigned, n_types, type_names)
    n_arms, n_cells, state_dim = inference.state_mean.shape
    adata.obsm[STATE_KEY] = inference.state_mean[0].astype(np.float32)
    adata.obsm[f"{STATE_KEY}_arms"] = inference.state_mean.transpose(1, 0, 2).reshape(n_cells, n_arms * state_dim).astype(np.float32)
    adata.obsm[LATENT_KEY] = inference.latent[0].astype(np.float32)
    uns = dict(info)
    if type_names is not None:
        uns["type_names"] = list(type_names)
    if agreement is not None:
        uns["consensus"] = agreement.to_dict()
    adata.uns[UNS_KEY] = h5ad_safe(uns)
    return adata
