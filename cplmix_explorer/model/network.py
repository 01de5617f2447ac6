"""The coupled mixture VAE as one torch module: A arms with stacked weights (pure torch, no I/O, no UI).

Per arm (method.md, "Model"): encoder x_a -> h_a; categorical posterior q(c|x_a) = softmax(logits / tau);
a Gumbel-softmax relaxed type sample c_a in training (one-hot argmax at inference); state posterior
q(s|c_a, x_a) = N(mu, diag sigma^2) from [h_a, c_a]; decoder p(x|c_a, s_a) from [c_a, s_a] (and, with the depth
covariate on count data, the cell's standardised log library size, an observed covariate as in scVI, so that the
state is not spent on sequencing depth).

The state reads either the type encoder's bottleneck (``state_encoder="shared"``, the paper's network) or the
bottleneck of a second encoder of the same shape (``"separate"``). The coupling's gradient reaches only the
type encoder, and when the arms see different cells of one type (neighbor copies) it makes that encoder
blind to the within-type variation the state is meant to capture; a separate state encoder keeps it.

Tensors carry a leading arm axis: inputs (A, B, G), outputs (A, B, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .layers import StackedBatchNorm, StackedLinear

GAUSSIAN = "gaussian"
NEGATIVE_BINOMIAL = "nb"
#: Where q(s|c, x) reads x: the type encoder's bottleneck, or a second encoder of its own.
SHARED_STATE_ENCODER = "shared"
SEPARATE_STATE_ENCODER = "separate"
#: Activation of the separate state encoder's bottleneck: none, or ReLU as the type encoder. With ReLU some cells
#: had all ten units at zero and so shared one state; without it no two cells do.
LINEAR_STATE_BOTTLENECK = "linear"
RELU_STATE_BOTTLENECK = "relu"
FIXED_GENE_VARIANCE = "fixed"  # unit variance of the Gaussian on log-expression (the paper)
BATCH_GENE_VARIANCE = "batch"  # each gene's maximum-likelihood variance in the mini-batch


@dataclass
class ArmOutputs:
    """What one forward pass produces for all arms; every tensor has a leading arm axis A."""

    log_q: torch.Tensor  # (A, B, K) log q(c|x), log-softmax of logits / tau
    q: torch.Tensor  # (A, B, K) category probabilities
    c: torch.Tensor  # (A, B, K) relaxed sample (training) or one-hot argmax (inference)
    mu: torch.Tensor  # (A, B, S) state posterior mean
    logvar: torch.Tensor  # (A, B, S) state posterior log variance
    s: torch.Tensor  # (A, B, S) reparameterised state sample (= mu at inference)
    decoded: torch.Tensor  # (A, B, G) Gaussian: log-expression; NB: log of the gene proportions (log rho)
    h: torch.Tensor  # (A, B, D) encoder bottleneck (the latent)


def input_dropout(x: torch.Tensor, rate: float, training: bool) -> tuple[torch.Tensor, float]:
    """Inverted dropout returned as (masked x, scale): the caller multiplies by ``scale`` (the first layer
    does it inside its matrix product, for free).

    On the CPU the keep mask comes from 64-bit random words split into bytes (8x fewer random draws than
    ``F.dropout``, whose random numbers dominate a CPU step); the rate is then rounded to 1/256."""
    if not training or rate <= 0.0:
        return x, 1.0
    if x.device.type != "cpu":
        return F.dropout(x, rate, True), 1.0
    threshold = round(rate * 256)
    if threshold == 0:
        return x, 1.0
    n = x.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64, device=x.device)
    random_bytes = words.view(torch.uint8)[:n].view(x.shape)
    scale = 256.0 / (256 - threshold)
    if x.requires_grad:
        return x * (random_bytes >= threshold), scale
    # The comparison written straight into a float tensor, then one in-place product: faster on the CPU than
    # torch.where with a bool mask (same values; x is finite, validated on input).
    masked = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    torch.ge(random_bytes, threshold, out=masked)
    return masked.mul_(x), scale


def gumbel_softmax_sample(log_q: torch.Tensor, temperature: float) -> torch.Tensor:
    """Relaxed one-hot sample softmax((log q + g) / temperature) with g ~ Gumbel(0, 1); same shape as log_q."""
    gumbel = -torch.empty_like(log_q).exponential_().log()
    return torch.softmax((log_q + gumbel) / temperature, dim=-1)


def straight_through_one_hot(soft: torch.Tensor) -> torch.Tensor:
    """The one-hot argmax of a relaxed sample (..., K) in the forward pass, with the relaxed sample's
    gradient in the backward pass (straight-through Gumbel-softmax)."""
    hard = F.one_hot(soft.argmax(dim=-1), soft.shape[-1]).to(soft.dtype)
    return hard + (soft - soft.detach())  # exactly one-hot forward (the bracket is 0)


def _mlp(
    x: torch.Tensor, scale: float, layers, norms, bottleneck, bottleneck_norm, bottleneck_relu: bool = True
) -> torch.Tensor:
    """An encoder's hidden layers (ReLU, then BatchNorm) and bottleneck (ReLU unless ``bottleneck_relu`` is
    False, then BatchNorm): (A, B, G) -> (A, B, D). ``scale``: the input dropout's rescaling, applied by the
    first layer."""
    for index, (layer, norm) in enumerate(zip(layers, norms)):
        x = norm(torch.relu(layer(x, scale) if index == 0 else layer(x)))
    x = bottleneck(x)
    return bottleneck_norm(torch.relu(x) if bottleneck_relu else x)


class CoupledMixtureVAE(nn.Module):
    """A coupled autoencoder arms, each a mixture VAE with a type-dependent continuous state."""

    def __init__(
        self,
        n_genes: int,
        n_types: int,
        state_dim: int = 2,
        n_arms: int = 2,
        hidden_dim: int = 100,
        n_hidden_layers: int = 4,
        bottleneck_dim: int = 10,
        type_bottleneck_dim: int | None = None,
        input_dropout: float = 0.2,
        state_dropout: float = 0.0,
        likelihood: str = GAUSSIAN,
        tau: float = 1.0,
        state_depends_on_type: bool = True,
        share_arm_parameters: bool = False,
        straight_through: bool = False,
        state_encoder: str = SEPARATE_STATE_ENCODER,
        gene_variance: str = FIXED_GENE_VARIANCE,
        state_bottleneck: str = LINEAR_STATE_BOTTLENECK,
        depth_covariate: bool = False,
    ):
        super().__init__()
        if likelihood not in (GAUSSIAN, NEGATIVE_BINOMIAL):
            raise ValueError(f"unknown likelihood {likelihood!r}")
        if state_encoder not in (SHARED_STATE_ENCODER, SEPARATE_STATE_ENCODER):
            raise ValueError(f"unknown state encoder {state_encoder!r}")
        if gene_variance not in (FIXED_GENE_VARIANCE, BATCH_GENE_VARIANCE):
            raise ValueError(f"unknown gene variance {gene_variance!r}")
        if state_bottleneck not in (LINEAR_STATE_BOTTLENECK, RELU_STATE_BOTTLENECK):
            raise ValueError(f"unknown state bottleneck {state_bottleneck!r}")
        self.n_genes = n_genes
        self.n_types = n_types
        self.state_dim = state_dim
        self.n_arms = n_arms
        self.likelihood = likelihood
        self.tau = tau
        self.input_dropout = input_dropout
        self.state_dropout = state_dropout
        self.state_depends_on_type = state_depends_on_type
        self.straight_through = straight_through
        self.state_encoder = state_encoder
        self.gene_variance = gene_variance
        self.state_bottleneck_activation = state_bottleneck
        self.depth_covariate = depth_covariate
        shared = share_arm_parameters

        def linear(n_in: int, n_out: int) -> StackedLinear:
            return StackedLinear(n_arms, n_in, n_out, shared=shared)

        def norms(n_features: int, count: int) -> nn.ModuleList:
            return nn.ModuleList(StackedBatchNorm(n_arms, n_features, shared=shared) for _ in range(count))

        widths = [n_genes] + [hidden_dim] * n_hidden_layers
        self.encoder_layers = nn.ModuleList(linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.encoder_norms = norms(hidden_dim, n_hidden_layers)
        type_width = type_bottleneck_dim or bottleneck_dim
        self.bottleneck = linear(hidden_dim, type_width)
        self.bottleneck_norm = StackedBatchNorm(n_arms, type_width, shared=shared)
        self.type_head = linear(type_width, n_types)
        if state_encoder == SEPARATE_STATE_ENCODER:  # same widths as the type encoder, its own weights
            self.state_encoder_layers = nn.ModuleList(linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
            self.state_encoder_norms = norms(hidden_dim, n_hidden_layers)
            self.state_bottleneck = linear(hidden_dim, bottleneck_dim)
            self.state_bottleneck_norm = StackedBatchNorm(n_arms, bottleneck_dim, shared=shared)
        latent_width = bottleneck_dim if state_encoder == SEPARATE_STATE_ENCODER else type_width  # h, as encode gives it
        state_input = latent_width + (n_types if state_depends_on_type else 0)
        self.state_head = linear(state_input, 2 * state_dim)
        n_covariates = 1 if depth_covariate else 0
        decoder_widths = [n_types + state_dim + n_covariates, bottleneck_dim] + [hidden_dim] * n_hidden_layers
        self.decoder_layers = nn.ModuleList(linear(a, b) for a, b in zip(decoder_widths[:-1], decoder_widths[1:]))
        self.decoder_output = linear(hidden_dim, n_genes)
        if likelihood == NEGATIVE_BINOMIAL:
            # per-arm, per-gene inverse dispersion theta = exp(log_theta)
            self.log_theta = nn.Parameter(torch.zeros(1 if shared else n_arms, 1, n_genes))
        # Original category index of each current category (pruning removes categories).
        self.register_buffer("category_ids", torch.arange(n_types))
        if depth_covariate:  # log library size -> (log library - centre) / scale, set from the data's cells
            self.register_buffer("depth_centre", torch.zeros(()))
            self.register_buffer("depth_scale", torch.ones(()))

    # -- the three parts of an arm --------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (A, B, G) -> latent h (A, B, D) that the state reads, and type logits (A, B, K).

        h is the type encoder's bottleneck, or the state encoder's with ``state_encoder="separate"`` (both
        encoders see the same input dropout mask)."""
        dropped, scale = input_dropout(x, self.input_dropout, self.training)
        h = _mlp(dropped, scale, self.encoder_layers, self.encoder_norms, self.bottleneck, self.bottleneck_norm)
        logits = self.type_head(h)
        if self.state_encoder == SEPARATE_STATE_ENCODER:
            h = _mlp(dropped, scale, self.state_encoder_layers, self.state_encoder_norms, self.state_bottleneck,
                     self.state_bottleneck_norm, bottleneck_relu=self.state_bottleneck_activation == RELU_STATE_BOTTLENECK)
        return h, logits

    def type_posterior(self, logits: torch.Tensor) -> torch.Tensor:
        """log q(c|x) (A, B, K): one log-softmax of logits / tau (no double softmax)."""
        return torch.log_softmax(logits / self.tau, dim=-1)

    def state_posterior(self, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance (A, B, S) of q(s|c, x) from [h, c] (or h alone in the s-independent ablation)."""
        features = torch.cat([h, c], dim=-1) if self.state_depends_on_type else h
        mu, logvar = self.state_head(features).chunk(2, dim=-1)
        return mu, logvar

    def set_depth_reference(self, library_size: np.ndarray) -> None:
        """Centre and scale of the depth covariate: mean and sd of the cells' log library sizes."""
        log_library = np.log(np.maximum(np.asarray(library_size, dtype=np.float64), 1.0))
        self.depth_centre.fill_(float(log_library.mean()))
        self.depth_scale.fill_(float(max(log_library.std(), 1e-3)))

    def depth(self, library: torch.Tensor) -> torch.Tensor:
        """Library sizes (..., 1) -> the decoder's depth covariate: standardised log library size."""
        return (torch.log(library.clamp_min(1.0)) - self.depth_centre) / self.depth_scale

    def decode(self, c: torch.Tensor, s: torch.Tensor, depth: torch.Tensor | None = None) -> torch.Tensor:
        """[c (A, B, K), s (A, B, S)] -> (A, B, G): log-expression (Gaussian) or log gene proportions (NB).

        With the depth covariate the decoder also reads ``depth`` (A, B, 1), the standardised log library
        size (:meth:`depth`), so that what sequencing depth does to the expression (more zeros in shallow cells) is
        not left to the continuous state; without it (e.g. a traversal) the cells' mean depth, 0, is used."""
        s = F.dropout(s, self.state_dropout, self.training) if self.state_dropout > 0 else s
        parts = [c, s]
        if self.depth_covariate:
            parts.append(depth if depth is not None else s.new_zeros(*s.shape[:-1], 1))
        out = torch.cat(parts, dim=-1)
        for layer in self.decoder_layers:
            out = torch.relu(layer(out))
        out = self.decoder_output(out)
        if self.likelihood == GAUSSIAN:
            return out.relu_()  # in place: the layer output is not needed for its backward
        return torch.log_softmax(out, dim=-1)

    def expression(self, decoded: torch.Tensor, target_sum: float) -> torch.Tensor:
        """Decoder output on the log-normalised expression scale, log1p(x / library * target_sum)."""
        if self.likelihood == GAUSSIAN:
            return decoded
        return torch.log1p(decoded.exp() * target_sum)

    # -- full pass ----------------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        gumbel_temperature: float = 1.0,
        noise: tuple[torch.Tensor, torch.Tensor] | None = None,
        depth: torch.Tensor | None = None,
    ) -> ArmOutputs:
        """x (A, B, G), each arm its own (augmented) copy. Training: relaxed sample c and sampled s;
        eval mode: one-hot argmax c and s = mu.

        ``noise`` optionally supplies the training noise (Gumbel (A, B, K), standard normal (A, B, S))
        instead of drawing it, so that a computation can be replayed exactly (distributed equivalence tests).
        ``depth`` (A, B, 1): the depth covariate of each copy (see ``decode``).
        """
        h, logits = self.encode(x)
        log_q = self.type_posterior(logits)
        q = log_q.exp()
        if self.training:
            if noise is None:
                c = gumbel_softmax_sample(log_q, gumbel_temperature)
            else:
                c = torch.softmax((log_q + noise[0]) / gumbel_temperature, dim=-1)
            if self.straight_through:
                c = straight_through_one_hot(c)
        else:
            c = F.one_hot(log_q.argmax(dim=-1), self.n_types).to(log_q.dtype)
        mu, logvar = self.state_posterior(h, c)
        if self.training:
            normal = torch.randn_like(mu) if noise is None else noise[1]
            s = mu + torch.exp(0.5 * logvar) * normal  # standard normal noise
        else:
            s = mu
        return ArmOutputs(log_q=log_q, q=q, c=c, mu=mu, logvar=logvar, s=s, decoded=self.decode(c, s, depth), h=h)

    @torch.no_grad()
    def keep_categories(self, keep: torch.Tensor) -> None:
        """Remove every category not in ``keep`` (indices into the current categories), in place: the type
        head's outputs, and the category inputs of the state head and of the decoder's first layer.
        The remaining categories keep their trained weights; ``category_ids`` tracks original indices."""
        keep = torch.as_tensor(keep, dtype=torch.long, device=self.category_ids.device).sort().values
        head = self.type_head
        head.weight = nn.Parameter(head.weight[:, :, keep].clone())
        head.bias = nn.Parameter(head.bias[:, :, keep].clone())
        head.out_features = len(keep)
        if self.state_depends_on_type:
            bottleneck = self.state_head.in_features - self.n_types
            rows = torch.cat([torch.arange(bottleneck, device=keep.device), bottleneck + keep])
            self.state_head.weight = nn.Parameter(self.state_head.weight[:, rows, :].clone())
            self.state_head.in_features = len(rows)
        first = self.decoder_layers[0]
        n_inputs = self.state_dim + (1 if self.depth_covariate else 0)
        rows = torch.cat([keep, self.n_types + torch.arange(n_inputs, device=keep.device)])
        first.weight = nn.Parameter(first.weight[:, rows, :].clone())
        first.in_features = len(rows)
        self.category_ids = self.category_ids[keep].clone()
        self.n_types = len(keep)

    def set_batch_reducer(self, reducer) -> None:
        """Make every BatchNorm use global-batch statistics (distributed training)."""
        for module in self.modules():
            if isinstance(module, StackedBatchNorm):
                module.reducer = reducer
