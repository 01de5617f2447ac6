"""Each loss term against values worked out by hand on tiny tensors (method.md, paper Eq. 7)."""

import math

import pytest
import torch

from cplmix_explorer.model.losses import (
    BATCH_VARIANCE_FLOOR,
    batch_variance_gaussian_reconstruction,
    categorical_entropy,
    coupling_distance,
    cplmix_loss,
    gaussian_reconstruction,
    marginal_entropy,
    negative_binomial_reconstruction,
    state_kl,
)
from cplmix_explorer.model.network import ArmOutputs


def test_gaussian_reconstruction_is_half_squared_error_summed_over_genes_mean_over_cells():
    target = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]])  # (A=1, B=2, G=3)
    decoded = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]])
    # cell 1: (1 + 4 + 0) / 2 = 2.5; cell 2: 3 / 2 = 1.5; mean 2.0
    assert gaussian_reconstruction(target, decoded).tolist() == pytest.approx([2.0])


def test_gaussian_reconstruction_gradient_matches_the_plain_expression():
    target = torch.randn(2, 5, 7)
    decoded = torch.randn(2, 5, 7, requires_grad=True)
    fast = gaussian_reconstruction(target, decoded)
    (fast * torch.tensor([1.0, 3.0])).sum().backward()
    fast_grad = decoded.grad.clone()
    decoded.grad = None
    plain = 0.5 * (decoded - target).square().sum(-1).mean(-1)
    (plain * torch.tensor([1.0, 3.0])).sum().backward()
    assert torch.allclose(fast, plain.detach(), atol=1e-6)
    assert torch.allclose(fast_grad, decoded.grad, atol=1e-6)


def test_state_kl_against_the_closed_form():
    mu = torch.tensor([[[1.0, 0.0]]])  # (1, 1, 2)
    logvar = torch.tensor([[[0.0, math.log(2.0)]]])
    # dim 1: 0.5 * (1 + 1 - 1 - 0) = 0.5; dim 2: 0.5 * (2 + 0 - 1 - ln 2)
    expected = 0.5 + 0.5 * (2.0 - 1.0 - math.log(2.0))
    assert state_kl(mu, logvar).item() == pytest.approx(expected)


def test_entropy_of_uniform_and_one_hot():
    q = torch.tensor([[[0.5, 0.5], [1.0 - 1e-12, 1e-12]]])
    entropy = categorical_entropy(q, torch.log(q))
    assert entropy.item() == pytest.approx(math.log(2.0) / 2, rel=1e-6)


def test_perturbed_aitchison_distance_by_hand():
    # arm a: rows (0.8, 0.2), (0.2, 0.8); arm b swapped. Batch variance of every category: 0.09 (sd 0.3).
    q_a = torch.tensor([[0.8, 0.2], [0.2, 0.8]])
    q_b = torch.tensor([[0.2, 0.8], [0.8, 0.2]])
    distance = coupling_distance(torch.stack([q_a, q_b]))
    # each cell: 2 * (ln 4 / 0.3)^2
    assert distance.tolist() == pytest.approx([2 * (math.log(4.0) / 0.3) ** 2], rel=1e-5)


def test_distance_is_zero_for_identical_arms_and_large_for_a_collapsed_arm():
    q = torch.softmax(torch.randn(16, 5), dim=-1)
    assert coupling_distance(torch.stack([q, q])).item() == pytest.approx(0.0, abs=1e-6)
    collapsed = torch.zeros_like(q)
    collapsed[:, 0] = 1.0  # every cell in category 0: no batch spread
    agreeing_spread = coupling_distance(torch.stack([q, q.roll(1, dims=0)])).item()
    assert coupling_distance(torch.stack([q, collapsed])).item() > 100 * agreeing_spread


def test_coupling_floor_is_the_epsilon_inside_the_log_only():
    # Same swapped arms as above; with the floor f = 0.1 each category's log ratio is ln((0.8 + f) / (0.2 + f)) = ln 3,
    # while the batch standard deviation keeps its 1e-8 (0.3 still).
    q_a = torch.tensor([[0.8, 0.2], [0.2, 0.8]])
    q_b = torch.tensor([[0.2, 0.8], [0.8, 0.2]])
    distance = coupling_distance(torch.stack([q_a, q_b]), floor=0.1)
    assert distance.tolist() == pytest.approx([2 * (math.log(3.0) / 0.3) ** 2], rel=1e-5)


def test_a_floor_makes_confident_agreeing_arms_cost_nothing_below_it():
    # Two arms agree on every cell's type with 0.999 confidence but differ in how they spread the rest (1e-4
    # against 1e-6): with the default floor (1e-8) the coupling still pulls on those tiny probabilities, with a
    # floor of 1e-2 they count as equal.
    hard = torch.eye(4).repeat(4, 1)  # (16, 4) one type per cell, every type in the batch
    arm_a = hard * 0.999 + (1 - hard) * 1e-4
    arm_b = hard * 0.999 + (1 - hard) * 1e-6
    q = torch.stack([arm_a / arm_a.sum(-1, keepdim=True), arm_b / arm_b.sum(-1, keepdim=True)])
    default = coupling_distance(q).item()
    floored = coupling_distance(q, floor=1e-2).item()
    assert default > 1.0
    assert floored < 1e-3 * default


def test_pairs_of_three_arms():
    q = torch.softmax(torch.randn(3, 8, 4), dim=-1)
    pairs = coupling_distance(q)
    assert pairs.shape == (3,)
    for value, (a, b) in zip(pairs, [(0, 1), (0, 2), (1, 2)]):
        assert value.item() == pytest.approx(coupling_distance(q[[a, b]]).item(), rel=1e-6)


def _outputs(n_arms=3, batch=4, types=3, genes=5, states=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_arms, batch, types, generator=generator)
    log_q = torch.log_softmax(logits, -1)
    return ArmOutputs(
        log_q=log_q, q=log_q.exp(), c=log_q.exp(),
        mu=torch.randn(n_arms, batch, states, generator=generator),
        logvar=torch.randn(n_arms, batch, states, generator=generator) * 0.1,
        s=torch.zeros(n_arms, batch, states),
        decoded=torch.rand(n_arms, batch, genes, generator=generator),
        h=torch.zeros(n_arms, batch, 2),
    )


def test_total_objective_weights_the_terms_as_eq7():
    out = _outputs(n_arms=3)
    target = torch.rand(3, 4, 5)
    lam, beta = 0.7, 0.3
    terms = cplmix_loss(out, target, likelihood="gaussian", lam=lam, beta=beta)
    rec = gaussian_reconstruction(target, out.decoded)
    kl = state_kl(out.mu, out.logvar)
    entropy = categorical_entropy(out.q, out.log_q)
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = 2 * (rec + beta * kl).sum()
    for a, b in pairs:
        expected = expected + lam * coupling_distance(out.q[[a, b]]).sum() - entropy[a] - entropy[b]
    assert terms.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms.coupling.shape == (3,)


def test_entropy_weight_scales_only_the_entropy_terms():
    out = _outputs(n_arms=3)
    target = torch.rand(3, 4, 5)
    paper = cplmix_loss(out, target, likelihood="gaussian", lam=0.7, beta=0.3)
    without = cplmix_loss(out, target, likelihood="gaussian", lam=0.7, beta=0.3, entropy_weight=0.0)
    halved = cplmix_loss(out, target, likelihood="gaussian", lam=0.7, beta=0.3, entropy_weight=0.5)
    entropy_sum = 2 * categorical_entropy(out.q, out.log_q).sum()  # each arm is in A - 1 = 2 pairs
    assert without.total.item() == pytest.approx((paper.total + entropy_sum).item(), rel=1e-6)
    assert halved.total.item() == pytest.approx((paper.total + 0.5 * entropy_sum).item(), rel=1e-6)


def test_one_arm_is_a_plain_mixture_vae():
    out = _outputs(n_arms=1)
    target = torch.rand(1, 4, 5)
    terms = cplmix_loss(out, target, likelihood="gaussian", lam=1.0, beta=2.0)
    expected = gaussian_reconstruction(target, out.decoded) + 2.0 * state_kl(out.mu, out.logvar)
    assert terms.total.item() == pytest.approx(expected.item())
    assert terms.coupling.numel() == 0


def test_negative_binomial_matches_torch_distribution():
    counts = torch.tensor([[[0.0, 3.0, 10.0], [1.0, 0.0, 2.0]]])
    rho = torch.softmax(torch.tensor([[[0.1, 0.5, 1.2], [0.3, 0.3, 0.4]]]), -1)
    library = counts.sum(-1, keepdim=True)
    log_theta = torch.tensor([[[0.0, 1.0, -0.5]]])
    ours = negative_binomial_reconstruction(counts, rho.log(), library, log_theta)
    theta = log_theta.exp()
    mu = rho * library
    # torch's NegativeBinomial counts failures with success probability p: mean = theta * p / (1 - p)
    distribution = torch.distributions.NegativeBinomial(total_count=theta.expand_as(mu), probs=mu / (mu + theta))
    expected = -distribution.log_prob(counts).sum(-1).mean(-1)
    assert torch.allclose(ours, expected, atol=1e-4)


def test_batch_gene_variance_is_the_gaussian_likelihood_at_each_genes_best_variance():
    target = torch.tensor([[[1.0, 2.0], [0.0, 0.0]]])  # (A=1, B=2, G=2)
    decoded = torch.zeros(1, 2, 2, requires_grad=True)
    # mean squared residual: gene 1 (1 + 0) / 2 = 0.5, gene 2 (4 + 0) / 2 = 2
    ours = batch_variance_gaussian_reconstruction(target, decoded)
    floor = BATCH_VARIANCE_FLOOR
    assert ours.item() == pytest.approx(0.5 * (math.log(0.5 + floor) + math.log(2.0 + floor)))
    # its gradient is the Gaussian's at those variances: residual / variance / B, so the noisier gene weighs less
    ours.sum().backward()
    expected = torch.tensor([[[-1.0 / (0.5 + floor), -2.0 / (2.0 + floor)], [0.0, 0.0]]]) / 2
    assert torch.allclose(decoded.grad, expected, atol=1e-6)


def test_the_objective_uses_the_batch_variance_when_asked():
    out = _outputs(n_arms=2)
    target = torch.rand(2, 4, 5)
    terms = cplmix_loss(out, target, likelihood="gaussian", lam=1.0, beta=1.0, gene_variance="batch")
    assert torch.allclose(terms.reconstruction, batch_variance_gaussian_reconstruction(target, out.decoded))
    fixed = cplmix_loss(out, target, likelihood="gaussian", lam=1.0, beta=1.0)
    assert torch.allclose(fixed.reconstruction, gaussian_reconstruction(target, out.decoded))


def test_marginal_entropy_is_the_entropy_of_each_arms_mean_category_probabilities():
    # arm a: two confident cells of different categories -> marginal (0.5, 0.5), H = ln 2;
    # arm b: both cells (0.9, 0.1) -> marginal (0.9, 0.1): one category used, low entropy
    q = torch.tensor([[[0.8, 0.2], [0.2, 0.8]], [[0.9, 0.1], [0.9, 0.1]]])
    expected = [math.log(2.0), -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))]
    assert marginal_entropy(q).tolist() == pytest.approx(expected, rel=1e-5)


def test_the_marginal_entropy_weight_subtracts_w_times_each_arms_marginal_entropy_and_0_is_the_paper():
    out = _outputs(n_arms=2)
    target = torch.rand(2, 4, 5)
    paper = cplmix_loss(out, target, likelihood="gaussian", lam=1.0, beta=1.0)
    unchanged = cplmix_loss(out, target, likelihood="gaussian", lam=1.0, beta=1.0, marginal_entropy_weight=0.0)
    weighted = cplmix_loss(out, target, likelihood="gaussian", lam=1.0, beta=1.0, marginal_entropy_weight=0.5)
    assert unchanged.total.item() == paper.total.item()
    expected = paper.total - 0.5 * marginal_entropy(out.q).sum()
    assert weighted.total.item() == pytest.approx(expected.item(), rel=1e-6)
    one_arm = _outputs(n_arms=1)  # a single mixture VAE gets the term too
    single = cplmix_loss(one_arm, target[:1], likelihood="gaussian", lam=1.0, beta=1.0, marginal_entropy_weight=2.0)
    plain = cplmix_loss(one_arm, target[:1], likelihood="gaussian", lam=1.0, beta=1.0)
    assert single.total.item() == pytest.approx((plain.total - 2.0 * marginal_entropy(one_arm.q).sum()).item(), rel=1e-6)


def test_the_marginal_entropy_pushes_an_unused_category_up():
    # every cell puts little mass on category 2; maximising the marginal entropy raises that category's logit
    logits = torch.tensor([[[3.0, 0.0, -2.0], [0.0, 3.0, -2.0]]], requires_grad=True)
    (-marginal_entropy(torch.softmax(logits, -1)).sum()).backward()
    assert (logits.grad[..., 2] < 0).all()  # a descent step increases the unused category's logit


def _arms_disagreeing_on(fraction: float, n_types: int, cells: int = 512, seed: int = 0) -> torch.Tensor:
    """Two confident arms (0.98 on their type) over balanced types; they disagree on ``fraction`` of the cells."""
    generator = torch.Generator().manual_seed(seed)
    types = torch.arange(cells) % n_types
    other = torch.where(torch.rand(cells, generator=generator) < fraction, (types + 1) % n_types, types)
    def confident(assigned):
        q = torch.full((cells, n_types), 0.02 / (n_types - 1))
        q[torch.arange(cells), assigned] = 0.98
        return q
    return torch.stack([confident(types), confident(other)])


def test_the_relative_spread_keeps_the_coupling_scale_independent_of_the_number_of_types():
    # The same 10 % of disagreeing cells: the paper's absolute spread costs over a hundred times more at K = 120
    # than at K = 10 (K terms, each variance ~1/K); the relative spread grows at least ten times less.
    def growth(spread):
        cost = {k: coupling_distance(_arms_disagreeing_on(0.1, k), floor=1e-2, spread=spread).item() for k in (10, 120)}
        return cost[120] / cost[10]

    assert growth("absolute") > 50
    assert growth("relative") < growth("absolute") / 10
    disagreeing = coupling_distance(_arms_disagreeing_on(0.1, 10), floor=1e-2, spread="relative").item()
    assert disagreeing > 1.0  # the disagreement still costs
    assert coupling_distance(_arms_disagreeing_on(0.0, 10), floor=1e-2, spread="relative").item() < 1e-6


def test_the_relative_spread_still_makes_a_collapsed_category_look_far():
    q = torch.softmax(3 * torch.randn(64, 6, generator=torch.Generator().manual_seed(1)), dim=-1)
    collapsed = q.clone()
    collapsed[:, 0] = 1e-3  # category 0 never used by arm b: no batch spread
    collapsed = collapsed / collapsed.sum(-1, keepdim=True)
    agreeing = coupling_distance(torch.stack([q, q]), spread="relative").item()
    assert agreeing == pytest.approx(0.0, abs=1e-4)
    assert coupling_distance(torch.stack([q, collapsed]), spread="relative").item() > 1.0


def _one_disagreement_on(category: int, sizes: list[int]) -> torch.Tensor:
    """Two confident arms over a batch whose categories have ``sizes`` cells; they disagree on one cell of
    ``category`` only (arm b puts it in the next category)."""
    types = torch.cat([torch.full((n,), k) for k, n in enumerate(sizes)])
    other = types.clone()
    other[int((types == category).nonzero()[0])] = (category + 1) % len(sizes)

    def confident(assigned):
        q = torch.full((len(types), len(sizes)), 0.02 / (len(sizes) - 1))
        q[torch.arange(len(types)), assigned] = 0.98
        return q

    return torch.stack([confident(types), confident(other)])


def test_without_a_spread_a_disagreement_costs_the_same_whether_the_type_is_rare_or_common():
    # An imbalanced batch: one type of 200 cells, one of 2. Dividing by the batch spread makes a disagreement on
    # the rare type's cell several times dearer than one on the common type's, so arms that are unsure near a
    # small type avoid the cost by not using its category at all (the merging seen at K = 40); without a spread
    # ('none', the default) every cell's disagreement costs the same.
    sizes = [200, 30, 22, 2]

    def cost(category, spread):
        return coupling_distance(_one_disagreement_on(category, sizes), floor=1e-2, spread=spread).item()

    assert cost(3, "relative") > 3 * cost(0, "relative")
    assert cost(3, "absolute") > 3 * cost(0, "absolute")
    assert cost(3, "none") == pytest.approx(cost(0, "none"), rel=1e-6)
    assert cost(3, "none") > 0.05  # a disagreement still costs
    agreeing = _one_disagreement_on(0, sizes)[0]
    assert coupling_distance(torch.stack([agreeing, agreeing]), floor=1e-2, spread="none").item() == 0.0
