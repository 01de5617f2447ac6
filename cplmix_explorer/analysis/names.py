"""Names of the inferred types, shown everywhere a type number used to be.

Automatic names: with a labels column (the run's ``labels``), a type is named after the label most of its
cells carry, ``3 · Pvalb``; when several types carry the same label most, the one with the most cells of
it keeps the plain name and the others get ``#2``, ``#3``, ... (``5 · Pvalb #2``). Without labels, a type
is named after its two top Wilcoxon marker genes (:mod:`.markers`), ``3 · Gad1/Pvalb``. Types without cells
keep their number.

Renames: the user's own name for a type replaces the automatic one (an empty name goes back to it). They
are kept per category id (the model's ``category_ids``), so they survive pruning, which renumbers types.

A run folder keeps its names in ``type_names.json`` (written atomically): the names shown, the automatic
ones and the renames, with the step, category ids and labels column they were computed for, so opening the
run again shows the same names without recomputing the markers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import read_h5ad

from ..data.io import write_h5ad
from ..errors import CplmixError
from ..files import atomic_write_bytes
from .metrics import contingency_table
from .results import TYPE_ID_KEY, TYPE_KEY, UNS_KEY

NAMES_FILE = "type_names.json"
SEPARATOR = " · "
#: Longest name a user may give a type.
MAX_NAME_LENGTH = 80
_FILE_VERSION = 1


def label_names(consensus_type: np.ndarray, labels, n_types: int) -> dict[int, str]:
    """Type -> its majority label (``labels``: one per cell; missing labels left out), made unique with
    ``#2``, ``#3`` in order of how many cells of the label each type holds. Types without labelled cells
    are left out."""
    table, type_levels, label_levels = contingency_table(np.asarray(consensus_type), labels)
    if table.size == 0:
        return {}
    majority = table.argmax(axis=1)
    names: dict[int, str] = {}
    for column in np.unique(majority):
        rows = np.flatnonzero(majority == column)
        rows = rows[np.argsort(-table[rows, column], kind="stable")]
        for order, row in enumerate(rows):
            suffix = "" if order == 0 else f" #{order + 1}"
            names[int(type_levels[row])] = f"{label_levels[column]}{suffix}"
    return names


def marker_names(statistics, n_genes: int = 2) -> dict[int, str]:
    """Type -> its top ``n_genes`` marker genes joined by ``/`` (types with cells only)."""
    return {int(t): "/".join(statistics.top_genes(int(t), n_genes)) for t in statistics.types}


def automatic_names(model, labels: str | None = None) -> tuple[list[str], str | None]:
    """The automatic name of every type (K) of a trained model and the labels column used (None: named by
    markers). ``labels`` defaults to the model's ``config.labels`` when the data has that column."""
    labels = labels if labels is not None else getattr(model.config, "labels", None)
    if labels is not None and labels not in model.adata.obs.columns:
        labels = None
    inference = model.predict()
    n_types = int(model.module.n_types)
    names: dict[int, str] = {}
    if labels is not None:
        names = label_names(inference.consensus_type, model.adata.obs[labels].to_numpy(), n_types)
    counts = np.bincount(inference.consensus_type, minlength=n_types)
    if any(counts[t] > 0 and t not in names for t in range(n_types)):
        from .markers import marker_statistics  # lazy: markers load matplotlib; labelled types need none

        by_markers = marker_names(marker_statistics(model))
        names = {**by_markers, **names}
    return [f"{t}{SEPARATOR}{names[t]}" if names.get(t) else str(t) for t in range(n_types)], labels


def check_name(name: str) -> str:
    """A user's type name, stripped; one clear error for a name that cannot be shown."""
    if not isinstance(name, str):
        raise CplmixError(f"a type name must be text, got {type(name).__name__}")
    name = " ".join(name.split())
    if len(name) > MAX_NAME_LENGTH:
        raise CplmixError(f"a type name can have at most {MAX_NAME_LENGTH} characters, got {len(name)}")
    return name


def resolve_type_index(names: list[str], type_spec) -> int:
    """A type index from an index (int or digits) or one of ``names`` (case-insensitive)."""
    n_types = len(names)
    if isinstance(type_spec, (int, np.integer)) and not isinstance(type_spec, bool):
        index = int(type_spec)
    elif isinstance(type_spec, str) and type_spec.strip().isdigit():
        index = int(type_spec.strip())
    else:
        text = str(type_spec).strip()
        folded = [n.casefold() for n in names]
        if text.casefold() not in folded:
            raise CplmixError(f"no type is named '{text}' (types: {', '.join(names[:8])}{', ...' if n_types > 8 else ''})")
        return folded.index(text.casefold())
    if not 0 <= index < n_types:
        raise CplmixError(f"type {index} is out of range: the model has {n_types} types (0..{n_types - 1})")
    return index


def check_unique(names: list[str], index: int, name: str) -> None:
    """Refuse a name another type already shows (case-insensitive): names must tell types apart."""
    for other, shown in enumerate(names):
        if other != index and shown.casefold() == name.casefold():
            raise CplmixError(f"type {other} is already named '{shown}'; choose another name")


# -- the run folder's file ---------------------------------------------------------------------------------
def names_payload(model, names: list[str], automatic: list[str], labels: str | None) -> dict:
    return {
        "version": _FILE_VERSION,
        "step": int(model.step),
        "n_cells": int(model.prepared.n_cells),
        "category_ids": [int(c) for c in model.module.category_ids.cpu().numpy().tolist()],
        "labels": labels,
        "names": list(names),
        "automatic": list(automatic),
        "renamed": {str(k): v for k, v in sorted(model.type_renames.items())},
    }


def write_names_file(run_dir: str | os.PathLike, payload: dict) -> Path:
    path = Path(run_dir) / NAMES_FILE
    atomic_write_bytes(path, (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode())
    return path


def read_names_file(run_dir: str | os.PathLike) -> dict | None:
    """RUN_DIR/type_names.json checked, or None when there is none; a damaged file raises CplmixError."""
    path = Path(run_dir) / NAMES_FILE
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise CplmixError(f"cannot read '{path}': {error}") from None
    renamed = payload.get("renamed") if isinstance(payload, dict) else None
    automatic = payload.get("automatic") if isinstance(payload, dict) else None
    if not isinstance(renamed, dict) or not all(k.isdigit() and isinstance(v, str) for k, v in renamed.items()):
        raise CplmixError(f"'{path}' is not a type names file (its 'renamed' entry is not a map of ids to names)")
    if automatic is not None and not (isinstance(automatic, list) and all(isinstance(v, str) for v in automatic)):
        raise CplmixError(f"'{path}' is not a type names file (its 'automatic' entry is not a list of names)")
    return payload


def rename_result_file(path: str | os.PathLike, names: list[str]) -> bool:
    """Put ``names`` into an existing result.h5ad (obs['cplmix_type'] and the per-arm columns' categories,
    uns['cplmix']['type_names']), rewritten atomically. False when the file does not hold this model's
    types (no ``cplmix_type_id``, or another number of types)."""
    path = Path(path)
    if not path.exists():
        return False
    adata = read_h5ad(path)
    if TYPE_ID_KEY not in adata.obs.columns or len(adata.obs[TYPE_KEY].cat.categories) != len(names):
        return False
    for column in [TYPE_KEY, *[c for c in adata.obs.columns if str(c).startswith(f"{TYPE_KEY}_arm")]]:
        adata.obs[column] = pd.Categorical.from_codes(adata.obs[column].cat.codes.to_numpy(), categories=list(names))
    if UNS_KEY in adata.uns:
        adata.uns[UNS_KEY]["type_names"] = np.asarray(names, dtype=object)
    write_h5ad(path, adata)
    return True


__all__ = ["NAMES_FILE", "SEPARATOR", "automatic_names", "check_name", "label_names", "marker_names",
           "read_names_file", "rename_result_file", "resolve_type_index", "write_names_file"]
