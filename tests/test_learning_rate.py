"""The learning rate's decay at the end of a training call (``lr_decay``): full until the call's last share of
steps, then falling linearly to 0; a resumed run keeps the window it started with. Real training on small
generated counts."""

from __future__ import annotations

import pytest
import torch
from conftest import mixture_counts

from cplmix_explorer.api import CplMixVAE
from cplmix_explorer.train.checkpoint import read_checkpoint
from cplmix_explorer.train.events import StepMetrics, TrainingControl

SMALL = dict(n_types=3, n_arms=2, hidden_dim=16, n_hidden_layers=2, batch_size=32, log_every=1, eval_every=1000,
             device="cpu", seed=1)


@pytest.fixture(scope="module")
def counts():
    return mixture_counts(n_cells=120, n_genes=40, n_types=3)


def rates_per_step(model: CplMixVAE, steps: int) -> list[float]:
    """Train ``steps`` steps and return the learning rate each step used."""
    trainer = model.make_trainer()
    rates: list[float] = []
    trainer.events.subscribe(
        lambda event: rates.append(float(trainer.optimizer.param_groups[0]["lr"])) if isinstance(event, StepMetrics) else None
    )
    trainer.fit(steps)
    return rates


def test_the_rate_is_full_until_the_last_30_percent_of_the_steps_then_falls_linearly_towards_zero(counts):
    rates = rates_per_step(CplMixVAE(counts, lr=2e-3, **SMALL), 20)
    # steps 0-13 at the full rate; from step 14 the rate falls by a sixth a step and reaches 0 at step 20
    assert rates == pytest.approx([2e-3] * 15 + [2e-3 * k / 6 for k in (5, 4, 3, 2, 1)])
    assert rates_per_step(CplMixVAE(counts, lr=2e-3, lr_decay=0.0, **SMALL), 20) == pytest.approx([2e-3] * 20)


def test_a_run_stopped_inside_its_decay_resumes_on_the_same_schedule_and_a_new_call_decays_again(counts, tmp_path):
    straight = CplMixVAE(counts, **SMALL)
    straight.train(steps=20, progress=False)
    assert straight.lr_decay_window == (14, 20)

    stopped = CplMixVAE(counts, **SMALL)
    control = TrainingControl()
    stopped.events.subscribe(lambda event: control.stop() if isinstance(event, StepMetrics) and event.last_step == 16 else None)
    assert stopped.train(steps=20, progress=False, control=control).status == "stopped"
    assert stopped.step == 16
    stopped.save(tmp_path / "run")
    assert read_checkpoint(tmp_path / "run" / "checkpoint.safetensors").extra["lr_decay_window"] == [14, 20]

    resumed = CplMixVAE.load(tmp_path / "run", counts)
    assert resumed.lr_decay_window == (14, 20)
    resumed.train(until_step=20, progress=False)  # the rest of the planned run: its window, not one of 4 steps
    expected, got = straight.module.state_dict(), resumed.module.state_dict()
    for name in expected:
        assert torch.allclose(expected[name], got[name], rtol=1e-4, atol=1e-6), name

    resumed.train(steps=10, progress=False)  # a new call: the last 3 of its 10 steps
    assert resumed.lr_decay_window == (27, 30)
