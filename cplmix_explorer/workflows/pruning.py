"""Consensus pruning and the number of types (method.md, "Category pruning and the number of types").

Train with a generous K, then repeatedly remove the category the arms agree on least, fine-tune, and
record (K, min and mean agreement), until every surviving category's agreement passes a threshold (the
reference uses 0.95 for Smart-seq). Agreement is computed over all cells (no dropped remainder).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..config import PruningOptions
from ..config import default_fine_tune_steps as _fine_tune_steps_for
from ..errors import CplmixError
from ..model.consensus import Consensus, consensus
from ..train.progress import ProgressBar


@dataclass
class PruningRound:
    k: int
    min_agreement: float
    mean_agreement: float
    removed: int | None  # original category id removed before this round's fine-tuning (None: start)
    step: int


@dataclass
class PruningResult:
    """trajectory: one row per round (k, min_agreement, mean_agreement, removed, step); chosen_k: the K where
    every surviving category passes ``min_consensus`` (or ``min_types`` when reached first)."""

    trajectory: pd.DataFrame
    chosen_k: int
    min_consensus: float
    status: str  # "passed" (threshold met), "min_types" (stopped at the floor), or "stopped" (by request)
    min_types: int | None = None

    @property
    def reason(self) -> str:
        """Why pruning stopped at ``chosen_k``, one sentence for the user."""
        last = self.trajectory.iloc[-1] if len(self.trajectory) else None
        least = f"{float(last['min_agreement']):.3f}" if last is not None else "unknown"
        if self.status == "passed":
            return (f"Stopped at K = {self.chosen_k}: every type's agreement reached the threshold "
                    f"{self.min_consensus:g} (least agreed type: {least}).")
        if self.status == "min_types":
            return (f"Stopped at K = {self.chosen_k}, the 'stop at K' floor (--min-types {self.min_types or self.chosen_k}), "
                    f"before every type passed the threshold: the least agreed type is at {least}, below "
                    f"{self.min_consensus:g}. Lower the floor or the threshold to prune further.")
        return f"Stopped by request at K = {self.chosen_k} (least agreed type: {least})."

    def to_dict(self) -> dict:
        """Plain JSON values: the first round's ``removed`` is None (not NaN, which strict JSON readers refuse)."""
        trajectory = {column: self.trajectory[column].tolist() for column in self.trajectory.columns}
        trajectory["removed"] = [None if pd.isna(value) else int(value) for value in self.trajectory["removed"]]
        return {
            "chosen_k": self.chosen_k,
            "min_consensus": self.min_consensus,
            "status": self.status,
            "reason": self.reason,
            "trajectory": trajectory,
        }


def least_agreed_category(agreement: Consensus, cells_per_category: np.ndarray) -> int:
    """Index of the category to remove: lowest agreement, ties broken by fewer cells."""
    order = np.lexsort((cells_per_category, agreement.agreement))
    return int(order[0])


def default_fine_tune_steps(model) -> int:
    """Fine-tuning steps per round when none are given (:class:`~cplmix_explorer.config.PruningOptions`)."""
    return _fine_tune_steps_for(model.config.steps)


_DEFAULTS = PruningOptions()


def prune(
    model,
    min_consensus: float = _DEFAULTS.min_consensus,
    min_types: int = _DEFAULTS.min_types,
    fine_tune_steps: int | None = _DEFAULTS.fine_tune_steps,
    control=None,
    progress: bool = False,
    on_round: Callable[[PruningRound], None] | None = None,
    run_dir=None,
) -> PruningResult:
    """Prune ``model`` (a trained :class:`~cplmix_explorer.api.CplMixVAE`, modified in place).

    The options and their defaults are :class:`~cplmix_explorer.config.PruningOptions` (the CLI's and the
    app's too). Each round removes one category and fine-tunes for ``fine_tune_steps`` (default: a tenth of
    the configured steps, at least 100). ``on_round`` is called after every round (the app plots it live);
    ``control`` (a TrainingControl) can stop between and within rounds.
    """
    if model.module.n_arms < 2:
        raise CplmixError("pruning needs at least two arms (agreement between arms decides which types survive)")
    if not 0.0 < min_consensus <= 1.0:
        raise CplmixError(f"--min-consensus must be in (0, 1], got {min_consensus}")
    if min_types < 2:
        raise CplmixError(f"--min-types must be at least 2, got {min_types}")
    if min_types > model.module.n_types:
        raise CplmixError(f"--min-types ({min_types}) exceeds the model's {model.module.n_types} types")
    steps = default_fine_tune_steps(model) if fine_tune_steps is None else int(fine_tune_steps)
    rounds: list[PruningRound] = []
    removed: int | None = None
    status = "passed"
    while True:
        inference = model.predict()
        agreement = consensus(inference.type_per_arm, model.module.n_types)
        used = agreement.used
        record = PruningRound(
            k=int(model.module.n_types),
            min_agreement=float(agreement.agreement.min()),
            mean_agreement=float(agreement.agreement[used].mean()) if used.any() else 0.0,
            removed=removed,
            step=int(model.step),
        )
        rounds.append(record)
        if on_round is not None:
            on_round(record)
        if record.min_agreement >= min_consensus:
            break
        if model.module.n_types <= min_types:
            status = "min_types"
            break
        if control is not None and control.stop_requested:
            status = "stopped"
            break
        cells = np.bincount(inference.consensus_type, minlength=model.module.n_types)
        worst = least_agreed_category(agreement, cells)
        removed = int(model.module.category_ids[worst])
        keep = np.delete(np.arange(model.module.n_types), worst)
        remove_categories(model, keep)
        if steps > 0:
            # one bar per round, cleared when the round ends: the rounds are in the result, and a terminal
            # shows no leftover lines (blank ones where it reports no width) before the command's JSON
            bar = ProgressBar(model.events, leave=False, desc=f"pruning K={model.module.n_types}") if progress else None
            try:
                result = model.train(steps=steps, progress=False, control=control, run_dir=run_dir)
            finally:
                if bar is not None:
                    bar.close()
            if result.status == "stopped":
                status = "stopped"
    trajectory = pd.DataFrame([vars(r) for r in rounds])
    return PruningResult(trajectory=trajectory, chosen_k=int(model.module.n_types), min_consensus=min_consensus, status=status,
                         min_types=min_types)


def remove_categories(model, keep: np.ndarray) -> None:
    """Keep only categories ``keep`` of a CplMixVAE (weights sliced; optimizer state reset). The start partition
    no longer matches the categories, so it stops being a prior (``type_prior_weight`` 0, kept in the saved
    model so that its fine-tuning and any resume go on without it)."""
    model.module.keep_categories(keep)
    model.config.update(n_types=int(model.module.n_types), type_prior_weight=0.0)
    model.reset_optimizer()
