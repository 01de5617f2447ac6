"""Inference in chunks: per-arm and consensus types, confidence, state means and the encoder latent."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .network import CoupledMixtureVAE

DEFAULT_CHUNK = 8192


@dataclass
class Inference:
    """Per-cell results for N cells, A arms, K types, S state dims, D latent dims.

    type_per_arm (A, N) int; confidence_per_arm (A, N) max q of that arm; consensus_type (N,) argmax of the
    arms' mean q; consensus_confidence (N,) its mean probability; state_mean (A, N, S) each arm's state mean
    given its own type; latent (A, N, D) encoder bottleneck.
    """

    type_per_arm: np.ndarray
    confidence_per_arm: np.ndarray
    consensus_type: np.ndarray
    consensus_confidence: np.ndarray
    state_mean: np.ndarray
    latent: np.ndarray

    @property
    def arms_agree(self) -> np.ndarray:
        """(N,) True where every arm assigns the same type."""
        return (self.type_per_arm == self.type_per_arm[:1]).all(axis=0)


def _posteriors(module: CoupledMixtureVAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The eval-mode forward pass without the decoder on (A, chunk, G) inputs: the latent (A, chunk, D), log
    q(c|x) (A, chunk, K) and each arm's state mean given its argmax type (A, chunk, S)."""
    latent, logits = module.encode(x)
    log_q = module.type_posterior(logits)
    one_hot = F.one_hot(log_q.argmax(dim=-1), module.n_types).to(log_q.dtype)
    state_mean, _ = module.state_posterior(latent, one_hot)
    return latent, log_q, state_mean


@torch.no_grad()
def infer(module: CoupledMixtureVAE, data, rows: np.ndarray | None = None, chunk_size: int = DEFAULT_CHUNK) -> Inference:
    """Run the arms of ``module`` (the network) in eval mode (argmax types, state = mean) over ``rows`` of a
    DeviceData (all by default).

    Works in chunks of ``chunk_size`` cells: memory is O(chunk x genes) on the device plus the (N, ...)
    results on the host; the result does not depend on ``chunk_size``."""
    was_training = module.training
    module.eval()
    device = data.device
    n = data.n_cells if rows is None else len(rows)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("type", "conf", "ctype", "cconf", "state", "latent")}
    try:
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            index = torch.arange(start, stop, device=device) if rows is None else torch.as_tensor(rows[start:stop], device=device)
            x = data.model_input(index).unsqueeze(0).expand(module.n_arms, -1, -1)
            latent, log_q, state_mean = _posteriors(module, x)  # no decoder: (A, chunk, G) of work and memory
            q = log_q.exp()
            confidence, assigned = q.max(dim=-1)
            mean_q = q.mean(dim=0)
            consensus_confidence, consensus_type = mean_q.max(dim=-1)
            parts["type"].append(assigned.cpu().numpy())
            parts["conf"].append(confidence.cpu().numpy())
            parts["ctype"].append(consensus_type.cpu().numpy())
            parts["cconf"].append(consensus_confidence.cpu().numpy())
            parts["state"].append(state_mean.cpu().numpy())
            parts["latent"].append(latent.cpu().numpy())
    finally:
        module.train(was_training)
    return Inference(
        type_per_arm=np.concatenate(parts["type"], axis=1),
        confidence_per_arm=np.concatenate(parts["conf"], axis=1),
        consensus_type=np.concatenate(parts["ctype"]),
        consensus_confidence=np.concatenate(parts["cconf"]),
        state_mean=np.concatenate(parts["state"], axis=1),
        latent=np.concatenate(parts["latent"], axis=1),
    )


@torch.no_grad()
def types_and_states(module: CoupledMixtureVAE, data, chunk_size: int = DEFAULT_CHUNK) -> np.ndarray:
    """(N, K + S) float32: every cell's type posterior q(c|x) (the arms' mean) next to arm 0's state mean given
    its type, in eval mode and in chunks: the model's own description of a cell (type, then state within it),
    what the default cell map is made from."""
    was_training = module.training
    module.eval()
    parts = []
    try:
        for start in range(0, data.n_cells, chunk_size):
            index = torch.arange(start, min(start + chunk_size, data.n_cells), device=data.device)
            x = data.model_input(index).unsqueeze(0).expand(module.n_arms, -1, -1)
            _, log_q, state_mean = _posteriors(module, x)
            parts.append(torch.cat([log_q.exp().mean(dim=0), state_mean[0]], dim=1).float().cpu().numpy())
    finally:
        module.train(was_training)
    return np.concatenate(parts) if parts else np.zeros((0, module.n_types + module.state_dim), np.float32)
