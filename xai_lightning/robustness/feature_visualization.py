"""Feature visualisation by activation maximisation: the image that most excites a unit or direction.

Erhan et al. (2009) maximise a unit's activation by gradient ascent on the input; Olah et al.
(Distill 2017, "Feature Visualization") make the result interpretable with *transformation
robustness* (:mod:`~xai_lightning.robustness.random_transforms`) and a *decorrelated Fourier
parameterisation* (:mod:`~xai_lightning.robustness.fourier_image`), optimised with Adam
(lr 0.05, ~512 steps); Nguyen et al. (2016) instead search the code space of a generator trained
on the data (:mod:`~xai_lightning.robustness.vae`). Engstrom et al. (2019) show that a *robust*
model needs no prior at all to give recognisable visualisations.

What is maximised, per visualised image ``u`` with layer activations ``A_u``:

* a unit (channel ``k``): the spatial mean of ``A_u[k]`` (or the logit ``k`` for ``layer="logits"``);
* a direction ``d`` with one entry per channel: the spatial mean of ``Σ_c d_c A_u[c]``;
* a direction with one entry per activation (e.g. a CAV trained on flattened activations, Kim et
  al. 2018): ``⟨flatten(A_u), d⟩``.

Priors (``prior=``):

* ``"none"``: pixels through a sigmoid, nothing else;
* ``"tv"``: the same plus ``tv_weight`` × total variation (β = 2);
* ``"fourier"``: the decorrelated Fourier parameterisation;
* ``"generator"``: ``x = vae.decode(z)``, optimising the code ``z`` (Nguyen et al.'s DGN). The
  ascent starts from the best of ``code_samples`` draws of the VAE's prior ``N(0, I)`` (judged by
  the objective, in one batched pass). A start at the mean code, whose image is the blurry mean
  image, leaves some units dead (zero activation, zero gradient), and a single random draw can
  start in a dead region or below a poor local maximum: on three trained SmallCNNs, both of these
  ended below the best of 64 random codes on some units (one unit stuck at zero), the best-of-64
  start on none, and 1.5–2.2× above it in geometric mean over 8 units. Optional Gaussian code
  penalty ``code_weight · ½‖z‖²`` (default 0); each code is clipped to the ball of radius
  ``code_radius · √d`` after every step, so that it stays where the Gaussian prior puts its mass
  (DGN clips codes to the range seen in training for the same reason; a strong penalty instead
  pins the code at the grey mean image).

All visualisations of one call are optimised together as one batch (every image has its own
parameters; Adam is per-coordinate, so they do not interact), in eval mode inside the observer
guard.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from xai_lightning.core import batch_slices, observe
from xai_lightning.core.progress import progress
from xai_lightning.robustness.fourier_image import FourierImage
from xai_lightning.robustness.image_regularizers import total_variation
from xai_lightning.robustness.random_transforms import random_affine
from xai_lightning.robustness.representation import LOGITS, Representation
from xai_lightning.robustness.vae import ConvVAE

__all__ = ["FeatureVisualization", "PRIORS", "direction_objective", "visualize_features"]

Prior = Literal["none", "tv", "fourier", "generator"]
PRIORS: tuple[str, ...] = ("none", "tv", "fourier", "generator")


@dataclass(frozen=True)
class FeatureVisualization:
    """Visualisations of ``U`` units or directions.

    Attributes:
        images: ``(U, C, H, W)`` in ``[0, 1]``.
        activation: ``(U,)`` the objective at the final images, without transforms.
        objective_trace: ``(steps, U)`` the objective (under the random transforms) at every step.
        layer: the visualised layer (``"logits"`` for the output).
        prior: the prior used.
        units: the unit indices, or None for directions.
    """

    images: torch.Tensor
    activation: torch.Tensor
    objective_trace: torch.Tensor
    layer: str
    prior: str
    units: tuple[int, ...] | None


def direction_objective(activations: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """``(U,)`` objective of activations ``(U, C, h, w)`` or ``(U, C)`` along ``directions``.

    ``directions`` is ``(U, C)`` (per channel; spatially averaged) or ``(U, C·h·w)`` (per activation).
    """
    flat = activations.flatten(1)
    channels = activations.shape[1]
    if directions.shape[1] == channels:
        if activations.dim() == 2:
            return (activations.float() * directions).sum(1)
        return torch.einsum("uc...,uc->u", activations.float(), directions) / activations[0, 0].numel()
    if directions.shape[1] == flat.shape[1]:
        return (flat.float() * directions).sum(1)
    raise ValueError(
        f"A direction needs one entry per channel ({channels}) or per activation ({flat.shape[1]}) of the layer's "
        f"output {tuple(activations.shape[1:])}; got {directions.shape[1]}."
    )


class _PixelImage(nn.Module):
    def __init__(self, shape: tuple[int, ...], generator: torch.Generator | None, device: Any) -> None:
        super().__init__()
        self.logits = nn.Parameter((torch.randn(shape, generator=generator) * 0.01).to(device))

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)


class _GeneratorImage(nn.Module):
    """Images ``vae.decode(codes)``, one code per visualisation, started at the best of ``samples``
    prior draws for its objective."""

    def __init__(
        self,
        vae: ConvVAE,
        objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        targets: torch.Tensor,
        samples: int,
        radius: float,
        generator: torch.Generator | None,
        device: Any,
        max_batch: int | None,
    ) -> None:
        super().__init__()
        self.vae = vae
        count, dim = targets.shape[0], vae.latent_dim
        candidates = torch.randn((count, samples, dim), generator=generator).to(device).flatten(0, 1)
        repeated = targets.repeat_interleave(samples, dim=0)
        scores = []
        with torch.no_grad():
            for rows in batch_slices(candidates.shape[0], max_batch):
                scores.append(objective(vae.decode(candidates[rows]), repeated[rows]))
        best = torch.cat(scores).view(count, samples).argmax(1)
        codes = candidates.view(count, samples, dim)[torch.arange(count, device=device), best]
        self.codes = nn.Parameter(codes.clone())
        self.clip(radius)

    def clip(self, radius: float) -> None:
        """Project each code onto the ball of radius ``radius · √d`` (no-op for radius 0)."""
        if not radius:
            return
        with torch.no_grad():
            limit = radius * self.codes.shape[1] ** 0.5
            length = self.codes.norm(dim=1, keepdim=True)
            self.codes.mul_(torch.where(length > limit, limit / length.clamp_min(1e-12), 1.0))

    def forward(self) -> torch.Tensor:
        return self.vae.decode(self.codes)


def _directions_for(
    units: int | Sequence[int] | None, directions: torch.Tensor | None, channels: int, layer: str
) -> tuple[torch.Tensor, tuple[int, ...] | None]:
    if directions is not None:
        if units is not None:
            raise ValueError("Pass units or directions, not both.")
        directions = directions.detach().float()
        return (directions.unsqueeze(0) if directions.dim() == 1 else directions.flatten(1)), None
    if units is None:
        units = list(range(channels if layer == LOGITS else min(channels, 8)))
    units = [units] if isinstance(units, int) else [int(u) for u in units]
    if not units:
        raise ValueError("No units to visualise.")
    bad = [u for u in units if not 0 <= u < channels]
    if bad:
        raise ValueError(
            f"Units {bad} are out of range: layer {layer!r} has {channels} units (valid 0..{channels - 1})."
        )
    return torch.eye(channels)[units], tuple(units)


def visualize_features(
    model: nn.Module,
    layer: str = LOGITS,
    units: int | Sequence[int] | None = None,
    directions: torch.Tensor | None = None,
    *,
    prior: Prior = "fourier",
    image_shape: tuple[int, int, int] = (3, 32, 32),
    steps: int = 512,
    lr: float = 0.05,
    transforms: bool = True,
    jitter: float = 2.0,
    scale: tuple[float, float] = (0.95, 1.05),
    degrees: float = 10.0,
    tv_weight: float = 1.0,
    colour_sqrt: torch.Tensor | None = None,
    decay_power: float = 1.0,
    vae: ConvVAE | None = None,
    code_weight: float = 0.0,
    code_radius: float = 1.5,
    code_samples: int = 64,
    generator: torch.Generator | None = None,
    output_key: str | int | None = None,
    max_batch: int | None = None,
    trainer: Any | None = None,
    device: torch.device | str | None = None,
) -> FeatureVisualization:
    """Maximise ``units`` (channel indices or class indices) or ``directions`` of ``layer``.

    Args:
        layer: dotted module name, ``"auto"``, or ``"logits"`` (default: visualise classes).
        units: indices to visualise (default: every class for ``"logits"``, else the first 8 channels).
        directions: ``(C,)``/``(U, C)`` per-channel or ``(C·h·w,)``/``(U, C·h·w)`` per-activation
            directions, e.g. CAVs (instead of ``units``).
        prior: ``"none"``, ``"tv"``, ``"fourier"`` or ``"generator"`` (needs ``vae``).
        image_shape: ``(C, H, W)`` of the images.
        steps, lr: Adam steps and learning rate (Olah et al.: 512 and 0.05).
        transforms, jitter, scale, degrees: random jitter/scale/rotation at every step.
        tv_weight: weight of total variation for ``prior="tv"``.
        colour_sqrt, decay_power: options of the Fourier parameterisation.
        vae, code_weight, code_radius: the generator, the weight of the Gaussian code penalty, and
            the clipping radius of the codes in units of ``√latent_dim``.
        code_samples: prior draws per visualisation that the generator prior's start is the best of.
        generator: draws initial parameters and transforms (None: the global generator).
    """
    if prior not in PRIORS:
        raise ValueError(f"Unknown prior {prior!r}; use one of {list(PRIORS)}.")
    if prior == "generator" and vae is None:
        raise ValueError("prior='generator' needs a trained generator: vae=train_vae(images).")
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    if code_samples < 1:
        raise ValueError(f"code_samples must be >= 1; got {code_samples}")
    if device is None:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
    channels_in, height, width = image_shape
    if (
        vae is not None
        and prior == "generator"
        and (vae.channels, vae.image_size, vae.image_size) != tuple(image_shape)
    ):
        raise ValueError(
            f"The generator makes {(vae.channels, vae.image_size, vae.image_size)} images but image_shape is "
            f"{tuple(image_shape)}."
        )

    with contextlib.ExitStack() as stack:
        stack.enter_context(observe(model, trainer=trainer))
        if prior == "generator":
            assert vae is not None  # checked above: the generator prior needs a vae
            stack.enter_context(observe(vae))
        grey = torch.full((1, *image_shape), 0.5, device=device)
        phi = Representation(model, layer, probe=grey, output_key=output_key)
        with torch.no_grad():
            probe_activation = phi(grey)
        all_directions, unit_tuple = _directions_for(units, directions, probe_activation.shape[1], phi.name)
        direction_objective(probe_activation.expand(1, *probe_activation.shape[1:]), all_directions[:1].to(device))
        images, activations, traces = [], [], []
        for rows in batch_slices(all_directions.shape[0], max_batch):
            targets = all_directions[rows].to(device)
            count = targets.shape[0]
            image: FourierImage | _GeneratorImage | _PixelImage
            if prior == "fourier":
                image = FourierImage(
                    count,
                    channels_in,
                    height,
                    width,
                    decay_power=decay_power,
                    colour_sqrt=colour_sqrt,
                    generator=generator,
                    device=device,
                )
            elif prior == "generator":
                assert vae is not None  # checked above: the generator prior needs a vae
                image = _GeneratorImage(
                    vae,
                    lambda x, d: direction_objective(phi(x), d),
                    targets,
                    code_samples,
                    code_radius,
                    generator,
                    device,
                    max_batch,
                )
            else:
                image = _PixelImage((count, *image_shape), generator, device)
            parameters = [p for name, p in image.named_parameters() if not name.startswith("vae.")]
            optimizer = torch.optim.Adam(parameters, lr=lr)
            trace = []
            for _ in progress(range(steps), "visualising features"):
                x = image()
                seen = (
                    random_affine(x, jitter=jitter, scale=scale, degrees=degrees, generator=generator)
                    if transforms
                    else x
                )
                objective = direction_objective(phi(seen), targets)
                loss = -objective.sum()
                if prior == "tv" and tv_weight:
                    loss = loss + tv_weight * total_variation(x).sum()
                if isinstance(image, _GeneratorImage) and code_weight:  # the generator prior
                    loss = loss + code_weight * 0.5 * image.codes.square().sum()
                gradients = torch.autograd.grad(loss, parameters)
                for parameter, gradient in zip(parameters, gradients):
                    parameter.grad = gradient
                optimizer.step()
                if isinstance(image, _GeneratorImage):  # the generator prior
                    image.clip(code_radius)
                trace.append(objective.detach())
            with torch.no_grad():
                final = image().detach()
                activations.append(direction_objective(phi(final), targets))
            images.append(final)
            traces.append(torch.stack(trace))
    return FeatureVisualization(
        images=torch.cat(images),
        activation=torch.cat(activations),
        objective_trace=torch.cat(traces, dim=1),
        layer=phi.name,
        prior=prior,
        units=unit_tuple,
    )
