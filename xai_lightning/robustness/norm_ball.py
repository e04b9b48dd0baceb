"""Geometry of the threat model: ε-balls in the L∞ and L2 norms around each example.

Everything an attack needs to move inside a ball: a uniformly random starting point, the
steepest-ascent direction of a gradient under the norm, the projection back onto the ball, and
the norm of a perturbation. All functions work per example on ``(B, ...)`` tensors.

The steepest-ascent directions follow Madry et al. (2018, "Towards Deep Learning Models Resistant
to Adversarial Attacks"): ``sign(g)`` for L∞ (the FGSM step of Goodfellow et al. 2015) and
``g / ‖g‖₂`` for L2.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["Norm", "check_eps", "check_norm", "perturbation_norm", "project", "random_point", "steepest_direction"]

#: The norms an attack can be constrained in.
Norm = Literal["linf", "l2"]

_ALIASES = {"linf": "linf", "l_inf": "linf", "inf": "linf", "l∞": "linf", "l2": "l2"}


def check_norm(norm: str) -> Norm:
    """``"linf"`` or ``"l2"`` (case-insensitive; Captum's ``"Linf"``/``"L2"`` accepted); else ValueError."""
    key = str(norm).lower()
    if key not in _ALIASES:
        raise ValueError(f"Unknown norm {norm!r}; use 'linf' (L∞, e.g. eps=8/255) or 'l2' (e.g. eps=0.5).")
    return _ALIASES[key]  # type: ignore[return-value]


def check_eps(eps: float, name: str = "eps") -> float:
    """A positive, finite radius; else ValueError."""
    value = float(eps)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a positive, finite radius; got {eps!r}.")
    return value


def _per_example_norm(x: torch.Tensor) -> torch.Tensor:
    """``(B, ...)`` → ``(B, 1, ..., 1)`` L2 norms, broadcastable against ``x``."""
    return x.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (x.dim() - 1)))


def perturbation_norm(delta: torch.Tensor, norm: Norm) -> torch.Tensor:
    """``(B,)`` norm of each example's perturbation."""
    norm = check_norm(norm)
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(p=2, dim=1)


def random_point(
    shape: torch.Size | tuple[int, ...],
    norm: Norm,
    eps: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A perturbation drawn uniformly from the ε-ball, ``(B, ...)``.

    L∞: each coordinate uniform in ``[-ε, ε]``. L2: a uniformly random direction scaled to radius
    ``ε · U^(1/d)`` (``d`` the dimension per example), which is uniform in the ball's volume.
    Draws, in this order, ``rand`` (L∞) or ``randn`` then ``rand(B)`` (L2) from ``generator``
    (the global generator when None) — the same draws as Captum's PGD random start, so a seeded
    run starts from the same point.
    """
    norm = check_norm(norm)
    if norm == "linf":
        return torch.rand(shape, generator=generator, device=device, dtype=dtype) * (2 * eps) - eps
    direction = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    direction = direction / _per_example_norm(direction).clamp_min(1e-12)
    dimension = int(torch.Size(shape)[1:].numel())
    radius = torch.rand(shape[0], generator=generator, device=device, dtype=dtype) ** (1.0 / dimension) * eps
    return direction * radius.view(-1, *([1] * (len(shape) - 1)))


def steepest_direction(gradient: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Unit-norm direction of steepest ascent: ``sign(g)`` (L∞) or ``g/‖g‖₂`` per example (L2).

    Coordinates (L∞) or examples (L2) with a zero gradient do not move.
    """
    norm = check_norm(norm)
    if norm == "linf":
        return gradient.sign()
    length = _per_example_norm(gradient)
    return torch.where(length > 0, gradient / length.clamp_min(torch.finfo(gradient.dtype).tiny), 0.0)


def project(delta: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    """Euclidean projection of each example's perturbation onto the ε-ball of ``norm``.

    L∞ clamps every coordinate to ``[-ε, ε]``; L2 rescales perturbations longer than ε to length ε.
    """
    norm = check_norm(norm)
    if norm == "linf":
        return delta.clamp(-eps, eps)
    length = _per_example_norm(delta)
    return delta * torch.where(length > eps, eps / length.clamp_min(torch.finfo(delta.dtype).tiny), 1.0)
