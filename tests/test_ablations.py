"""Baselines and ablations selected in `cplmix train`, through the same engine: one arm, shared arm parameters,
state independent of type, arms without coupling, and the JointVAE objective with its capacity schedule.

(The network-level checks of shared storage and of s independent of c are in test_model.py.)"""

import math

import numpy as np
import pytest
import torch
from conftest import mixture_counts

from cplmix_explorer.api import CplMixVAE
from cplmix_explorer.cli import build_parser, config_from_args
from cplmix_explorer.model.layers import StackedLinear
from cplmix_explorer.model.losses import (
    CapacitySchedule,
    categorical_entropy,
    cplmix_loss,
    gaussian_reconstruction,
    state_kl,
)
from cplmix_explorer.model.network import ArmOutputs, CoupledMixtureVAE

SMALL = dict(hidden_dim=16, n_hidden_layers=2, bottleneck_dim=6, batch_size=64, log_every=5, eval_every=1000,
             validation_fraction=0.0, device="cpu")


@pytest.fixture(scope="module")
def small_data():
    return mixture_counts(n_cells=200, n_genes=40)


def test_ablation_flags_of_cplmix_train_reach_the_model(small_data):
    args = build_parser().parse_args([
        "train", "data.h5ad", "--out", "run", "--arms", "3", "--share-arm-parameters", "--no-state-depends-on-type",
        "--no-coupled", "--objective", "jointvae", "--capacity-gamma", "10", "--capacity-steps", "500",
    ])
    config = config_from_args(args)
    assert (config.n_arms, config.share_arm_parameters, config.state_depends_on_type, config.coupled) == (3, True, False, False)
    assert (config.objective, config.capacity_gamma, config.capacity_steps) == ("jointvae", 10.0, 500)
    model = CplMixVAE(small_data, config=config.copy(n_types=4, **SMALL))
    assert model.module.state_head.in_features == model.config.bottleneck_dim  # the type is not an input
    assert all(layer.weight.shape[0] == 1 for layer in model.module.modules() if isinstance(layer, StackedLinear))


def test_single_arm_is_a_mixture_vae_with_no_coupling(small_data):
    model = CplMixVAE(small_data, n_types=4, n_arms=1, seed=0, **SMALL)
    result = model.train(steps=20, progress=False)
    coupling = result.history_values[:, result.metric_names.index("coupling")]
    assert len(coupling) == 20 and np.all(coupling == 0.0)
    assert result.metric_names == ["loss", "coupling", "reconstruction_arm0", "kl_arm0", "entropy_arm0"]
    assert np.isfinite(result.history_values).all()
    inference = model.predict()
    assert inference.type_per_arm.shape == (1, small_data.n_obs)
    assert model.consensus() is None  # nothing to agree with


def test_shared_arms_stay_one_set_of_weights_through_training(small_data):
    model = CplMixVAE(small_data, n_types=4, n_arms=3, share_arm_parameters=True, augment="none", seed=0, **SMALL)
    stored_before = sum(p.numel() for p in model.module.parameters())
    model.train(steps=10, progress=False)
    assert sum(p.numel() for p in model.module.parameters()) == stored_before
    # trained weights stay one copy, so every arm gives every cell the same type
    type_per_arm = model.predict().type_per_arm
    assert np.array_equal(type_per_arm[0], type_per_arm[1]) and np.array_equal(type_per_arm[1], type_per_arm[2])


def _arm0_gradient(model: CoupledMixtureVAE, x: torch.Tensor, coupled: bool) -> torch.Tensor:
    model.zero_grad()
    torch.manual_seed(5)  # the same Gumbel and state noise for every call
    terms = cplmix_loss(model(x), x, likelihood="gaussian", lam=1.0, beta=1.0, coupled=coupled)
    terms.total.backward()
    return model.type_head.weight.grad[0].clone()


def test_without_coupling_no_gradient_flows_between_arms():
    torch.manual_seed(0)
    model = CoupledMixtureVAE(n_genes=20, n_types=4, n_arms=2, hidden_dim=16, n_hidden_layers=2, bottleneck_dim=6,
                              input_dropout=0.0)
    x = torch.rand(2, 32, 20) * 3
    other = x.clone()
    other[1] = torch.rand(32, 20) * 3  # only arm 1's input changes
    # uncoupled: arm 0 learns the same whatever arm 1 sees, and its gradient is that of its own VAE terms
    uncoupled = _arm0_gradient(model, x, coupled=False)
    assert torch.equal(uncoupled, _arm0_gradient(model, other, coupled=False))
    model.zero_grad()
    torch.manual_seed(5)
    out = model(x)
    (gaussian_reconstruction(x, out.decoded) + state_kl(out.mu, out.logvar)).sum().backward()
    assert torch.allclose(uncoupled, model.type_head.weight.grad[0], atol=1e-6)
    # coupled: the distance to arm 1 is part of arm 0's gradient
    assert not torch.allclose(_arm0_gradient(model, x, coupled=True), _arm0_gradient(model, other, coupled=True))


def _outputs(n_types: int = 3, batch: int = 16, seed: int = 0) -> ArmOutputs:
    generator = torch.Generator().manual_seed(seed)
    log_q = torch.log_softmax(torch.randn(1, batch, n_types, generator=generator) * 2, -1)
    mu = torch.randn(1, batch, 2, generator=generator)
    logvar = torch.randn(1, batch, 2, generator=generator) * 0.2
    return ArmOutputs(log_q=log_q, q=log_q.exp(), c=log_q.exp(), mu=mu, logvar=logvar, s=mu,
                      decoded=torch.rand(1, batch, 5, generator=generator), h=torch.zeros(1, batch, 2))


def test_jointvae_capacity_grows_linearly_and_the_loss_follows_it():
    out, target = _outputs(n_types=3), torch.rand(1, 16, 5)
    schedule = CapacitySchedule(gamma=30.0, state_capacity=5.0, type_capacity=5.0, steps=1000)
    rec = gaussian_reconstruction(target, out.decoded)
    kl = state_kl(out.mu, out.logvar)
    type_kl = math.log(3) - categorical_entropy(out.q, out.log_q)

    def loss_at(step):
        return cplmix_loss(out, target, likelihood="gaussian", lam=1.0, beta=1.0, capacity=schedule, step=step).total.item()

    for step in (0, 250, 1000, 5000):
        fraction = min(step / 1000, 1.0)
        # the type capacity cannot exceed log K (a uniform posterior's distance from a one-hot one)
        expected = rec + 30.0 * (kl - 5.0 * fraction).abs() + 30.0 * (type_kl - math.log(3) * fraction).abs()
        assert loss_at(step) == pytest.approx(expected.item(), rel=1e-5)
    assert loss_at(0) != pytest.approx(loss_at(1000))
    assert loss_at(1000) == pytest.approx(loss_at(5000))  # the capacity stops growing after `steps`
    # a device tensor step (what the engine passes, CUDA-graph safe) gives the same loss as an int
    assert cplmix_loss(out, target, likelihood="gaussian", lam=1.0, beta=1.0, capacity=schedule,
                       step=torch.tensor(250)).total.item() == pytest.approx(loss_at(250), rel=1e-6)


def test_jointvae_below_capacity_pushes_the_kl_up():
    out = _outputs()
    mu = out.mu.clone().requires_grad_(True)
    out.mu = mu
    schedule = CapacitySchedule(gamma=30.0, state_capacity=1000.0, type_capacity=0.0, steps=1)
    cplmix_loss(out, torch.rand(1, 16, 5), likelihood="gaussian", lam=1.0, beta=1.0, capacity=schedule, step=1).total.backward()
    # d/d mu of -gamma * KL = -gamma * mu / B: the objective now rewards moving mu away from 0
    assert torch.allclose(mu.grad, -30.0 * mu.detach() / 16, atol=1e-5)


def test_jointvae_through_the_engine_uses_the_step_of_each_training_step(small_data):
    model = CplMixVAE(small_data, n_types=4, n_arms=1, objective="jointvae", capacity_steps=8, state_capacity=2.0,
                      type_capacity=1.0, capacity_gamma=3.0, seed=0, **SMALL)
    result = model.train(steps=12, progress=False)
    column = {name: result.history_values[:, i] for i, name in enumerate(result.metric_names)}
    fraction = np.minimum((result.history_steps - 1) / 8, 1.0)  # steps done before each step
    type_kl = math.log(4) - column["entropy_arm0"]
    expected = (column["reconstruction_arm0"] + 3.0 * np.abs(column["kl_arm0"] - 2.0 * fraction)
                + 3.0 * np.abs(type_kl - 1.0 * fraction))
    np.testing.assert_allclose(column["loss"], expected, rtol=1e-4, atol=1e-4)
    assert np.all(column["coupling"] == 0.0)
