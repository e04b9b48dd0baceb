"""TRADES (Zhang et al., ICML 2019, "Theoretically Principled Trade-off between Robustness and
Accuracy").

The training loss is

    L = CE(f(x), y) + β · KL( softmax f(x) ‖ softmax f(x') ),       x' = argmax_{‖x'−x‖≤ε} KL(f(x) ‖ f(x'))

with β = 6, ε = 0.031 (L∞), step 0.007 and 10 steps (REFERENCE.md). The inner maximisation starts
from ``x + 0.001·N(0, I)`` (as the authors' code does), takes PGD steps on the KL against the
*fixed* clean prediction, and keeps the last iterate. It runs in eval mode inside the observer
guard; the outer loss is computed by the training step, in train mode, from both forward passes.

A callback cannot add a second forward pass to somebody else's ``training_step``, so adversarial
training with TRADES needs the LightningModule's cooperation; :class:`TradesBatch` is the
protocol: the callback sets ``module.trades_batch`` before each step, and the module's
``training_step`` returns ``module.trades_batch.loss(clean_logits, module(module.trades_batch.inputs),
labels)`` when it is set (``ImageClassifier`` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xai_lightning.core import observe, select_logits
from xai_lightning.robustness.norm_ball import Norm, check_eps, check_norm
from xai_lightning.robustness.projected_gradient_descent import AttackResult, pgd

__all__ = ["TradesBatch", "trades_adversarial", "trades_kl", "trades_loss"]

#: Scale of the Gaussian start of the inner maximisation (TRADES' code).
START_SCALE = 0.001


def trades_kl(clean_logits: torch.Tensor, adversarial_logits: torch.Tensor) -> torch.Tensor:
    """``(B,)`` KL(softmax(clean) ‖ softmax(adversarial)) per example."""
    clean_log_p = F.log_softmax(clean_logits.float(), dim=1)
    adversarial_log_p = F.log_softmax(adversarial_logits.float(), dim=1)
    return (clean_log_p.exp() * (clean_log_p - adversarial_log_p)).sum(1)


def trades_loss(
    clean_logits: torch.Tensor, adversarial_logits: torch.Tensor, labels: torch.Tensor, beta: float = 6.0
) -> torch.Tensor:
    """The TRADES objective: mean CE(clean, y) + β · mean KL(clean ‖ adversarial) (a scalar).

    Gradients flow through both logits, as in the paper (the clean distribution is not detached).
    """
    natural = F.cross_entropy(clean_logits.float(), labels)
    return natural + beta * trades_kl(clean_logits, adversarial_logits).mean()


def trades_adversarial(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    norm: Norm = "linf",
    eps: float = 0.031,
    steps: int = 10,
    step_size: float | None = 0.007,
    keep_worst: bool = False,
    generator: torch.Generator | None = None,
    output_key: str | int | None = None,
    max_batch: int | None = None,
    trainer: Any | None = None,
) -> AttackResult:
    """The inner maximisation of TRADES: ``x'`` maximising KL(f(x) ‖ f(x')) in the ε-ball.

    ``result.loss`` is the KL at ``x'``; ``result.targets`` the clean probabilities.
    ``step_size=None`` uses PGD's ``2.5·eps/steps``.
    """
    norm = check_norm(norm)
    eps = check_eps(eps)
    with observe(model, trainer=trainer) as guard, torch.no_grad():
        clean_logits = select_logits(model(guard.input(inputs, requires_grad=False)), output_key)
    clean_probabilities = clean_logits.float().softmax(1)
    start = START_SCALE * torch.randn(inputs.shape, generator=generator, device=inputs.device, dtype=inputs.dtype)

    def kl_to_clean(logits: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        log_p = probabilities.clamp_min(1e-30).log()
        return (probabilities * (log_p - F.log_softmax(logits.float(), dim=1))).sum(1)

    return pgd(
        model,
        inputs,
        clean_probabilities,
        norm=norm,
        eps=eps,
        steps=steps,
        step_size=step_size,
        start=start,
        keep_worst=keep_worst,
        objective=kl_to_clean,
        output_key=output_key,
        max_batch=max_batch,
        trainer=trainer,
    )


@dataclass
class TradesBatch:
    """What :class:`~xai_lightning.AdversarialTrainingCallback` hands a module for one TRADES step.

    Attributes:
        inputs: ``(B, C, H, W)`` the adversarial inputs ``x'`` (in the loader's input space).
        beta: the TRADES trade-off β.
        consumed: set by :meth:`loss`; the callback checks it to catch modules that ignore TRADES.
    """

    inputs: torch.Tensor
    beta: float = 6.0
    consumed: bool = False

    def loss(self, clean_logits: torch.Tensor, adversarial_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """:func:`trades_loss` for this batch; call it from ``training_step``."""
        self.consumed = True
        return trades_loss(clean_logits, adversarial_logits, labels, self.beta)
