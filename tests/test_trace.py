"""The evaluation trace records the arms' typing against known labels at every evaluation, and a traced run
trains exactly as an untraced one."""

from __future__ import annotations

import numpy as np
import torch

from cplmix_explorer import CplMixVAE
from cplmix_explorer.analysis.trace import EvaluationTrace


def _train(adata, trace: bool):
    model = CplMixVAE(adata, n_types=4, n_arms=2, labels="type", seed=1, eval_every=20)
    recorder = EvaluationTrace(model.module, model.prepared, adata.obs["type"]).attach(model.events) if trace else None
    result = model.train(steps=60, progress=False)
    if recorder is not None:
        recorder.detach()
    return model, result, recorder


def test_trace_has_a_row_per_evaluation_and_does_not_change_training(mixture):
    plain, plain_result, _ = _train(mixture, trace=False)
    traced, traced_result, trace = _train(mixture, trace=True)
    # the same run: every logged loss, every weight and the predictions are identical
    assert np.array_equal(plain_result.history_values, traced_result.history_values)
    plain_state, traced_state = plain.module.state_dict(), traced.module.state_dict()
    assert all(torch.equal(plain_state[k], traced_state[k]) for k in plain_state)
    assert [e.validation_loss for e in plain_result.evaluations] == [e.validation_loss for e in traced_result.evaluations]

    rows = trace.rows
    assert [row["step"] for row in rows] == [20, 40, 60]
    assert [row["validation_loss"] for row in rows] == [e.validation_loss for e in traced_result.evaluations]
    assert [row["mean_agreement"] for row in rows] == [e.mean_agreement for e in traced_result.evaluations]
    for row in rows:
        assert len(row["arm_ari"]) == 2 and all(-1.0 <= a <= 1.0 for a in row["arm_ari"])
        assert len(row["agreement_per_category"]) == 4
        assert all(1 <= used <= 4 for used in row["categories_used_per_arm"])
    # the last row is the trained model's own typing (all cells are scored: fewer than the subset's cap)
    final = traced.evaluate()
    assert np.isclose(np.mean(rows[-1]["arm_ari"]), final["ari"])
    assert np.isclose(rows[-1]["consensus_ari"], final["consensus_type"]["ari"])
    assert rows[-1]["categories_used"] == final["k_used"]
    assert final["ari"] > 0.8  # the well-separated mixture is found: the trace follows a real typing


def test_trace_scores_a_fixed_subset_of_cells_when_there_are_many(mixture):
    model = CplMixVAE(mixture, n_types=4, n_arms=2, seed=0, eval_every=10)
    trace = EvaluationTrace(model.module, model.prepared, mixture.obs["type"], max_cells=100, seed=0).attach(model.events)
    model.train(steps=20, progress=False)
    assert len(trace.cell_rows) == 100 and len(np.unique(trace.cell_rows)) == 100
    assert len(trace.rows) == 2
