"""The training engine end to end on CPU: recovery of known types, determinism, events, control,
checkpoints and resume, sparse/dense equivalence, non-finite losses."""

import queue
import threading

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from conftest import mixture_counts

from cplmix_explorer import CplMixConfig, CplMixVAE
from cplmix_explorer.data.preprocess import prepare
from cplmix_explorer.errors import CplmixError, NonFiniteLossError
from cplmix_explorer.train.engine import Trainer, build_module
from cplmix_explorer.train.events import Evaluation, StepMetrics, TrainingControl, TrainingFinished, TrainingStarted


def _parameters(model: CplMixVAE) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def test_recovers_known_types_of_a_mixture(mixture):
    model = CplMixVAE(mixture, n_types=4, n_arms=2, labels="type", seed=0)
    model.train(steps=300, progress=False)
    metrics = model.evaluate()
    assert metrics["acc"] >= 0.9
    assert metrics["consensus"] >= 0.9
    assert set(metrics) >= {"acc", "ari", "nmi", "kl", "consensus", "k"}


def test_same_seed_same_result_and_other_seed_differs(mixture):
    runs = []
    for seed in (3, 3, 4):
        model = CplMixVAE(mixture, n_types=4, n_arms=2, seed=seed)
        result = model.train(steps=40, progress=False)
        runs.append((result.history_values, _parameters(model)))
    assert np.array_equal(runs[0][0], runs[1][0])
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    assert not np.array_equal(runs[0][0], runs[2][0])


def test_metric_events_per_step_and_evaluations(mixture):
    model = CplMixVAE(mixture, n_types=4, n_arms=3, log_every=10, eval_every=20)
    events = model.events.subscribe_queue()
    seen = []
    unsubscribe = model.events.subscribe(seen.append)
    model.train(steps=45, progress=False)
    unsubscribe()
    drained = []
    while True:
        try:
            drained.append(events.get_nowait())
        except queue.Empty:
            break
    assert [type(e) for e in drained] == [type(e) for e in seen]
    assert isinstance(seen[0], TrainingStarted) and isinstance(seen[-1], TrainingFinished)
    step_events = [e for e in seen if isinstance(e, StepMetrics)]
    steps = np.concatenate([e.steps for e in step_events])
    assert steps.tolist() == list(range(1, 46))  # every step reported once, in order
    names = step_events[0].names
    assert names[:2] == ["loss", "coupling"]
    assert {"reconstruction_arm2", "kl_arm0", "entropy_arm1"} <= set(names)
    evaluations = [e for e in seen if isinstance(e, Evaluation)]
    assert [e.step for e in evaluations] == [20, 40, 45]
    assert evaluations[-1].agreement.shape == (4,)
    assert 0.0 <= evaluations[-1].mean_agreement <= 1.0
    assert evaluations[-1].validation_loss is not None
    assert seen[-1].status == "completed"


def test_an_evaluation_reads_a_bounded_number_of_cells_however_many_are_held_out(mixture, monkeypatch):
    import cplmix_explorer.train.engine as engine

    monkeypatch.setattr(engine, "MAX_EVALUATION_CELLS", 50)  # stands for 20,000 of a million-cell run
    model = CplMixVAE(mixture, n_types=4, n_arms=2, validation_fraction=0.4, seed=0)
    trainer = model.make_trainer()
    assert len(trainer.validation_rows) > 100  # far more held-out cells than an evaluation may read
    trainer.fit(5)
    read, model_input = [], trainer.data.model_input
    monkeypatch.setattr(trainer.data, "model_input", lambda index: read.append(len(index)) or model_input(index))
    first = trainer.evaluate()
    assert first.n_cells_evaluated == 50 and sum(read) <= 2 * 50  # agreement cells + held-out cells
    assert first.validation_loss is not None and np.isfinite(first.validation_loss)
    assert trainer.evaluate().validation_loss == first.validation_loss  # the same cells every time


def test_stop_request_from_another_thread_is_honoured_between_steps(mixture):
    model = CplMixVAE(mixture, n_types=4, log_every=5)
    control = TrainingControl()

    def stop_after_ten(event):
        if isinstance(event, StepMetrics) and event.last_step >= 10:
            threading.Thread(target=control.stop).start()

    model.events.subscribe(stop_after_ten)
    result = model.train(steps=5000, progress=False, control=control)
    assert result.status == "stopped"
    assert 10 <= result.step < 100
    assert model.step == result.step


def test_pause_and_resume(mixture):
    model = CplMixVAE(mixture, n_types=4, log_every=5)
    control = TrainingControl()
    paused_at = []

    def pause_once(event):
        if isinstance(event, StepMetrics) and not paused_at:
            control.pause()
            paused_at.append(event.last_step)
            threading.Timer(0.3, control.resume).start()

    model.events.subscribe(pause_once)
    result = model.train(steps=20, progress=False, control=control)
    assert result.status == "completed" and result.step == 20 and paused_at == [5]


def test_save_load_round_trip_gives_identical_predictions(mixture, tmp_path):
    model = CplMixVAE(mixture, n_types=4, state_dim=3, n_arms=2)
    model.train(steps=30, progress=False)
    model.save(tmp_path / "run")
    loaded = CplMixVAE.load(tmp_path / "run", mixture)
    assert loaded.step == 30
    assert loaded.config.to_dict() == model.config.to_dict()
    original, restored = model.predict(), loaded.predict()
    assert np.array_equal(original.consensus_type, restored.consensus_type)
    assert np.allclose(original.state_mean, restored.state_mean, atol=1e-6)


def test_a_marginal_entropy_weight_finds_the_types_and_a_saved_run_keeps_it(mixture, tmp_path):
    model = CplMixVAE(mixture, n_types=4, n_arms=2, labels="type", marginal_entropy_weight=1.0, seed=0)
    model.train(steps=300, progress=False)
    assert model.evaluate()["acc"] >= 0.9
    model.save(tmp_path / "run")
    loaded = CplMixVAE.load(tmp_path / "run", mixture)
    assert loaded.config.marginal_entropy_weight == 1.0
    assert np.array_equal(model.predict().consensus_type, loaded.predict().consensus_type)


def test_batch_gene_variance_finds_the_types_and_a_saved_run_keeps_it(mixture, tmp_path):
    model = CplMixVAE(mixture, n_types=4, n_arms=2, labels="type", gene_variance="batch", seed=0)
    model.train(steps=300, progress=False)
    assert model.evaluate()["acc"] >= 0.9
    model.save(tmp_path / "run")
    loaded = CplMixVAE.load(tmp_path / "run", mixture)
    assert loaded.config.gene_variance == "batch" and loaded.module.gene_variance == "batch"
    assert np.array_equal(model.predict().consensus_type, loaded.predict().consensus_type)


def test_checkpoint_from_before_the_state_encoder_option_loads_as_trained(mixture, tmp_path):
    """Runs saved before ``state_encoder`` existed were trained with the shared encoder: they load with it
    (and give the same predictions) whatever the option's default is now."""
    from cplmix_explorer.train.checkpoint import CHECKPOINT_NAME, save_checkpoint

    model = CplMixVAE(mixture, n_types=4, n_arms=2, state_encoder="shared")
    model.train(steps=20, progress=False)
    old_config = {k: v for k, v in model.config.to_dict().items() if k != "state_encoder"}
    save_checkpoint(tmp_path / CHECKPOINT_NAME, model=model.module, config=old_config,
                    preprocessing=model.prepared.preprocessing.to_dict(), step=model.step)
    loaded = CplMixVAE.load(tmp_path, mixture)
    assert loaded.config.state_encoder == "shared"
    assert np.allclose(model.predict().state_mean, loaded.predict().state_mean, atol=1e-6)


def test_checkpoint_from_before_the_bottleneck_and_start_options_loads_as_trained(mixture, tmp_path):
    """Runs saved before ``state_bottleneck`` and ``type_init`` existed had a ReLU in the separate state
    encoder's bottleneck and started at random: they load (and resume) that way."""
    from cplmix_explorer.train.checkpoint import CHECKPOINT_NAME, save_checkpoint

    model = CplMixVAE(mixture, n_types=4, n_arms=2, state_bottleneck="relu", type_init="random")
    model.train(steps=20, progress=False)
    old_config = {k: v for k, v in model.config.to_dict().items() if k not in ("state_bottleneck", "type_init")}
    save_checkpoint(tmp_path / CHECKPOINT_NAME, model=model.module, config=old_config,
                    preprocessing=model.prepared.preprocessing.to_dict(), step=model.step)
    loaded = CplMixVAE.load(tmp_path, mixture)
    assert loaded.config.state_bottleneck == "relu" and loaded.config.type_init == "random"
    assert np.allclose(model.predict().state_mean, loaded.predict().state_mean, atol=1e-6)


def test_checkpoint_from_before_the_type_bottleneck_option_keeps_its_width(tmp_path):
    """Runs saved before ``type_bottleneck_dim`` existed had a type encoder as wide as ``bottleneck_dim`` whatever
    their K: with 48 types (the default width would now be 12) they load with 10."""
    from cplmix_explorer.train.checkpoint import CHECKPOINT_NAME, save_checkpoint

    adata = mixture_counts(n_cells=400, n_genes=200, n_types=4)
    model = CplMixVAE(adata, n_types=48, n_arms=2, type_bottleneck_dim=10, type_init="random")
    model.train(steps=5, progress=False)
    old_config = {k: v for k, v in model.config.to_dict().items() if k != "type_bottleneck_dim"}
    save_checkpoint(tmp_path / CHECKPOINT_NAME, model=model.module, config=old_config,
                    preprocessing=model.prepared.preprocessing.to_dict(), step=model.step)
    loaded = CplMixVAE.load(tmp_path, adata)
    assert loaded.module.type_head.in_features == 10
    assert np.array_equal(model.predict().consensus_type, loaded.predict().consensus_type)
    assert CplMixVAE(adata, n_types=48, type_init="random").module.type_head.in_features == 12


def test_resumed_training_equals_uninterrupted_training(mixture, tmp_path):
    from cplmix_explorer.workflows.run import train_run

    config = CplMixConfig().update(n_types=4, steps=60, checkpoint_every=20, log_every=10, seed=5)
    straight = train_run(mixture, tmp_path / "straight", config, progress=False)

    control = TrainingControl()

    def stop_at_30(model):
        model.events.subscribe(lambda e: control.stop() if isinstance(e, StepMetrics) and e.last_step >= 30 else None)

    interrupted = train_run(mixture, tmp_path / "resumed", config, progress=False, control=control, on_model=stop_at_30)
    assert interrupted.result.status == "stopped" and interrupted.result.step == 30
    resumed = train_run(mixture, tmp_path / "resumed", None, resume=True, progress=False)
    assert resumed.result.step == 60
    a, b = _parameters(straight.model), _parameters(resumed.model)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_sparse_and_dense_storage_train_identically():
    dense = mixture_counts(sparse=False)
    sparse = dense.copy()
    sparse.X = sp.csr_matrix(dense.X)
    results = []
    for adata in (dense, sparse):
        model = CplMixVAE(adata, n_types=4, seed=1, augment="noise")
        results.append(model.train(steps=20, progress=False).history_values)
    assert np.allclose(results[0], results[1], rtol=1e-5, atol=1e-4)


def test_non_finite_loss_stops_with_the_step_and_the_term(mixture):
    config = CplMixConfig().update(n_types=4, lr=1.0, log_every=5)
    prepared = prepare(mixture, config)
    model = build_module(config, prepared.n_genes)
    trainer = Trainer(model, prepared, config)
    with torch.no_grad():
        model.decoder_output.bias.fill_(float("nan"))  # what a diverged update leaves behind
    with pytest.raises(NonFiniteLossError) as failure:
        trainer.fit(50)
    assert failure.value.step == 1
    assert "reconstruction_arm0" in failure.value.terms
    assert "non-finite loss at step 1" in str(failure.value)


def test_epochs_schedule_counts_batches_over_training_cells(mixture):
    model = CplMixVAE(mixture, n_types=4, batch_size=100, validation_fraction=0.1)
    result = model.train(epochs=2, progress=False)
    assert result.step == 2 * (540 // 100)


def test_batch_larger_than_the_data_is_clamped():
    small = mixture_counts(n_cells=40)
    model = CplMixVAE(small, n_types=4, batch_size=256, validation_fraction=0.0)
    assert model.train(steps=3, progress=False).step == 3


def test_more_types_than_cells_is_refused():
    with pytest.raises(CplmixError, match="more types"):
        CplMixVAE(mixture_counts(n_cells=20), n_types=30)


@pytest.mark.parametrize("options", [{}, {"start_any_run": False}], ids=["default", "disputed_cells_free"])
def test_pruning_from_twice_the_types_lands_near_the_true_number(mixture, options):
    # by default (start_any_run) the arms are held to either run's made-up cut, and still part on them
    from cplmix_explorer.workflows.pruning import prune

    model = CplMixVAE(mixture, n_types=8, n_arms=2, labels="type", seed=0, **options)
    model.train(steps=300, progress=False)
    rounds = []
    result = prune(model, min_consensus=0.9, fine_tune_steps=100, on_round=rounds.append)
    assert 0.8 * 4 <= result.chosen_k <= 1.2 * 4
    assert result.status == "passed"
    assert list(result.trajectory["k"]) == list(range(8, result.chosen_k - 1, -1))
    assert len(rounds) == len(result.trajectory)
    assert result.trajectory["min_agreement"].iloc[-1] >= 0.9
    assert model.module.n_types == result.chosen_k == model.config.n_types
    assert len(set(model.module.category_ids.tolist())) == result.chosen_k
    assert model.evaluate()["acc"] >= 0.9


def test_a_type_prior_keeps_every_start_category_and_adds_its_cross_entropy_to_the_loss(mixture):
    # Eight categories on four types: the Leiden start cuts each type in two, which the objective alone is free
    # to merge back; with the start kept as a prior every arm keeps every category the start used.
    model = CplMixVAE(mixture, n_types=8, n_arms=2, seed=0, type_prior_weight=20.0)
    trainer = model.make_trainer()
    trainer.fit(400)
    start = trainer.type_targets.cpu().numpy()
    assert trainer.type_prior_weight == 20.0
    index = trainer._batch_for_step(0)
    torch.manual_seed(0)
    with_prior, _ = trainer._loss(index)
    trainer.type_prior_weight = 0.0
    torch.manual_seed(0)
    objective, _ = trainer._loss(index)
    assert with_prior.item() > objective.item()  # the prior's cross-entropy is added
    from cplmix_explorer.model.inference import infer

    inference = infer(trainer.module, trainer.data)
    alternatives = trainer.type_alternatives.cpu().numpy()  # a cell the runs dispute may take either's category
    for arm in range(2):
        covered = start[arm] >= 0
        typed = inference.type_per_arm[arm]
        assert len(np.unique(typed)) == len(np.unique(start[arm][covered]))
        as_started = (typed == start[arm]) | (alternatives[arm] == typed).any(axis=0)
        assert as_started[covered].mean() > 0.9


def test_the_defaults_keep_every_small_type_and_are_confident_about_it():
    # Twelve separable types of 300 down to 20 cells. With the coupling divided by each category's batch spread
    # (coupling_spread='relative' or the paper's 'absolute') the two smallest types were merged into others by
    # step 600 (10 of 12 categories used) and, with the softmax temperature 1, the median confidence was 0.69.
    # The defaults (no spread, tau 0.1) keep every category the start used, sure of each cell's type.
    from cplmix_explorer import datasets
    from cplmix_explorer.model.inference import infer

    sizes = [int(round(x)) for x in np.geomspace(300, 20, 12)]
    adata = datasets.simulate(n_genes=500, n_types=12, n_classes=3, state_dim=2, type_sizes=sizes, seed=7,
                              markers_per_type=10, markers_per_class=20, n_ieg=40, n_hkg=40)
    model = CplMixVAE(adata, n_types=12, labels="true_type", seed=0)
    trainer = model.make_trainer()
    trainer.fit(600)
    start = trainer.type_targets.cpu().numpy()
    inference = infer(trainer.module, trainer.data)
    for arm in range(2):
        assert len(np.unique(inference.type_per_arm[arm])) == len(np.unique(start[arm][start[arm] >= 0])) == 12
    assert np.median(inference.consensus_confidence) >= 0.9
    metrics = model.evaluate()
    assert metrics["ari"] >= 0.95
    assert metrics["consensus"] >= 0.9


def _state_tie_to_depth(adata, state_mean) -> float:
    """The state dimension most tied to sequencing depth: median over true types of its within-type |Spearman
    rho| with the library size (arm 0)."""
    from scipy.stats import spearmanr

    library = adata.obs["true_library_size"].to_numpy()
    types = adata.obs["true_type"].astype(str).to_numpy()
    return max(float(np.median([abs(spearmanr(state_mean[0][types == t, d], library[types == t])[0]) for t in np.unique(types)]))
               for d in range(state_mean.shape[2]))


def test_the_depth_covariate_keeps_sequencing_depth_out_of_the_state_and_finds_the_true_states():
    from cplmix_explorer.data.simulate import state_recovery
    from cplmix_explorer.datasets import simulate

    adata = simulate(n_cells=900, n_genes=300, n_types=3, n_classes=1, state_dim=2, markers_per_type=10,
                     markers_per_class=10, n_ieg=40, n_hkg=40, library_spread=0.8, seed=1)
    results = {}
    for covariate in (True, False):
        # the start of the test's calibration, Leiden at K (both runs start alike whatever the start; the types of
        # this weakly separated simulation, and so its states per type, depend on it); the covariate alone, without
        # the state KL warm-up, which keeps the state's dimensions in use whether or not the decoder reads the depth
        model = CplMixVAE(adata, n_types=3, n_arms=2, seed=0, depth_covariate=covariate, steps=1500, hidden_dim=50,
                          n_hidden_layers=2, device="cpu", start_overcluster=1.0, state_kl_warmup=0.0)
        model.train(progress=False)
        assert model.module.depth_covariate is covariate  # raw counts: the decoder reads the depth when asked
        state = model.predict().state_mean
        recovery = state_recovery(adata, state)
        results[covariate] = {"depth": _state_tie_to_depth(adata, state),
                              "states": float(recovery[["abs_rho_state_0", "abs_rho_state_1"]].median().mean())}
    # without the covariate a state dimension follows the depth; with it the states are the true ones
    assert results[True]["depth"] < results[False]["depth"] / 2, results
    assert results[True]["states"] > results[False]["states"] + 0.1, results


def test_the_state_kl_weighs_nothing_at_the_first_step_and_beta_from_the_end_of_its_warm_up(mixture):
    model = CplMixVAE(mixture, n_types=3, n_arms=2, steps=100, device="cpu", seed=0, beta=2.0, state_kl_warmup=0.4)
    trainer = model.make_trainer()
    assert trainer.state_kl_warmup_steps == 40  # a share of the run the options plan
    x, target, nb_library, depth, _ = trainer._arm_inputs(trainer.train_rows[:32])
    outputs = model.module(x, depth=depth)

    def total(step):
        return float(trainer._objective(outputs, target, nb_library, step=step).total)

    kl = float(trainer._objective(outputs, target, nb_library, step=0).kl.sum())
    assert kl > 0
    # paper Eq. 7 with A = 2 arms: (A - 1) x beta(t) x the arms' KL on top of what does not change with the step
    assert total(20) - total(0) == pytest.approx(0.5 * 2.0 * kl, rel=1e-4)
    assert total(torch.tensor(40)) - total(0) == pytest.approx(2.0 * kl, rel=1e-4)  # the device step (CUDA graphs)
    assert total(90) == pytest.approx(total(40), rel=1e-6)
    without = CplMixVAE(mixture, n_types=3, n_arms=2, steps=100, device="cpu", seed=0, state_kl_warmup=0.0)
    assert without.make_trainer().state_kl_warmup_steps == 0  # beta from the first step, as the paper


def test_the_warm_up_is_a_share_of_the_first_training_call_and_what_continues_it_keeps_it(mixture, tmp_path):
    # the options plan 5,000 steps; a run of 40 asked for in the call warms up over 20 of them, not 2,500
    model = CplMixVAE(mixture, n_types=3, n_arms=2, batch_size=64, device="cpu", seed=0, state_kl_warmup=0.5)
    model.train(steps=40, progress=False)
    assert model.state_kl_warmup_steps == 20
    model.train(steps=40, progress=False)  # a second call goes on at beta
    assert model.state_kl_warmup_steps == 20 and model.make_trainer().state_kl_warmup_steps == 20
    model.save(tmp_path / "run")
    loaded = CplMixVAE.load(tmp_path / "run", mixture, device="cpu")
    assert loaded.make_trainer().state_kl_warmup_steps == 20  # and so does a resume


def test_the_decoder_reads_depth_only_for_count_data(mixture):
    counts = CplMixVAE(mixture, n_types=3, n_arms=2, steps=2, device="cpu", seed=0, depth_covariate=True)
    trainer = counts.make_trainer()
    index = trainer.train_rows[:8]
    x, target, library, depth, rows = trainer._arm_inputs(index)
    assert counts.module.depth_covariate and depth.shape == (2, 8, 1)
    expected = counts.module.depth(trainer.data.library_of(rows.reshape(-1)).view(2, 8, 1))
    assert torch.allclose(depth, expected)  # each copy's own standardised log library size
    normalised = mixture.copy()
    normalised.X = np.log1p(np.asarray(normalised.X.todense() if sp.issparse(normalised.X) else normalised.X))
    assert not CplMixVAE(normalised, n_types=3, n_arms=2, steps=2, device="cpu", seed=0,
                         depth_covariate=True).module.depth_covariate


def test_a_run_saved_with_the_depth_covariate_loads_with_it_and_one_saved_before_without_it(mixture, tmp_path):
    from pathlib import Path

    from cplmix_explorer import datasets

    model = CplMixVAE(mixture, n_types=3, n_arms=2, steps=20, batch_size=64, device="cpu", seed=0, depth_covariate=True)
    model.train(progress=False)
    model.save(tmp_path / "run")
    loaded = CplMixVAE.load(tmp_path / "run", mixture, device="cpu")
    assert loaded.module.depth_covariate
    assert float(loaded.module.depth_scale) == float(model.module.depth_scale)  # its own centre and scale
    mu = torch.zeros(2, 4, 2)
    c = torch.nn.functional.one_hot(torch.tensor([[0, 1, 2, 0]] * 2), 3).float()
    deep = torch.full((2, 4, 1), 1.5)
    assert torch.equal(loaded.module.decode(c, mu, deep), model.module.decode(c, mu, deep))
    demo = Path(__file__).resolve().parent.parent / "models" / "zeisel2015_demo"  # saved before the option existed
    older = CplMixVAE.load(demo, datasets.load("zeisel2015"), device="cpu")
    assert older.config.depth_covariate is False and not older.module.depth_covariate
