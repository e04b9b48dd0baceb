"""Large-ε targeted attacks: morph an image towards another class.

Tsipras et al. (2019) and Santurkar et al. (NeurIPS 2019, "Image Synthesis with a Single (Robust)
Classifier") take targeted L2 PGD steps with a budget far beyond the robustness radius. Against a
standard model the image barely changes (imperceptible noise suffices); against a robust model
the image acquires the *features* of the target class — perceptually aligned gradients made
visible. Santurkar et al. use ε = 40 at 224×224 ImageNet, an RMS change of about 0.1 per pixel
value; the default here keeps that ratio at any resolution: ``ε = 0.1·√d``, ``d = C·H·W``
(ε ≈ 5.5 at 32×32 RGB), with 60 steps of ``2.5·ε/steps``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from xai_lightning.robustness.norm_ball import Norm
from xai_lightning.robustness.projected_gradient_descent import AttackResult, pgd

__all__ = ["default_morph_eps", "morph_to_every_class", "targeted_morph"]

#: RMS pixel change of the default budget (Santurkar et al.'s ε = 40 at 3×224×224).
MORPH_RMS = 0.1


def default_morph_eps(image_shape: tuple[int, ...] | torch.Size) -> float:
    """``0.1·√(C·H·W)`` for one image of ``image_shape`` ``(C, H, W)``."""
    return MORPH_RMS * math.sqrt(math.prod(image_shape))


def targeted_morph(
    model: nn.Module,
    inputs: torch.Tensor,
    target_classes: torch.Tensor,
    *,
    eps: float | None = None,
    steps: int = 60,
    step_size: float | None = None,
    norm: Norm = "l2",
    output_key: str | int | None = None,
    max_batch: int | None = None,
    trainer: Any | None = None,
) -> AttackResult:
    """Targeted PGD from ``inputs (B, C, H, W)`` towards ``target_classes (B,)`` with a large budget.

    Starts at the image itself (no random start) and keeps the iterate closest to the target
    (lowest cross-entropy towards it). ``result.success`` says which images are now classified as
    their target.
    """
    eps = default_morph_eps(inputs.shape[1:]) if eps is None else eps
    return pgd(
        model,
        inputs,
        torch.as_tensor(target_classes, device=inputs.device).long(),
        norm=norm,
        eps=eps,
        steps=steps,
        step_size=step_size,
        random_start=False,
        targeted=True,
        output_key=output_key,
        max_batch=max_batch,
        trainer=trainer,
    )


def morph_to_every_class(
    model: nn.Module,
    inputs: torch.Tensor,
    num_classes: int,
    **options: Any,
) -> tuple[torch.Tensor, AttackResult]:
    """Morph each of ``B`` images towards each of ``K`` classes in one batched attack.

    Returns ``(images (B, K, C, H, W), result)`` where ``result`` covers the ``B·K`` pairs in
    image-major order (pair ``i·K + k`` is image ``i`` towards class ``k``). Morphing towards the
    image's own class keeps it near the original.
    """
    batch = inputs.shape[0]
    repeated = inputs.repeat_interleave(num_classes, dim=0)
    classes = torch.arange(num_classes, device=inputs.device).repeat(batch)
    result = targeted_morph(model, repeated, classes, **options)
    return result.adversarial.view(batch, num_classes, *inputs.shape[1:]), result
