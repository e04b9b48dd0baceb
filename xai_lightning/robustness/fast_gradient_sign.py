"""The fast gradient sign method (Goodfellow, Shlens & Szegedy, ICLR 2015, "Explaining and
Harnessing Adversarial Examples").

One step of size ε along the sign of the input gradient of the loss, clipped to ``[0, 1]``:

    x' = clip_[0,1]( x + ε · sign(∇ₓ L(f(x), y)) )          (targeted: x − ε · sign(∇ₓ L(f(x), t)))

With ``norm="l2"`` the step is ``ε · g/‖g‖₂`` (the "fast gradient method" of Goodfellow et al.'s L2
variant). FGSM is PGD with one step of size ε, no random start and the last iterate, and runs
inside the observer guard the same way (:mod:`xai_lightning.robustness.projected_gradient_descent`). It matches Captum's
``captum.robust.FGSM`` (tested) except for gradient coordinates below Captum's 1e-6 threshold.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xai_lightning.robustness.norm_ball import Norm, check_eps, check_norm
from xai_lightning.robustness.projected_gradient_descent import AttackResult, pgd

__all__ = ["FGSM", "fgsm"]


def fgsm(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    eps: float = 8 / 255,
    norm: Norm = "linf",
    targeted: bool = False,
    output_key: str | int | None = None,
    max_batch: int | None = None,
    trainer: Any | None = None,
) -> AttackResult:
    """FGSM on ``inputs (B, C, H, W)`` in ``[0, 1]``; see the module docstring."""
    return pgd(
        model,
        inputs,
        targets,
        norm=norm,
        eps=eps,
        steps=1,
        step_size=eps,
        random_start=False,
        targeted=targeted,
        keep_worst=False,
        output_key=output_key,
        max_batch=max_batch,
        trainer=trainer,
    )


class FGSM:
    """FGSM as a method object: ``FGSM(eps=8/255).perturb(model, images, labels)``."""

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: Norm = "linf",
        output_key: str | int | None = None,
        max_batch: int | None = None,
    ) -> None:
        self.eps = check_eps(eps)
        self.norm = check_norm(norm)
        self.output_key = output_key
        self.max_batch = max_batch

    def perturb(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        targeted: bool = False,
        trainer: Any | None = None,
    ) -> AttackResult:
        return fgsm(
            model,
            inputs,
            targets,
            eps=self.eps,
            norm=self.norm,
            targeted=targeted,
            output_key=self.output_key,
            max_batch=self.max_batch,
            trainer=trainer,
        )
