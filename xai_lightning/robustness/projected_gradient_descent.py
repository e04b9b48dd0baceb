"""Projected gradient descent (Madry et al., ICLR 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks").

Starting from a random point of the ε-ball around ``x`` (uniform; Madry's random start), PGD
repeats ``steps`` times

    x ← clip_[0,1]( x + α · d(∇ₓ L(f(x), y)) )            d = sign (L∞) or g/‖g‖₂ (L2)
    x ← clip_[0,1]( x₀ + Π_ε(x − x₀) )                     projection onto the ε-ball

and returns, per example, the *worst* iterate seen (the one with the highest loss, or for a
targeted attack the lowest loss towards the target) — the last iterate is not always the worst
with a fixed step size. Defaults follow REFERENCE.md: L∞ ε = 8/255, L2 ε = 0.5, step size
α = 2.5·ε/steps (= 2/255 for L∞ with 10 steps), 10 steps (robust evaluation uses 20).

Attacks run in ``[0, 1]`` pixel space with the model's normalisation inside the model, in eval
mode, inside :func:`~xai_lightning.core.observe` (each submodule's ``training`` flag restored
afterwards, BatchNorm running statistics untouched, parameters' ``.grad`` never written: gradients
come from ``torch.autograd.grad`` with respect to the input only). Examples are attacked in
slices of ``max_batch`` rows; the random start is drawn for the whole batch first, so results do
not depend on ``max_batch``.

Relation to Captum's ``captum.robust.PGD`` (tested): for L∞ with the same seed, random start,
step size and steps, and ``keep_worst=False``, both give the same adversarial images (Captum keeps
the last iterate and does not move coordinates whose gradient is below 1e-6 in magnitude, we do
unless it is exactly 0). Captum's ``norm="L2"`` takes *sign* steps and only projects onto the L2
ball; we take normalised-gradient steps as Madry et al. do, so only the L2 random start (same
draws) and projection are comparable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from xai_lightning.core import batch_slices, observe, select_logits
from xai_lightning.robustness.norm_ball import (
    Norm,
    check_eps,
    check_norm,
    perturbation_norm,
    project,
    random_point,
    steepest_direction,
)

__all__ = ["AttackResult", "PGD", "default_eps", "default_step_size", "pgd"]

#: A per-example objective ``(logits (B, K), targets (B, ...)) -> (B,)`` that the attack maximises
#: (untargeted) or minimises (targeted).
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DEFAULT_EPS: dict[str, float] = {"linf": 8 / 255, "l2": 0.5}


def default_eps(norm: Norm) -> float:
    """Madry et al.'s CIFAR budgets: 8/255 for L∞, 0.5 for L2."""
    return DEFAULT_EPS[check_norm(norm)]


def default_step_size(eps: float, steps: int) -> float:
    """``2.5·ε/steps``: enough to cross the ball from the random start, as in Madry et al."""
    return 2.5 * eps / max(steps, 1)


def cross_entropy_per_example(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, reduction="none")


@dataclass(frozen=True)
class AttackResult:
    """What an attack returns for ``B`` examples.

    Attributes:
        adversarial: ``(B, C, H, W)`` the adversarial images, in the box and the ε-ball.
        perturbation: ``adversarial − inputs``.
        loss: ``(B,)`` objective at ``adversarial`` (cross-entropy towards the labels, or towards the
            target classes for a targeted attack).
        logits: ``(B, K)`` model output at ``adversarial``.
        loss_trace: ``(steps + 1, B)`` objective at every iterate ``x₀ … x_T``.
        targets: the labels (untargeted) or target classes (targeted) attacked, or the objective's
            targets (e.g. clean probabilities for TRADES).
        targeted: whether the attack moved towards ``targets``.
        norm, eps: the threat model.
    """

    adversarial: torch.Tensor
    perturbation: torch.Tensor
    loss: torch.Tensor
    logits: torch.Tensor
    loss_trace: torch.Tensor
    targets: torch.Tensor
    targeted: bool
    norm: Norm
    eps: float

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(1)

    @property
    def success(self) -> torch.Tensor:
        """``(B,)`` bool: misclassified (untargeted) or classified as the target (targeted)."""
        if self.targets.dim() != 1 or self.targets.is_floating_point():
            raise ValueError("success needs class-index targets; this attack used a custom objective.")
        hit = self.predictions == self.targets.to(self.predictions.device)
        return hit if self.targeted else ~hit

    @property
    def perturbation_norm(self) -> torch.Tensor:
        """``(B,)`` size of each perturbation in the attack's norm (≤ ε)."""
        return perturbation_norm(self.perturbation, self.norm)


def pgd(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    norm: Norm = "linf",
    eps: float | None = None,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    targeted: bool = False,
    keep_worst: bool = True,
    objective: Objective | Literal["ce"] = "ce",
    start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    output_key: str | int | None = None,
    max_batch: int | None = None,
    trainer: Any | None = None,
) -> AttackResult:
    """PGD on ``inputs (B, C, H, W)`` in ``bounds`` (pixels in ``[0, 1]``).

    Args:
        model: returns logits (or a dict/tuple holding them: ``output_key``).
        targets: ``(B,)`` labels (untargeted) or target classes (``targeted=True``); for a custom
            ``objective`` whatever it takes as its second argument, sliced along dim 0.
        norm: ``"linf"`` or ``"l2"``.
        eps: radius (default 8/255 for L∞, 0.5 for L2).
        steps: gradient steps (0: just the start point).
        step_size: α (default ``2.5·eps/steps``).
        random_start: start from a uniform point of the ball instead of ``inputs``.
        targeted: move towards ``targets`` (minimise the objective) instead of away from them.
        keep_worst: return each example's worst iterate (default) instead of the last one.
        objective: ``"ce"`` (cross-entropy) or a per-example function ``(logits, targets) -> (B,)``.
        start: explicit starting perturbation ``(B, C, H, W)`` (overrides ``random_start``); it is
            projected onto the ball and the box.
        generator: draws the random start (None: the global generator, which advances as
            ``torch.rand`` would; the attack itself consumes no randomness).
        max_batch: examples per forward/backward pass.
        trainer: a Lightning trainer, for its precision context.
    """
    norm = check_norm(norm)
    eps = check_eps(default_eps(norm) if eps is None else eps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0; got {steps}")
    step_size = default_step_size(eps, steps) if step_size is None else float(step_size)
    if step_size <= 0:
        raise ValueError(f"step_size must be positive; got {step_size}")
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"Got {targets.shape[0]} targets for {inputs.shape[0]} inputs.")
    low, high = bounds
    loss_fn: Objective = cross_entropy_per_example if objective == "ce" else objective
    if start is not None:
        if start.shape != inputs.shape:
            raise ValueError(f"start {tuple(start.shape)} must have the inputs' shape {tuple(inputs.shape)}")
        initial = start.detach()
    elif random_start:
        initial = random_point(inputs.shape, norm, eps, generator=generator, device=inputs.device, dtype=inputs.dtype)
    else:
        initial = None

    adversarial: list[torch.Tensor] = []
    losses: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    traces: list[torch.Tensor] = []
    with observe(model, trainer=trainer) as guard:
        clean = guard.input(inputs, requires_grad=False)
        all_targets = targets.detach().clone()
        for rows in batch_slices(clean.shape[0], max_batch):
            x0 = clean[rows]
            target = all_targets[rows].to(x0.device)
            delta = None if initial is None else initial[rows].to(x0.device, x0.dtype)
            result = _attack_slice(
                model,
                x0,
                target,
                delta,
                norm=norm,
                eps=eps,
                steps=steps,
                step_size=step_size,
                targeted=targeted,
                keep_worst=keep_worst,
                loss_fn=loss_fn,
                low=low,
                high=high,
                output_key=output_key,
                start_in_ball=start is None,
            )
            for store, value in zip((adversarial, losses, logits, traces), result):
                store.append(value)
    adversarial_images = torch.cat(adversarial)
    return AttackResult(
        adversarial=adversarial_images,
        perturbation=adversarial_images - clean,
        loss=torch.cat(losses),
        logits=torch.cat(logits),
        loss_trace=torch.cat(traces, dim=1),
        targets=all_targets,
        targeted=targeted,
        norm=norm,
        eps=eps,
    )


def _attack_slice(
    model: nn.Module,
    x0: torch.Tensor,
    target: torch.Tensor,
    delta: torch.Tensor | None,
    *,
    norm: Norm,
    eps: float,
    steps: int,
    step_size: float,
    targeted: bool,
    keep_worst: bool,
    loss_fn: Objective,
    low: float,
    high: float,
    output_key: str | int | None,
    start_in_ball: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One slice of PGD; returns (adversarial, loss, logits, loss trace (steps + 1, b))."""
    x = x0.clone()
    if delta is not None:
        x = (x0 + delta).clamp(low, high)
        if not start_in_ball:
            x = (x0 + project(x - x0, norm, eps)).clamp(low, high)
    sign = -1.0 if targeted else 1.0
    trace = []
    best_x = best_logits = best_loss = best_score = None

    def record(x_t: torch.Tensor, logits_t: torch.Tensor, loss_t: torch.Tensor) -> None:
        nonlocal best_x, best_logits, best_loss, best_score
        loss_t, logits_t = loss_t.detach().float(), logits_t.detach().float()
        trace.append(loss_t)
        score = sign * loss_t
        if best_score is None or not keep_worst:
            best_x, best_logits, best_loss, best_score = x_t.detach().clone(), logits_t, loss_t, score
            return
        better = score > best_score
        row_mask = better.view(-1, *([1] * (x_t.dim() - 1)))
        best_x = torch.where(row_mask, x_t.detach(), best_x)
        best_logits = torch.where(better.view(-1, 1), logits_t, best_logits)
        best_loss = torch.where(better, loss_t, best_loss)
        best_score = torch.where(better, score, best_score)

    for _ in range(steps):
        x.requires_grad_(True)
        logits = select_logits(model(x), output_key)
        loss = loss_fn(logits, target)
        record(x, logits, loss)
        (gradient,) = torch.autograd.grad((sign * loss).sum(), x)
        # Step, project onto the ball, clip to the box (the order of Captum and of Madry's code).
        x = x.detach() + step_size * steepest_direction(gradient, norm)
        x = (x0 + project(x - x0, norm, eps)).clamp(low, high)
    with torch.no_grad():
        logits = select_logits(model(x), output_key)
        record(x, logits, loss_fn(logits, target))
    assert best_x is not None and best_loss is not None and best_logits is not None  # record() ran just above
    return best_x, best_loss, best_logits, torch.stack(trace)


class PGD:
    """PGD as a method object (configure once, ``perturb`` per batch; Captum style).

    Example::

        attack = PGD(norm="l2", eps=0.5, steps=20)
        result = attack.perturb(model, images, labels)
        robust_accuracy = (~result.success).float().mean()
    """

    def __init__(
        self,
        norm: Norm = "linf",
        eps: float | None = None,
        steps: int = 10,
        step_size: float | None = None,
        random_start: bool = True,
        keep_worst: bool = True,
        objective: Objective | Literal["ce"] = "ce",
        output_key: str | int | None = None,
        max_batch: int | None = None,
    ) -> None:
        self.norm = check_norm(norm)
        self.eps = check_eps(default_eps(self.norm) if eps is None else eps)
        if steps < 0:
            raise ValueError(f"steps must be >= 0; got {steps}")
        self.steps = steps
        self.step_size = step_size
        self.random_start = random_start
        self.keep_worst = keep_worst
        self.objective = objective
        self.output_key = output_key
        self.max_batch = max_batch

    def perturb(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        targeted: bool = False,
        start: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        trainer: Any | None = None,
    ) -> AttackResult:
        return pgd(
            model,
            inputs,
            targets,
            norm=self.norm,
            eps=self.eps,
            steps=self.steps,
            step_size=self.step_size,
            random_start=self.random_start,
            targeted=targeted,
            keep_worst=self.keep_worst,
            objective=self.objective,
            start=start,
            generator=generator,
            output_key=self.output_key,
            max_batch=self.max_batch,
            trainer=trainer,
        )
