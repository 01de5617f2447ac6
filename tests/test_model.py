"""The stacked-arm network: arms really computed together and really independent, gradients everywhere,
none of the reference code's mistakes."""

import pytest
import torch
import torch.nn.functional as F

from cplmix_explorer.model.losses import cplmix_loss
from cplmix_explorer.model.network import CoupledMixtureVAE, gumbel_softmax_sample


def _model(**options):
    torch.manual_seed(0)
    defaults = dict(n_genes=30, n_types=4, state_dim=2, n_arms=3, hidden_dim=16, n_hidden_layers=2, bottleneck_dim=6)
    return CoupledMixtureVAE(**{**defaults, **options})


@pytest.mark.parametrize("likelihood", ["gaussian", "nb"])
@pytest.mark.parametrize("state_encoder", ["shared", "separate"])
def test_gradients_reach_every_parameter(likelihood, state_encoder):
    model = _model(likelihood=likelihood, state_encoder=state_encoder)
    x = torch.rand(3, 8, 30) * 3
    out = model(x)
    target = x if likelihood == "gaussian" else torch.poisson(x)
    library = target.sum(-1, keepdim=True) if likelihood == "nb" else None
    terms = cplmix_loss(out, target, likelihood=likelihood, lam=1.0, beta=1.0, library=library,
                        log_theta=getattr(model, "log_theta", None))
    terms.total.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def _explicit_arm(model, arm, x):
    """The same network for one arm written with plain per-arm F.linear calls (eval mode)."""
    def linear(layer, inputs):
        return F.linear(inputs, layer.weight[arm].T, layer.bias[arm, 0])

    def norm(module, inputs):
        return (inputs - module.running_mean[arm, 0]) / torch.sqrt(module.running_var[arm, 0] + module.eps)

    def encoder(layers, norms, bottleneck, bottleneck_norm, relu=True):
        h = x
        for layer, bn in zip(layers, norms):
            h = norm(bn, torch.relu(linear(layer, h)))
        h = linear(bottleneck, h)
        return norm(bottleneck_norm, torch.relu(h) if relu else h)

    h = encoder(model.encoder_layers, model.encoder_norms, model.bottleneck, model.bottleneck_norm)
    logits = linear(model.type_head, h)
    if model.state_encoder == "separate":
        h = encoder(model.state_encoder_layers, model.state_encoder_norms, model.state_bottleneck,
                    model.state_bottleneck_norm, relu=model.state_bottleneck_activation == "relu")
    log_q = torch.log_softmax(logits / model.tau, -1)
    c = F.one_hot(log_q.argmax(-1), model.n_types).float()
    mu, _ = linear(model.state_head, torch.cat([h, c], -1)).chunk(2, -1)
    out = torch.cat([c, mu], -1)
    for layer in model.decoder_layers:
        out = torch.relu(linear(layer, out))
    return log_q, mu, torch.relu(linear(model.decoder_output, out))


@pytest.mark.parametrize("state_encoder,state_bottleneck", [("shared", "linear"), ("separate", "linear"), ("separate", "relu")])
def test_stacked_arms_equal_an_explicit_per_arm_computation(state_encoder, state_bottleneck):
    model = _model(state_encoder=state_encoder, state_bottleneck=state_bottleneck)
    model.train()
    model(torch.rand(3, 32, 30))  # move the BatchNorm running statistics away from their initial values
    model.eval()
    x = torch.rand(3, 5, 30)
    out = model(x)
    for arm in range(3):
        log_q, mu, decoded = _explicit_arm(model, arm, x[arm])
        assert torch.allclose(out.log_q[arm], log_q, atol=1e-5)
        assert torch.allclose(out.mu[arm], mu, atol=1e-5)
        assert torch.allclose(out.decoded[arm], decoded, atol=1e-5)


def test_a_linear_state_bottleneck_gives_every_cell_its_own_state():
    """With a ReLU before the state bottleneck's BatchNorm, cells for which every unit is below zero all get
    the same state; the default linear bottleneck has no such dead zone."""
    x = torch.rand(3, 64, 30)
    one_type = F.one_hot(torch.zeros(3, 64, dtype=torch.long), 4).float()
    means = {}
    for activation in ("relu", "linear"):
        model = _model(state_bottleneck=activation).eval()
        with torch.no_grad():
            model.state_bottleneck.bias.fill_(-50.0)  # every unit below zero for every cell
            h, _ = model.encode(x)
            means[activation], _ = model.state_posterior(h, one_type)
    assert torch.allclose(means["relu"], means["relu"][:, :1])  # one state for all 64 cells of the type
    assert (means["linear"].std(dim=1) > 1e-3).all()


def test_arms_have_independent_weights_unless_shared():
    independent = _model()
    assert not torch.equal(independent.encoder_layers[0].weight[0], independent.encoder_layers[0].weight[1])
    shared = _model(share_arm_parameters=True)
    weight = shared.encoder_layers[0].weight
    assert weight.shape[0] == 1  # one stored copy serves all arms
    n_independent = sum(p.numel() for p in independent.parameters())
    n_shared = sum(p.numel() for p in shared.parameters())
    assert n_shared * 3 == n_independent
    shared.eval()
    x = torch.rand(1, 4, 30).expand(3, -1, -1)
    out = shared(x)
    assert torch.allclose(out.q[0], out.q[1]) and torch.allclose(out.q[1], out.q[2])


def test_state_independent_of_type_ablation_ignores_the_type():
    model = _model(state_depends_on_type=False)
    h = torch.randn(3, 4, 6)
    first = model.state_posterior(h, F.one_hot(torch.zeros(3, 4, dtype=torch.long), 4).float())
    second = model.state_posterior(h, F.one_hot(torch.full((3, 4), 2), 4).float())
    assert torch.equal(first[0], second[0])
    dependent = _model()
    third = dependent.state_posterior(h, F.one_hot(torch.zeros(3, 4, dtype=torch.long), 4).float())
    fourth = dependent.state_posterior(h, F.one_hot(torch.full((3, 4), 2), 4).float())
    assert not torch.equal(third[0], fourth[0])


def test_separate_state_encoder_is_out_of_the_couplings_reach():
    """With state_encoder='separate' the state reads its own encoder: the arms' coupling (distance and
    entropy) trains the type encoder only, and the state mean does not change when the type encoder does."""
    model = _model(state_encoder="separate")
    x = torch.rand(3, 8, 30) * 3
    out = model(x)
    terms = cplmix_loss(out, x, likelihood="gaussian", lam=1.0, beta=1.0)
    (terms.coupling.sum() - terms.entropy.sum()).backward()  # the pair terms of the objective alone
    reached = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "encoder_layers.0.weight" in reached and "type_head.weight" in reached
    assert not any(name.startswith(("state_encoder", "state_bottleneck")) for name in reached)
    model.eval()
    h, _ = model.encode(x)
    with torch.no_grad():
        model.encoder_layers[0].weight.add_(1.0)
    h_after, _ = model.encode(x)
    assert torch.equal(h, h_after)
    shared = _model(state_encoder="shared")
    shared.eval()
    h_shared, _ = shared.encode(x)
    with torch.no_grad():
        shared.encoder_layers[0].weight.add_(1.0)
    assert not torch.allclose(h_shared, shared.encode(x)[0])


def test_state_noise_is_standard_normal_not_uniform():
    model = _model(n_arms=1)
    model.train()
    with torch.no_grad():
        for parameter in model.state_head.parameters():
            parameter.zero_()  # mu = 0, logvar = 0: s is the raw noise
    torch.manual_seed(1)
    out = model(torch.rand(1, 4000, 30))
    noise = out.s.flatten()
    assert noise.mean().abs() < 0.05
    assert noise.std().item() == pytest.approx(1.0, abs=0.05)
    assert (noise < 0).float().mean() > 0.45  # uniform noise would never be negative


def test_single_softmax_reaches_confident_posteriors_for_many_types():
    # The reference's double softmax caps the logit gap at 1/tau; one softmax does not.
    model = _model(n_types=150, tau=1.0)
    logits = torch.zeros(1, 1, 150)
    logits[..., 3] = 20.0
    q = model.type_posterior(logits).exp()
    assert q[0, 0, 3] > 0.99


def test_inference_is_one_hot_argmax_and_training_is_relaxed():
    model = _model()
    x = torch.rand(3, 6, 30)
    model.eval()
    out = model(x)
    assert torch.equal(out.c, F.one_hot(out.q.argmax(-1), 4).float())
    assert torch.equal(out.s, out.mu)
    model.train()
    out = model(x)
    assert torch.allclose(out.c.sum(-1), torch.ones(3, 6))
    assert ((out.c > 0.01) & (out.c < 0.99)).any()  # a relaxed sample, not one-hot


def test_gumbel_softmax_sample_follows_the_posterior():
    torch.manual_seed(0)
    log_q = torch.log(torch.tensor([0.7, 0.2, 0.1])).expand(20000, 3)
    sample = gumbel_softmax_sample(log_q, temperature=0.1)
    frequencies = F.one_hot(sample.argmax(-1), 3).float().mean(0)
    assert torch.allclose(frequencies, torch.tensor([0.7, 0.2, 0.1]), atol=0.02)


def test_straight_through_types_are_one_hot_forward_with_relaxed_gradients():
    x = torch.rand(3, 6, 30)
    relaxed, straight = _model(), _model(straight_through=True)
    relaxed.train(), straight.train()
    torch.manual_seed(1)
    soft = relaxed(x)
    torch.manual_seed(1)
    hard = straight(x)
    # forward: the one-hot argmax of the same relaxed sample the plain model draws
    assert torch.equal(hard.c.detach(), F.one_hot(soft.c.argmax(-1), 4).float())
    # backward: the type head still learns from the reconstruction through the relaxed sample
    hard.decoded.square().sum().backward()
    assert straight.type_head.weight.grad is not None and straight.type_head.weight.grad.abs().sum() > 0


def test_straight_through_option_reaches_the_network():
    from cplmix_explorer.config import CplMixConfig
    from cplmix_explorer.train.engine import build_module

    assert build_module(CplMixConfig(straight_through=True), n_genes=30).straight_through
    assert not build_module(CplMixConfig(), n_genes=30).straight_through  # the paper's relaxed sample by default


def test_the_decoder_reads_the_depth_covariate_and_takes_the_mean_depth_when_none_is_given():
    model = _model(depth_covariate=True).eval()
    c = F.one_hot(torch.tensor([[0, 1, 2, 3]] * 3), 4).float()
    s = torch.randn(3, 4, 2)
    shallow, deep = torch.full((3, 4, 1), -2.0), torch.full((3, 4, 1), 2.0)
    assert not torch.allclose(model.decode(c, s, shallow), model.decode(c, s, deep))
    assert torch.equal(model.decode(c, s), model.decode(c, s, torch.zeros(3, 4, 1)))  # a traversal: mean depth
    model.set_depth_reference(torch.tensor([500.0, 1000.0, 2000.0]).numpy())
    assert model.depth(torch.tensor([[1000.0]])).abs().item() < 1e-5  # the geometric mean is depth 0
    model.keep_categories(torch.tensor([0, 2]))  # pruning keeps the covariate's input
    c2 = F.one_hot(torch.tensor([[0, 1]] * 3), 2).float()
    assert not torch.allclose(model.decode(c2, s[:, :2], shallow[:, :2]), model.decode(c2, s[:, :2], deep[:, :2]))
