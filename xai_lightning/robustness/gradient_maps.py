"""Perceptually aligned gradients: input gradients of the loss, and how much of them lies on the object.

Tsipras et al. (ICLR 2019, "Robustness May Be at Odds with Accuracy") and Engstrom et al. (2019,
"Adversarial Robustness as a Prior for Learned Representations") observe that the loss gradient
``∇ₓ CE(f(x), y)`` of an adversarially trained model looks like the object — edges and shape —
while a standard model's gradient is high-frequency noise spread over the image. ConceptWorld
knows where the object is, which turns the observation into a number:

    gradient energy    e_ij = Σ_c (∂L/∂x_cij)²                        (B, H, W)
    object energy      Σ_{ij ∈ object} e_ij / Σ_ij e_ij               (B,)  ∈ [0, 1]

(:func:`~xai_lightning.evaluation.energy_in_mask` of the energy map). A map spread uniformly
scores the object's area fraction, the baseline to beat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from xai_lightning.core import TargetSpec, batch_slices, observe, resolve_targets, select_logits
from xai_lightning.evaluation import energy_in_mask

__all__ = ["GradientMaps", "gradient_energy", "gradient_images", "gradient_object_energy", "loss_gradients"]


@dataclass(frozen=True)
class GradientMaps:
    """Loss gradients of ``B`` images.

    Attributes:
        gradients: ``(B, C, H, W)`` ∂L/∂x.
        logits: ``(B, K)`` at the clean images.
        targets: ``(B,)`` the classes whose loss was differentiated.
    """

    gradients: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor

    @property
    def energy(self) -> torch.Tensor:
        """``(B, H, W)`` gradient energy per pixel."""
        return gradient_energy(self.gradients)


def loss_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    target: TargetSpec = "label",
    *,
    labels: torch.Tensor | None = None,
    loss: Literal["ce", "logit"] = "ce",
    output_key: str | int | None = None,
    max_batch: int | None = None,
    trainer: Any | None = None,
) -> GradientMaps:
    """``∇ₓ`` of the cross-entropy (``loss="ce"``) or of the target logit (``"logit"``), ``(B, C, H, W)``.

    Computed in eval mode inside the observer guard, with ``torch.autograd.grad``.
    """
    if loss not in ("ce", "logit"):
        raise ValueError(f"loss must be 'ce' or 'logit'; got {loss!r}")
    gradients, logits_parts, target_parts = [], [], []
    with observe(model, trainer=trainer) as guard:
        for rows in batch_slices(inputs.shape[0], max_batch):
            x = guard.input(inputs[rows])
            logits = select_logits(model(x), output_key)
            targets = resolve_targets(target, logits, None if labels is None else labels[rows])
            if loss == "ce":
                score = F.cross_entropy(logits.float(), targets, reduction="sum")
            else:
                score = logits.gather(1, targets.view(-1, 1)).sum()
            (gradient,) = torch.autograd.grad(score, x)
            gradients.append(gradient.detach())
            logits_parts.append(logits.detach().float())
            target_parts.append(targets)
    return GradientMaps(torch.cat(gradients), torch.cat(logits_parts), torch.cat(target_parts))


def gradient_energy(gradients: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, H, W)``: squared gradient summed over channels."""
    if gradients.dim() != 4:
        raise ValueError(f"Expected gradients (B, C, H, W); got {tuple(gradients.shape)}")
    return gradients.float().square().sum(1)


def gradient_object_energy(gradients: torch.Tensor, object_masks: torch.Tensor) -> torch.Tensor:
    """``(B,)`` fraction of each image's gradient energy on its object (NaN for a zero gradient)."""
    return energy_in_mask(gradient_energy(gradients), object_masks.bool())


def gradient_images(gradients: torch.Tensor, clip_std: float = 3.0) -> torch.Tensor:
    """Signed gradients as displayable images in ``[0, 1]``, ``(B, C, H, W)``.

    Grey (0.5) is zero; each image is scaled by ``clip_std`` of its own standard deviation and
    clipped, the way Tsipras et al. and Engstrom et al. show gradients.
    """
    g = gradients.detach().float()
    spread = g.flatten(1).std(1).view(-1, 1, 1, 1).clamp_min(1e-12)
    return (0.5 + g / (2 * clip_std * spread)).clamp(0, 1)
