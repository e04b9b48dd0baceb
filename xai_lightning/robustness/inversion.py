"""Representation inversion (Mahendran & Vedaldi, CVPR 2015, "Understanding Deep Image
Representations by Inverting Them").

Find an image whose representation matches a target one:

    x* = argmin_x  ‖Φ(x) − Φ₀‖² / ‖Φ₀‖²  +  λ_α R_α(x)  +  λ_TV R_TV^β(x)

with the α-norm (α = 6) and total-variation (β = 2) regularisers of
:mod:`~xai_lightning.robustness.image_regularizers`, optimised by SGD with momentum 0.9 from a
random image, the learning rate annealed (cosine) to zero, and each iterate clipped to ``[0, 1]``.
Engstrom et al. (2019) show that a *robust* model's representation inverts to something close to
the original image, a standard model's to noise that merely shares its features.

The relative error makes the data term scale-free, but the gradient's size still depends on the
network; the learning rate is therefore applied to the gradient normalised per example to unit
RMS (``lr`` is then an RMS step in pixel values, so the default works across models). Set
``normalize_gradient=False`` for the plain SGD of the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from xai_lightning.core import batch_slices, observe
from xai_lightning.core.progress import progress
from xai_lightning.robustness.image_regularizers import alpha_norm, total_variation
from xai_lightning.robustness.representation import Representation

__all__ = ["InversionResult", "invert_representation"]


@dataclass(frozen=True)
class InversionResult:
    """Inverted images and how well they match.

    Attributes:
        images: ``(B, C, H, W)`` in ``[0, 1]``.
        representation_error: ``(B,)`` final ``‖Φ(x*) − Φ₀‖² / ‖Φ₀‖²``.
        loss_trace: ``(steps, B)`` the full objective at every step.
        layer: the inverted representation's layer name (``"logits"`` for the output).
    """

    images: torch.Tensor
    representation_error: torch.Tensor
    loss_trace: torch.Tensor
    layer: str


def _relative_error(representation: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    difference = (representation.float() - target.float()).flatten(1).square().sum(1)
    return difference / target.float().flatten(1).square().sum(1).clamp_min(1e-12)


def invert_representation(
    model: nn.Module,
    target_images: torch.Tensor | None = None,
    *,
    layer: str = "auto",
    target_representation: torch.Tensor | None = None,
    image_shape: tuple[int, int, int] | None = None,
    steps: int = 200,
    lr: float = 0.05,
    momentum: float = 0.9,
    alpha: float = 6.0,
    alpha_weight: float = 1e-3,
    tv_beta: float = 2.0,
    tv_weight: float = 0.5,
    normalize_gradient: bool = True,
    init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    output_key: str | int | None = None,
    max_batch: int | None = None,
    trainer: Any | None = None,
) -> InversionResult:
    """Invert ``Φ₀ = Φ(target_images)`` (or a given ``target_representation``) at ``layer``.

    Args:
        target_images: ``(B, C, H, W)`` in ``[0, 1]`` whose representation to invert.
        layer: dotted module name, ``"auto"`` or ``"logits"``.
        target_representation: ``Φ₀`` directly (then ``image_shape`` or ``init`` gives the size).
        steps, lr, momentum: SGD with momentum, cosine-annealed learning rate.
        alpha, alpha_weight, tv_beta, tv_weight: the regularisers (0 weight switches one off).
        normalize_gradient: scale each example's gradient to unit RMS before the SGD step.
        init: starting images ``(B, C, H, W)`` (default: grey plus uniform noise of ±0.1, drawn
            from ``generator`` or the global generator).
    """
    targets = target_images if target_images is not None else target_representation
    if targets is None:
        raise ValueError("Pass target_images or target_representation.")
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    reference = target_images if target_images is not None else init
    if reference is not None:
        shape = tuple(reference.shape[1:])
    elif image_shape is not None:
        shape = tuple(image_shape)
    else:
        raise ValueError("Inverting a given representation needs image_shape=(C, H, W) or init=.")
    device = (reference if reference is not None else targets).device
    batch = targets.shape[0]
    if init is None:
        init = 0.5 + 0.2 * (torch.rand((batch, *shape), generator=generator, device=device) - 0.5)
    if init.shape[0] != batch:
        raise ValueError(f"init has {init.shape[0]} images for {batch} targets.")

    images, errors, traces = [], [], []
    with observe(model, trainer=trainer) as guard:
        probe = guard.input(init[:1], requires_grad=False)
        phi = Representation(model, layer, probe=probe, output_key=output_key)
        for rows in batch_slices(batch, max_batch):
            with torch.no_grad():
                if target_representation is not None:
                    target = target_representation[rows].detach().to(device)
                else:
                    target = phi(guard.input(targets[rows], requires_grad=False)).detach()  # the target images
            x = guard.input(init[rows], requires_grad=False).float()
            velocity = torch.zeros_like(x)
            trace = []
            for step in progress(range(steps), "inverting the representation"):
                x.requires_grad_(True)
                loss = _relative_error(phi(x), target)
                if alpha_weight:
                    loss = loss + alpha_weight * alpha_norm(x, alpha)
                if tv_weight:
                    loss = loss + tv_weight * total_variation(x, tv_beta)
                (gradient,) = torch.autograd.grad(loss.sum(), x)
                trace.append(loss.detach())
                if normalize_gradient:
                    rms = gradient.flatten(1).square().mean(1).sqrt().view(-1, 1, 1, 1)
                    gradient = gradient / rms.clamp_min(1e-12)
                rate = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
                velocity = momentum * velocity + gradient
                x = (x.detach() - rate * velocity).clamp(0, 1)
            with torch.no_grad():
                errors.append(_relative_error(phi(x), target))
            images.append(x.detach())
            traces.append(torch.stack(trace))
    return InversionResult(torch.cat(images), torch.cat(errors), torch.cat(traces, dim=1), phi.name)
