"""The cpl-mixVAE objective (method.md, paper Eq. 7) as a loss to minimise.

    L = (A-1) * sum_a [rec_a + beta * KL_a] + sum_{a<b} [lam * d2_sigma(c_a, c_b) - H_a - H_b]

with A = 1 reducing to rec + beta * KL (a single mixture VAE). Every term is a mean over the batch.

The JointVAE baseline (Dupont 2018) replaces it, per arm and without coupling, by

    L = sum_a [rec_a + gamma * |KL(q(s|x_a) || N(0, I)) - C_s(t)| + gamma * |KL(q(c|x_a) || U(K)) - C_c(t)|]

with capacities C(t) = C_max * min(t / T, 1) growing linearly over the first T steps (C_c capped at log K).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import COUPLING_EPS
from .network import BATCH_GENE_VARIANCE, FIXED_GENE_VARIANCE, GAUSSIAN, ArmOutputs


class _HalfSquaredErrorPerArm(torch.autograd.Function):
    """1/2 sum of squared errors per arm divided by the batch size, with one saved difference tensor
    (three memory passes instead of the six that autograd of the plain expression makes)."""

    @staticmethod
    def forward(ctx, decoded: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        difference = decoded - target
        ctx.save_for_backward(difference)
        batch = decoded.shape[1]
        flat = difference.reshape(difference.shape[0], -1)
        return 0.5 * torch.linalg.vector_norm(flat, dim=1).square() / batch

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (difference,) = ctx.saved_tensors
        scale = (grad_output / difference.shape[1]).view(-1, 1, 1)
        return difference * scale, None


def gaussian_reconstruction(target: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    """1/2 squared error summed over genes, mean over the batch: (A, B, G) -> (A,).

    The target carries no gradient (it is the data)."""
    return _HalfSquaredErrorPerArm.apply(decoded, target.detach())


BATCH_VARIANCE_FLOOR = 1e-2  # smallest per-gene variance of the "batch" Gaussian (log-expression units^2)


def batch_variance_gaussian_reconstruction(target: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    """The Gaussian negative log-likelihood with each gene's variance at its maximum-likelihood value for the
    batch (the squared residual averaged over the batch, floored at BATCH_VARIANCE_FLOOR), up to constants:
    1/2 sum_g log(mean_b (x - mu)^2 + floor): (A, B, G) -> (A,). The gradient weighs each gene's residual by
    the inverse of its variance (the calibrated decoder of sigma-VAE, Rybkin et al. 2021, per gene)."""
    residual = (decoded - target.detach()).square().mean(dim=-2)  # (A, G)
    return 0.5 * (residual + BATCH_VARIANCE_FLOOR).log().sum(dim=-1)


def negative_binomial_reconstruction(
    counts: torch.Tensor, log_rho: torch.Tensor, library: torch.Tensor, log_theta: torch.Tensor
) -> torch.Tensor:
    """-log NB(counts | mu = library * rho, theta) summed over genes, mean over the batch -> (A,).

    counts, log_rho: (A, B, G); library: (A, B, 1) total counts; log_theta: (A or 1, 1, G).
    """
    theta = log_theta.exp()
    log_mu = log_rho + library.clamp_min(1.0).log()
    log_theta_mu = torch.logaddexp(log_theta, log_mu)  # log(theta + mu)
    log_likelihood = (
        torch.lgamma(counts + theta)
        - torch.lgamma(theta)
        - torch.lgamma(counts + 1.0)
        + theta * (log_theta - log_theta_mu)
        + counts * (log_mu - log_theta_mu)
    )
    return -log_likelihood.sum(dim=-1).mean(dim=-1)


def state_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over state dims, mean over the batch: (A, B, S) -> (A,)."""
    return (-0.5 * (1.0 + logvar - mu.square() - logvar.exp())).sum(dim=-1).mean(dim=-1)


def categorical_entropy(q: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """H(c|x) = -sum_k q_k log q_k, mean over the batch: (A, B, K) -> (A,)."""
    return -(q * log_q).sum(dim=-1).mean(dim=-1)


def batch_mean(values: torch.Tensor, reducer=None) -> torch.Tensor:
    """Mean over the batch axis: (A, B, K) -> (A, 1, K).

    ``reducer`` (distributed training) turns local sums into global-batch sums, differentiably, so the mean is
    that of the global batch (not per process, unlike the reference's multi-GPU variant)."""
    if reducer is None:
        return values.mean(dim=1, keepdim=True)
    count = reducer(values.new_full((1,), float(values.shape[1])))
    return reducer(values.sum(dim=1, keepdim=True)) / count


def batch_variance(q: torch.Tensor, reducer=None) -> torch.Tensor:
    """Variance over the (global, with ``reducer``) batch of each category's probability: (A, B, K) -> (A, 1, K)
    (biased, 1/B)."""
    return batch_mean((q - batch_mean(q, reducer)).square(), reducer)


def marginal_entropy(q: torch.Tensor, reducer=None) -> torch.Tensor:
    """H(mean_batch q(c|x)) per arm, the entropy (nats) of each arm's category marginal (of the global batch
    with ``reducer``): (A, B, K) -> (A,)."""
    marginal = batch_mean(q, reducer).squeeze(1)
    return -(marginal * torch.log(marginal + COUPLING_EPS)).sum(dim=-1)


def arm_pairs(n_arms: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (a, b) of every pair a < b of arms, each (A*(A-1)/2,)."""
    first, second = torch.triu_indices(n_arms, n_arms, offset=1, device=device)
    return first, second


ABSOLUTE_SPREAD = "absolute"  # the paper's sigma: each category's batch standard deviation
RELATIVE_SPREAD = "relative"  # that deviation over the arm's typical one (root mean variance over categories)
NO_SPREAD = "none"  # sigma = 1: the squared difference of the arms' log-probabilities, the same weight for every category


def coupling_distance(
    q: torch.Tensor,
    variance: torch.Tensor | None = None,
    eps: float = COUPLING_EPS,
    floor: float | None = None,
    spread: str = ABSOLUTE_SPREAD,
) -> torch.Tensor:
    """Perturbed Aitchison distance d2_sigma for every pair of arms a < b -> (P,).

    d2(a, b) = mean_batch sum_k ( log(q_a,k + f) / sigma_a,k - log(q_b,k + f) / sigma_b,k )^2

    with the log floor f = ``floor`` (``eps`` when not given) and sigma_a,k = sqrt(var_a,k + eps) for the
    ``absolute`` spread (the paper's), or sqrt((var_a,k + 1/B) / (mean_j var_a,j + 1/B)) for the ``relative``
    spread. Why relative: with K confident, balanced categories each variance is about 1/K, so the absolute
    form grows like K^2 (K terms, each scaled by K) and the same disagreement costs 100 times more at K = 100
    than at K = 10; dividing by the arm's mean variance keeps its scale independent of K while a category whose
    spread collapses below the others' still looks farther away (the point of the perturbation). The 1/B
    added to each variance (B the batch size) is the spread one cell of the batch gives a category: a rare
    type absent from a batch is not resolved by it, and without the floor its near-zero spread would blow up
    arbitrary differences between the arms' tiny probabilities.

    q: (A, B, K) category probabilities; variance: (A, 1, K) batch variance of q (computed from ``q`` when
    not given; the distributed engine passes the global-batch variance).
    """
    if spread not in (NO_SPREAD, RELATIVE_SPREAD, ABSOLUTE_SPREAD):
        raise ValueError(f"unknown coupling spread {spread!r}")
    scaled = torch.log(q + (eps if floor is None else floor))
    if spread != NO_SPREAD:
        if variance is None:
            variance = batch_variance(q)
        if spread == RELATIVE_SPREAD:
            resolution = 1.0 / q.shape[1] if q.shape[1] > 1 else 1.0  # per-process batch; the global one is larger
            variance = (variance + resolution) / (variance.mean(dim=-1, keepdim=True) + resolution)
        scaled = scaled / torch.sqrt(variance + eps)
    first, second = arm_pairs(q.shape[0], q.device)
    return (scaled[first] - scaled[second]).square().sum(dim=-1).mean(dim=-1)


@dataclass
class LossTerms:
    """The objective and its parts; per-arm terms have shape (A,), pair terms (P,)."""

    total: torch.Tensor  # scalar
    reconstruction: torch.Tensor  # (A,)
    kl: torch.Tensor  # (A,)
    entropy: torch.Tensor  # (A,)
    coupling: torch.Tensor  # (P,) perturbed Aitchison distance per arm pair (empty for A = 1)

    def metric_vector(self) -> torch.Tensor:
        """[total, mean coupling, rec per arm, KL per arm, entropy per arm], detached: (2 + 3A,)."""
        coupling_mean = self.coupling.mean() if self.coupling.numel() else self.total.new_zeros(())
        return torch.cat(
            [self.total.reshape(1), coupling_mean.reshape(1), self.reconstruction, self.kl, self.entropy]
        ).detach()


def metric_names(n_arms: int) -> list[str]:
    """Column names of :meth:`LossTerms.metric_vector`."""
    per_arm = [f"{term}_arm{a}" for term in ("reconstruction", "kl", "entropy") for a in range(n_arms)]
    return ["loss", "coupling", *per_arm]


def linear_ramp(step: torch.Tensor | int, steps: int) -> torch.Tensor | float:
    """min(step / steps, 1): the share of a linear ramp over ``steps`` training steps done after ``step`` of them.
    ``step`` may be a device tensor (the CUDA graph's step counter), so that a captured step reads the ramp anew
    at every replay; a Python int gives a float."""
    if torch.is_tensor(step):
        return (step.to(torch.float32) / steps).clamp(max=1.0)
    return min(float(step) / steps, 1.0)


@dataclass(frozen=True)
class CapacitySchedule:
    """JointVAE's capacities: each KL is pushed toward C(t) = C_max * min(t / steps, 1) with weight gamma."""

    gamma: float
    state_capacity: float  # nats, final capacity of the continuous state KL
    type_capacity: float  # nats, final capacity of the type KL (capped at log K when applied)
    steps: int  # steps over which the capacities grow from 0

    @classmethod
    def from_config(cls, config) -> CapacitySchedule | None:
        """The schedule of a :class:`~cplmix_explorer.config.CplMixConfig`; None for the cpl-mix objective."""
        if config.objective != "jointvae":
            return None
        return cls(config.capacity_gamma, config.state_capacity, config.type_capacity, config.capacity_steps)

    def fraction(self, step: torch.Tensor | int) -> torch.Tensor | float:
        """min(step / steps, 1): how far the capacities have grown (:func:`linear_ramp`)."""
        return linear_ramp(step, self.steps)


def warmed_up_weight(weight: float, step: torch.Tensor | int, warmup_steps: int) -> torch.Tensor | float:
    """``weight`` x min(step / warmup_steps, 1): a KL weight that rises linearly from 0 over ``warmup_steps``
    (``weight`` itself when there is no warm-up)."""
    if warmup_steps <= 0:
        return weight
    return weight * linear_ramp(step, warmup_steps)


def type_kl_to_uniform(entropy: torch.Tensor, n_types: int) -> torch.Tensor:
    """KL(q(c|x) || Uniform(K)) = log K - H(c|x), per arm (A,) from the batch-mean entropy (A,)."""
    return math.log(n_types) - entropy


def jointvae_total(
    reconstruction: torch.Tensor,
    kl: torch.Tensor,
    entropy: torch.Tensor,
    n_types: int,
    schedule: CapacitySchedule,
    step: torch.Tensor | int,
) -> torch.Tensor:
    """JointVAE's objective summed over arms: rec + gamma |KL_s - C_s(t)| + gamma |KL_c - C_c(t)|."""
    fraction = schedule.fraction(step)
    state_capacity = schedule.state_capacity * fraction
    type_capacity = min(schedule.type_capacity, math.log(n_types)) * fraction
    type_kl = type_kl_to_uniform(entropy, n_types)
    return (
        reconstruction
        + schedule.gamma * (kl - state_capacity).abs()
        + schedule.gamma * (type_kl - type_capacity).abs()
    ).sum()


def cplmix_loss(
    outputs: ArmOutputs,
    target: torch.Tensor,
    *,
    likelihood: str,
    lam: float,
    beta: float,
    entropy_weight: float = 1.0,
    marginal_entropy_weight: float = 0.0,
    coupling_floor: float = COUPLING_EPS,
    coupling_spread: str = ABSOLUTE_SPREAD,
    coupled: bool = True,
    library: torch.Tensor | None = None,
    log_theta: torch.Tensor | None = None,
    gene_variance: str = FIXED_GENE_VARIANCE,
    reducer=None,
    capacity: CapacitySchedule | None = None,
    step: torch.Tensor | int = 0,
) -> LossTerms:
    """The objective of method.md for all arms at once.

    target: (A, B, G) what each arm reconstructs (log-expression for Gaussian, counts for NB);
    library: (A, B, 1) counts per cell (NB only). ``gene_variance`` (Gaussian only): "fixed" unit variance
    (the paper's 1/2 squared error) or "batch", each gene's maximum-likelihood variance in the batch.
    ``coupled=False`` drops the pair terms and weights the arms' VAE terms by 1 (independent arms, the
    augmentation-without-coupling ablation). ``reducer`` (distributed training) makes the coupling's batch
    variance that of the global batch (the "batch" gene variance stays each replica's own). With a JointVAE
    ``capacity`` schedule the total is JointVAE's objective at ``step`` (steps done so far) instead.
    """
    if likelihood == GAUSSIAN and gene_variance == BATCH_GENE_VARIANCE:
        reconstruction = batch_variance_gaussian_reconstruction(target, outputs.decoded)
    elif likelihood == GAUSSIAN:
        reconstruction = gaussian_reconstruction(target, outputs.decoded)
    else:
        reconstruction = negative_binomial_reconstruction(target, outputs.decoded, library, log_theta)
    kl = state_kl(outputs.mu, outputs.logvar)
    entropy = categorical_entropy(outputs.q, outputs.log_q)
    n_arms = outputs.q.shape[0]
    if capacity is not None:
        coupling = outputs.q.new_zeros(0)
        total = jointvae_total(reconstruction, kl, entropy, outputs.q.shape[-1], capacity, step)
    elif n_arms == 1 or not coupled:
        coupling = outputs.q.new_zeros(0)
        total = (reconstruction + beta * kl).sum()
    else:
        # the spread needs the (global-batch) variance of q; without a spread nothing is reduced across processes
        variance = None if coupling_spread == NO_SPREAD else batch_variance(outputs.q, reducer)
        coupling = coupling_distance(outputs.q, variance, floor=coupling_floor, spread=coupling_spread)
        total = (n_arms - 1) * (reconstruction + beta * kl).sum() + lam * coupling.sum() - entropy_weight * (n_arms - 1) * entropy.sum()
    if capacity is None and marginal_entropy_weight:
        total = total - marginal_entropy_weight * marginal_entropy(outputs.q, reducer).sum()
    return LossTerms(total=total, reconstruction=reconstruction, kl=kl, entropy=entropy, coupling=coupling)
