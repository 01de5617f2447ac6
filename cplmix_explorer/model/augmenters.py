"""Which augmenter a run uses: an option value (``--augment``) or a run's configuration to an :class:`Augmenter`."""

from __future__ import annotations

from ..config import NEIGHBOR_STEPS_EXPRESSION, NEIGHBOR_STEPS_IMAGES, neighbor_components
from ..errors import CplmixError
from .augment import AffineImageAugmenter, Augmenter, CountNoiseAugmenter, IdentityAugmenter, ValueNoiseAugmenter, resolve_auto
from .generative import load_generative_augmenter
from .neighbors import NeighborAugmenter


def make_augmenter(
    name: str,
    *,
    is_counts: bool,
    image_shape: tuple[int, int] | None,
    strength: float,
    augmenter_path: str | None = None,
    genes: list[str] | None = None,
    transform: str | None = None,
    likelihood: str = "gaussian",
    neighbor_steps: int | None = None,
    neighbor_ramp_steps: int | None = None,
    neighbor_components: int | None = None,
    n_arms: int,
) -> tuple[Augmenter, str]:
    """The augmenter for an option value and the name actually used ('auto' resolved by :func:`resolve_auto`
    from the image shape and the number of arms).

    ``genes`` and ``transform`` (the data's model genes and normalisation) are checked against a trained
    generative augmenter; it produces log-expression, so it needs the Gaussian likelihood.
    """
    if name == "auto":
        name = resolve_auto(image_shape, n_arms)
    if name == "none":
        return IdentityAugmenter(), name
    if name == "neighbors":
        if neighbor_steps is None:  # the default walk length of the data kind (config.py)
            neighbor_steps = NEIGHBOR_STEPS_EXPRESSION if image_shape is None else NEIGHBOR_STEPS_IMAGES
        walk = {"walk_steps": neighbor_steps}
        if neighbor_ramp_steps is not None:
            walk["ramp_steps"] = neighbor_ramp_steps
        if neighbor_components is not None:
            walk["components"] = neighbor_components
        return NeighborAugmenter(**walk), name
    if name == "noise":
        return (CountNoiseAugmenter(strength) if is_counts else ValueNoiseAugmenter(strength)), name
    if name == "affine":
        if image_shape is None:
            raise CplmixError("augment 'affine' needs image data (uns['image_shape'] is missing)")
        return AffineImageAugmenter(image_shape, strength), name
    if name == "generative":
        if not augmenter_path:
            raise CplmixError(
                "augment 'generative' needs a trained augmenter: run 'cplmix augmenter train DATA --out DIR' "
                "and pass --augmenter-path DIR"
            )
        if likelihood != "gaussian":
            raise CplmixError(
                "augment 'generative' produces log-expression, not counts: use it with the Gaussian likelihood"
            )
        return load_generative_augmenter(augmenter_path, genes=genes, transform=transform), name
    raise CplmixError(f"unknown augmentation '{name}' (auto, none, noise, neighbors, generative, affine)")


def augmenter_for(config, prepared, likelihood: str) -> tuple[Augmenter, str]:
    """The augmenter a training run with ``config`` uses on ``prepared`` data (what the engine calls; the
    run folder calls it too, to refuse a mismatched augmenter before anything is written)."""
    return make_augmenter(
        config.augment,
        is_counts=prepared.preprocessing.transform == "log1p_normalize",
        image_shape=prepared.preprocessing.image_shape,
        strength=config.augment_strength,
        augmenter_path=config.augmenter_path,
        genes=prepared.genes,
        transform=prepared.preprocessing.transform,
        likelihood=likelihood,
        neighbor_steps=config.neighbor_steps,
        neighbor_ramp_steps=config.neighbor_ramp_steps,
        neighbor_components=neighbor_components(config),
        n_arms=config.n_arms,
    )
