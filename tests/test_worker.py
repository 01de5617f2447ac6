"""Training and pruning in a child process (what the served app does): events, stop requests and failures reach
this process."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from conftest import mixture_counts

from cplmix_explorer.config import CplMixConfig
from cplmix_explorer.data.io import read_data
from cplmix_explorer.errors import CplmixError
from cplmix_explorer.train.events import StepMetrics, TrainingControl, TrainingFinished, TrainingStarted
from cplmix_explorer.workflows.worker import ProcessPruning, ProcessTraining, TrainingProcessError

QUICK = {"n_types": 4, "n_arms": 2, "state_dim": 2, "n_genes": 100, "batch_size": 128, "log_every": 5, "eval_every": 20,
         "device": "cpu", "seed": 0}


def _wait_for(condition, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_run_in_a_child_process_streams_its_events_and_returns_the_trained_model(tmp_path):
    training = ProcessTraining(mixture_counts(), tmp_path / "run", CplMixConfig(**QUICK, steps=60, labels="type"))
    events = []
    training.events.subscribe(events.append)
    outcome = training.run()
    assert training.process.pid != os.getpid() and training.process.exitcode == 0  # trained elsewhere, and ended
    kinds = [type(event) for event in events]
    assert kinds[0] is TrainingStarted and kinds[-1] is TrainingFinished and StepMetrics in kinds
    steps = [int(step) for event in events if isinstance(event, StepMetrics) for step in event.steps]
    assert steps == list(range(1, 61))  # every step, in order
    assert outcome.result.status == "completed" and outcome.model.step == 60
    assert (tmp_path / "run" / "result.h5ad").exists() and outcome.metrics["acc"] > 0.5
    # the model loaded back here is the one the child trained: the same accuracy
    assert outcome.model.predict().consensus_type.shape == (600,)
    assert outcome.model.evaluate("type")["acc"] == pytest.approx(outcome.metrics["acc"])


def test_the_model_comes_back_onto_the_data_this_process_already_holds(tmp_path):
    """The app's session has read the file already: the child reads it for itself, and the trained model is
    loaded back onto the session's copy instead of a second reading of the file here."""
    path = tmp_path / "cells.h5ad"
    mixture_counts().write_h5ad(path)
    held = read_data(path)
    training = ProcessTraining(str(path), tmp_path / "run", CplMixConfig(**QUICK, steps=30, labels="type"), data=held)
    outcome = training.run()
    assert outcome.model.adata is held
    # prepared once, here: the child trained on this preparation and the model came back onto it
    assert training.prepared is not None and outcome.model.prepared is training.prepared
    assert outcome.model.evaluate("type")["acc"] == pytest.approx(outcome.metrics["acc"])


def test_a_run_given_its_prepared_data_does_not_prepare_it_again(tmp_path, monkeypatch):
    """What the app's training process does with the preparation the app made (train_run(prepared=...))."""
    import cplmix_explorer.api as api
    from cplmix_explorer.workflows.run import train_run

    adata, config = mixture_counts(n_cells=300), CplMixConfig(**QUICK, steps=10)
    prepared = api.prepare_for_model(adata, config)
    calls = []
    monkeypatch.setattr(api, "prepare", lambda *args, **kwargs: calls.append(args) or prepare_real(*args, **kwargs))
    from cplmix_explorer.data.preprocess import prepare as prepare_real

    outcome = train_run(adata, tmp_path / "run", config, progress=False, prepared=prepared)
    assert calls == [] and outcome.model.prepared is prepared and outcome.model.step == 10
    assert list(outcome.model.prepared.genes) == list(prepared.genes)
    with pytest.raises(CplmixError, match="prepared data holds 300 cells, not the 200"):
        train_run(adata[:200].copy(), tmp_path / "other", config, progress=False, prepared=prepared)
    assert not (tmp_path / "other").exists()


def test_a_stop_request_stops_the_child_between_steps_and_keeps_what_it_trained(tmp_path):
    training = ProcessTraining(mixture_counts(), tmp_path / "run", CplMixConfig(**QUICK, steps=20000))
    control, steps_seen, done = TrainingControl(), [], {}
    training.events.subscribe(lambda event: steps_seen.append(event.last_step) if isinstance(event, StepMetrics) else None)
    worker = threading.Thread(target=lambda: done.setdefault("outcome", training.run(control)))
    worker.start()
    _wait_for(lambda: len(steps_seen) >= 2)
    control.stop("enough")
    worker.join(60)
    outcome = done["outcome"]
    assert outcome.result.status == "stopped" and steps_seen[-1] <= outcome.model.step < 20000
    assert outcome.metrics["status"] == "stopped" and not training.process.is_alive()


def test_a_child_that_dies_is_reported_with_its_signal(tmp_path):
    training = ProcessTraining(mixture_counts(), tmp_path / "run", CplMixConfig(**QUICK, steps=20000))
    killed = []

    def kill_once(event) -> None:
        if isinstance(event, StepMetrics) and not killed:
            killed.append(True)
            os.kill(training.process.pid, signal.SIGKILL)

    training.events.subscribe(kill_once)
    with pytest.raises(TrainingProcessError, match=r"ended unexpectedly \(killed by signal 9"):
        training.run()


def test_a_user_mistake_in_the_child_comes_back_as_its_one_line_message(tmp_path):
    training = ProcessTraining(str(tmp_path / "missing.h5ad"), tmp_path / "run", CplMixConfig(**QUICK, steps=10))
    with pytest.raises(CplmixError, match="missing.h5ad"):
        training.run()
    assert not (tmp_path / "run").exists()  # nothing half written


def test_pruning_in_a_child_process_reports_each_round_here_and_saves_the_pruned_model(tmp_path):
    from cplmix_explorer import CplMixVAE

    model = CplMixVAE(mixture_counts(), config=CplMixConfig(**{**QUICK, "n_types": 6}))
    model.train(steps=40, progress=False)
    model.save(tmp_path / "run")
    rounds, steps_seen = [], []
    job = ProcessPruning(tmp_path / "run", model.adata, "cpu", {"min_consensus": 1.0, "min_types": 4, "fine_tune_steps": 10},
                         on_round=rounds.append, prepared=model.prepared)
    job.events.subscribe(lambda event: steps_seen.append(event.last_step) if isinstance(event, StepMetrics) else None)
    pruned, result = job.run()
    assert job.process.pid != os.getpid() and job.process.exitcode == 0
    assert [r.k for r in rounds] == [6, 5, 4] and result.chosen_k == 4  # every round arrived here, in order
    assert steps_seen and steps_seen[-1] == 60  # the two fine-tunings' steps were streamed
    assert pruned.module.n_types == 4 and CplMixVAE.load(tmp_path / "run", model.adata).module.n_types == 4
    assert model.module.n_types == 6  # the model in this process is left as it was
    assert pruned.prepared is model.prepared  # the data prepared for the shown model is not prepared again
