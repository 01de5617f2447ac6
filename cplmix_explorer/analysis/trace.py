"""A training trace against known labels: what the arms' typing looks like at every evaluation.

:class:`EvaluationTrace` subscribes to a run's :class:`~cplmix_explorer.train.events.EventBus` and, on each
:class:`~cplmix_explorer.train.events.Evaluation` the engine publishes (every ``eval_every`` steps and at the
end), infers the types of a fixed subset of cells and records each arm's ARI and the consensus ARI against the
labels, the categories each arm uses, together with what the evaluation itself reports (the arms' agreement,
per category and on average, and the held-out objective). It only reads the network, in eval mode and without
random draws, so a traced run trains exactly as an untraced one. It exists to see when and how a run drifts
from its start partition (merged types, arms that drift apart), which the end of training alone does not show.
"""

from __future__ import annotations

import numpy as np

from ..data.preprocess import PreparedData
from ..model.inference import infer
from ..model.network import CoupledMixtureVAE
from ..train.device_data import DeviceData
from ..train.engine import MAX_EVALUATION_CELLS
from ..train.events import Evaluation, EventBus
from .metrics import compare_to_labels


class EvaluationTrace:
    """Records one row per evaluation of a run (see the module docstring); ``rows`` holds them in order.

    labels: (cells,) known label of every cell of ``prepared`` (missing values are left out of the scores);
    max_cells: cells scored per evaluation (a fixed random subset, seeded by ``seed``, when there are more).
    """

    def __init__(
        self,
        module: CoupledMixtureVAE,
        prepared: PreparedData,
        labels,
        *,
        max_cells: int = MAX_EVALUATION_CELLS,
        seed: int = 0,
    ):
        labels = np.asarray(labels, dtype=object)
        if len(labels) != prepared.n_cells:
            raise ValueError(f"{len(labels)} labels for {prepared.n_cells} cells")
        rows = np.arange(prepared.n_cells)
        if len(rows) > max_cells:
            rows = np.sort(np.random.default_rng(seed).choice(rows, max_cells, replace=False))
        self.module, self.prepared, self.cell_rows, self.labels = module, prepared, rows, labels[rows]
        self.rows: list[dict] = []
        self._data: DeviceData | None = None
        self._unsubscribe = None

    def attach(self, events: EventBus) -> EvaluationTrace:
        """Start recording the evaluations published on ``events``."""
        self._unsubscribe = events.subscribe(self)
        return self

    def detach(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def __call__(self, event) -> None:
        if isinstance(event, Evaluation):
            self.rows.append(self.record(event))

    def record(self, event: Evaluation) -> dict:
        """The row of one evaluation (JSON-ready)."""
        device = next(self.module.parameters()).device
        if self._data is None or self._data.device != device:
            self._data = DeviceData(self.prepared, device)
        inference = infer(self.module, self._data, rows=self.cell_rows)
        arm_scores = [compare_to_labels(assigned, self.labels) for assigned in inference.type_per_arm]
        return {
            "step": int(event.step),
            "arm_ari": [float(s["ari"]) for s in arm_scores],
            "consensus_ari": float(compare_to_labels(inference.consensus_type, self.labels)["ari"]),
            "mean_agreement": event.mean_agreement,
            "min_agreement": event.min_agreement,
            "agreement_per_category": [round(float(a), 4) for a in event.agreement],
            "categories_used_per_arm": [int(len(np.unique(assigned))) for assigned in inference.type_per_arm],
            "categories_used": int(len(np.unique(inference.consensus_type))),
            "validation_loss": event.validation_loss,
        }
