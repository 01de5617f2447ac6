"""The generative augmenter for single-cell data (paper Supplementary F; U-DAGAN, a VAE-GAN / DAGAN-style
network trained without labels).

A generator encodes a cell x (B, G) (log-normalised expression, the values the cpl-mixVAE sees) to features,
mixes in a learned map of random noise, and decodes the resulting latent point, which lies in the vicinity of
the cell's own, to a new cell: per gene a non-negative magnitude (log-expression when detected) and a
detection probability. A copy is magnitude x a Bernoulli detection draw. With zero noise the generator
reconstructs the cell. Its objective (all four terms train it; the reference code binarised its samples by
masked assignment, which cut the gradients of every term but plain reconstruction):

    adversarial     -log D(copy) for the noise-free and the noisy copy (non-saturating GAN loss)
    reconstruction  BCE of the detection probabilities against x > 0, plus the squared error of the
                    magnitudes on the detected genes (noise-free copy)
    triplet         max(0, d(x, x_clean) - d(x, x_noisy) + margin), d = mean squared difference per gene:
                    a noisy copy must differ from its cell (diversity) ...
    feature         ... while staying close to the noise-free copy in the discriminator's feature space
                    (the latent vicinity; the reference's distance between discriminator features)

Detection draws use a straight-through estimator, so every term's gradient reaches the generator, its noise
branch included. The discriminator D learns to tell cells from copies (each of its two parts only while its
loss is above log(2)/2, as in the reference, so it cannot overpower the generator).

Saved as a folder: ``augmenter.safetensors`` (generator weights, no pickle) and ``augmenter.json`` (format,
genes, preprocessing, architecture, training options, loss history and the SHA-256 of the weights file).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from ..config import AugmenterConfig
from ..errors import CplmixError
from .augment import Augmenter

FORMAT = "cplmix-generative-augmenter"
FORMAT_VERSION = 1
WEIGHTS_NAME = "augmenter.safetensors"
METADATA_NAME = "augmenter.json"
#: Architecture options stored with the weights (the generator is rebuilt from them).
ARCHITECTURE_OPTIONS = ("latent_dim", "noise_dim", "hidden_dim", "n_hidden_layers", "input_dropout")
#: Each part of the discriminator's loss trains it only while above this value (the reference's balance).
DISCRIMINATOR_FLOOR = math.log(2.0) / 2
LOSS_NAMES = ("total", "adversarial", "reconstruction", "triplet", "feature", "discriminator")


@dataclass
class GeneratedCells:
    """Generator output for A noise draws of B cells; every tensor (A, B, ...)."""

    magnitude: torch.Tensor  # (A, B, G) non-negative log-expression where the gene is detected
    detection_logit: torch.Tensor  # (A, B, G) logit of the probability that the gene is detected
    latent: torch.Tensor  # (A, B, D) latent point the copy was decoded from


def _mlp(widths: list[int]) -> nn.Sequential:
    """Linear -> ReLU -> BatchNorm (no affine parameters) per hidden layer, as the reference's encoder."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU(), nn.BatchNorm1d(n_out, affine=False)]
    return nn.Sequential(*layers)


class AugmentationGenerator(nn.Module):
    """x (B, G) and noise (A, B, N) -> :class:`GeneratedCells`; zero noise gives the reconstruction of x."""

    def __init__(
        self,
        n_genes: int,
        latent_dim: int = 10,
        noise_dim: int = 50,
        hidden_dim: int = 256,
        n_hidden_layers: int = 2,
        input_dropout: float = 0.2,
    ):
        super().__init__()
        self.n_genes = n_genes
        self.noise_dim = noise_dim
        self.input_dropout = input_dropout
        self.encoder = _mlp([n_genes] + [hidden_dim] * n_hidden_layers)
        # no bias: zero noise maps to zero, so the noise-free copy is the cell's own reconstruction
        self.noise_map = nn.Linear(noise_dim, noise_dim, bias=False)
        self.to_latent = nn.Linear(hidden_dim + noise_dim, latent_dim)
        decoder: list[nn.Module] = []
        for n_in, n_out in zip([latent_dim] + [hidden_dim] * (n_hidden_layers - 1), [hidden_dim] * n_hidden_layers):
            decoder += [nn.Linear(n_in, n_out), nn.ReLU()]
        self.decoder = nn.Sequential(*decoder)
        self.output = nn.Linear(hidden_dim, 2 * n_genes)

    @torch.no_grad()
    def start_from_data(self, detected_mean: torch.Tensor, detection_rate: torch.Tensor) -> None:
        """Start the output at the data's per-gene mean log-expression where detected (G,) and detection
        rate (G,), so that training spends its steps on the cells, not on the genes' scale."""
        n = self.n_genes
        magnitude = detected_mean.clamp_min(1e-3)
        self.output.bias[:n] = magnitude + torch.log(-torch.expm1(-magnitude))  # inverse softplus
        rate = detection_rate.clamp(1e-3, 1 - 1e-3)
        self.output.bias[n:] = torch.log(rate) - torch.log1p(-rate)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> GeneratedCells:
        features = self.encoder(F.dropout(x, self.input_dropout, self.training))  # (B, H)
        n_draws = noise.shape[0]
        perturbation = F.elu(self.noise_map(noise))  # (A, B, N)
        latent = self.to_latent(torch.cat([features.unsqueeze(0).expand(n_draws, -1, -1), perturbation], dim=-1))
        magnitude, detection_logit = self.output(self.decoder(latent)).chunk(2, dim=-1)
        return GeneratedCells(F.softplus(magnitude), detection_logit, latent)


def sample_copies(generated: GeneratedCells, same_detection_draw: bool = False) -> torch.Tensor:
    """Copies (A, B, G) = magnitude x Bernoulli(detection) with a straight-through gradient to the
    detection probabilities (the draw itself has none).

    ``same_detection_draw`` uses one uniform draw for all A noise draws, so that copies of a cell differ
    only through the latent noise (training compares the noisy copy with the noise-free one)."""
    probability = torch.sigmoid(generated.detection_logit)
    uniform = torch.rand_like(probability[:1] if same_detection_draw else probability)
    detected = (uniform < probability).to(probability.dtype)
    detected = detected + probability - probability.detach()
    return generated.magnitude * detected


class Discriminator(nn.Module):
    """x (..., G) -> features (..., H) and the logit (...) that x is a real cell."""

    def __init__(self, n_genes: int, hidden_dim: int = 256):
        super().__init__()
        self.features = nn.Sequential(
            nn.Linear(n_genes, hidden_dim), nn.LeakyReLU(0.2), nn.Linear(hidden_dim, hidden_dim), nn.LeakyReLU(0.2)
        )
        self.head = nn.Linear(hidden_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return features, self.head(features).squeeze(-1)


@dataclass
class AugmenterLoss:
    """The generator's weighted objective and its four terms (scalars)."""

    total: torch.Tensor
    adversarial: torch.Tensor
    reconstruction: torch.Tensor
    triplet: torch.Tensor
    feature: torch.Tensor
    copies: torch.Tensor  # (2, B, G): the noise-free and the noisy copy, for the discriminator's update


def generator_loss(
    generator: AugmentationGenerator, discriminator: Discriminator, x: torch.Tensor, options: AugmenterConfig
) -> AugmenterLoss:
    """The generator's objective on a batch x (B, G) of log-expression (see the module docstring)."""
    batch = x.shape[0]
    noise = torch.randn(1, batch, generator.noise_dim, device=x.device, dtype=x.dtype)
    generated = generator(x, torch.cat([torch.zeros_like(noise), noise]))  # draw 0 noise-free, draw 1 noisy
    copies = sample_copies(generated, same_detection_draw=True)
    features, logits = discriminator(copies)
    adversarial = F.softplus(-logits).mean()  # -log sigmoid(logit): the copies should pass as real
    detected = (x > 0).to(x.dtype)
    detection = F.binary_cross_entropy_with_logits(generated.detection_logit[0], detected)
    magnitude_error = (detected * (generated.magnitude[0] - x).square()).sum() / detected.sum().clamp_min(1.0)
    reconstruction = detection + magnitude_error
    distance_clean = (copies[0] - x).square().mean(dim=-1)
    distance_noisy = (copies[1] - x).square().mean(dim=-1)
    triplet = F.relu(distance_clean - distance_noisy + options.triplet_margin).mean()
    feature = (features[1] - features[0]).square().mean()
    total = (
        options.adversarial_weight * adversarial
        + options.reconstruction_weight * reconstruction
        + options.triplet_weight * triplet
        + options.feature_weight * feature
    )
    return AugmenterLoss(total, adversarial, reconstruction, triplet, feature, copies)


def discriminator_loss(discriminator: Discriminator, x: torch.Tensor, copies: torch.Tensor) -> torch.Tensor:
    """BCE of real cells against (detached) copies; each part counts only while above the floor."""
    _, real = discriminator(x)
    _, fake = discriminator(copies.detach())
    real_loss = F.softplus(-real).mean()
    fake_loss = F.softplus(fake).mean()
    return real_loss * (real_loss.detach() > DISCRIMINATOR_FLOOR) + fake_loss * (fake_loss.detach() > DISCRIMINATOR_FLOOR)


class GenerativeAugmenter(Augmenter):
    """A trained generator as an :class:`Augmenter`: each arm gets its own noise and detection draw.

    The generator is frozen (eval mode, no gradients): training the cpl-mixVAE never changes it."""

    name = "generative"
    needs_counts = False  # it works on the log-normalised values the encoder sees

    def __init__(self, generator: AugmentationGenerator, genes: list[str], preprocessing: dict, path: str = ""):
        super().__init__()
        self.generator = generator.eval().requires_grad_(False)
        self.genes = list(genes)
        self.preprocessing = dict(preprocessing)
        self.path = path

    def train(self, mode: bool = True) -> GenerativeAugmenter:
        super().train(mode)
        self.generator.eval()  # BatchNorm running statistics and no dropout, always
        return self

    @torch.no_grad()
    def forward(self, values: torch.Tensor, n_arms: int) -> torch.Tensor:
        """values (B, G) log-expression -> copies (A, B, G), one independent draw per arm."""
        noise = torch.randn(n_arms, values.shape[0], self.generator.noise_dim, device=values.device, dtype=values.dtype)
        return sample_copies(self.generator(values, noise))


def check_out_dir_free(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CplmixError(f"'{out_dir}' already exists and is not an empty folder; choose another --out")


def _sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def save_generative_augmenter(generator: AugmentationGenerator, metadata: dict, out_dir: str | os.PathLike) -> Path:
    """Write the augmenter folder atomically: both files go into a temporary folder that is then renamed."""
    out_dir = Path(out_dir)
    check_out_dir_free(out_dir)
    tensors = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    weights = save_safetensors(tensors, metadata={"format": FORMAT})
    metadata = {**metadata, "weights": WEIGHTS_NAME, "sha256": _sha256(weights)}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for name, payload in ((WEIGHTS_NAME, weights), (METADATA_NAME, (json.dumps(metadata, indent=2) + "\n").encode())):
            with open(temporary / name, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
        if out_dir.exists():
            out_dir.rmdir()  # an empty folder (checked above) is replaced
        os.replace(temporary, out_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return out_dir


def read_augmenter_metadata(path: str | os.PathLike) -> dict:
    """The JSON metadata of an augmenter folder (format checked), or a one-line :class:`CplmixError`."""
    path = Path(path)
    metadata_path = path / METADATA_NAME
    if not path.is_dir() or not metadata_path.is_file():
        raise CplmixError(
            f"no generative augmenter at '{path}' (expected a folder with {METADATA_NAME} written by "
            "'cplmix augmenter train DATA --out DIR')"
        )
    try:
        metadata = json.loads(metadata_path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise CplmixError(f"'{metadata_path}' is damaged (not JSON)") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CplmixError(f"'{path}' does not hold a cplmix generative augmenter")
    if int(metadata.get("format_version", 0)) > FORMAT_VERSION:
        raise CplmixError(f"'{path}' was written by a newer cplmix-explorer (format {metadata['format_version']})")
    return metadata


def load_generative_augmenter(
    path: str | os.PathLike, genes: list[str] | None = None, transform: str | None = None
) -> GenerativeAugmenter:
    """Load (and verify) an augmenter folder; ``genes`` and ``transform`` are those of the data it will
    augment: an augmenter trained on other genes or another normalisation is refused."""
    path = Path(path)
    metadata = read_augmenter_metadata(path)
    weights_path = path / metadata.get("weights", WEIGHTS_NAME)
    if not weights_path.is_file():
        raise CplmixError(f"the generative augmenter in '{path}' has no weights file ({weights_path.name})")
    payload = weights_path.read_bytes()
    if _sha256(payload) != metadata.get("sha256"):
        raise CplmixError(f"the generative augmenter's weights '{weights_path}' are damaged or were modified (checksum mismatch)")
    try:
        tensors = load_safetensors(payload)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise CplmixError(f"the generative augmenter's weights '{weights_path}' are damaged: {str(error).splitlines()[0]}") from None
    saved_genes = [str(g) for g in metadata["genes"]]
    if genes is not None and list(map(str, genes)) != saved_genes:
        genes = list(map(str, genes))
        unknown = [g for g in genes if g not in set(saved_genes)]
        unused = [g for g in saved_genes if g not in set(genes)]
        if unknown:
            detail = f"{len(unknown)} of the run's genes are not the augmenter's, e.g. {', '.join(unknown[:3])}"
        elif unused:
            detail = f"{len(unused)} of the augmenter's genes are not the run's, e.g. {', '.join(unused[:3])}"
        else:
            detail = "the same genes in another order"
        raise CplmixError(
            f"the generative augmenter in '{path}' was trained on {len(saved_genes)} genes, this run uses "
            f"{len(genes)} ({detail}); train the augmenter on the same data with the same --genes"
        )
    saved_transform = metadata["preprocessing"].get("transform")
    if transform is not None and transform != saved_transform:
        raise CplmixError(
            f"the generative augmenter in '{path}' was trained on data normalised as '{saved_transform}' but this "
            f"run's data is '{transform}'; use the same --normalize for both"
        )
    architecture = dict(metadata["architecture"])
    generator = AugmentationGenerator(architecture.pop("n_genes"), **architecture)
    try:
        generator.load_state_dict(tensors)
    except RuntimeError as error:
        raise CplmixError(f"the generative augmenter in '{path}' does not match its architecture: {str(error).splitlines()[0]}") from None
    return GenerativeAugmenter(generator, saved_genes, metadata["preprocessing"], str(path))
