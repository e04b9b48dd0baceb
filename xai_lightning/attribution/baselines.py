"""Reference inputs ("baselines") for path and difference methods, and distributions of them.

A baseline stands for "absence of signal": Integrated Gradients integrates from it, DeepLIFT
compares with it, occlusion pastes it into a window. The choice matters (Sturmfels et al.,
"Visualizing the Impact of Feature Attribution Baselines", Distill 2020), so every method takes
one of these specifications:

===============  ==========================================================================
``"zero"``       all zeros (the usual default; black for [0, 1] images)
``"blur"``       the input blurred with a Gaussian of ``blur_sigma`` pixels (default: side/8)
``"uniform"``    uniform noise in each example's own ``[min, max]`` value range
``"mean"``       each example's per-channel mean (a flat grey-ish image for images)
a float          that constant everywhere
a tensor         ``x.shape`` (one per example), ``x.shape[1:]`` (shared), or ``(C,)`` per-channel
                 values for image inputs (e.g. the dataset mean)
===============  ==========================================================================

Random baselines draw from the torch generator (isolated by the observer guard) with one draw
shared by all examples of the batch, so an example's baseline does not depend on which other
examples share its batch (``max_batch`` slicing and DDP sharding leave results unchanged).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from xai_lightning.core.device_generator import device_generator

__all__ = ["BaselineSpec", "baseline_distribution", "gaussian_blur", "make_baseline"]

BaselineSpec = str | float | int | torch.Tensor
KINDS = ("zero", "blur", "uniform", "mean")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur images ``(B, C, H, W)`` with a separable Gaussian (reflect padding, radius 3σ)."""
    if x.dim() != 4:
        raise ValueError(f"A blurred baseline needs images (B, C, H, W); got shape {tuple(x.shape)}")
    if sigma <= 0:
        return x.clone()
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, min(x.shape[-2:]) - 1) if min(x.shape[-2:]) > 1 else 0
    if radius == 0:
        return x.clone()
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=x.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(x.dtype)
    channels = x.shape[1]
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    horizontal = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(horizontal, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _value_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.detach().flatten(1)
    shape = (-1,) + (1,) * (x.dim() - 1)
    return flat.amin(1).view(shape), flat.amax(1).view(shape)


def _uniform(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) noise shaped ``shape`` on ``like``'s device and dtype: drawn there (see
    :mod:`xai_lightning.core.device_generator`), or on a given generator's own device."""
    if generator is None:
        generator = device_generator(like.device)
    where = like.device if generator is None else generator.device
    return torch.rand(shape, generator=generator, device=where, dtype=torch.float32).to(like.device, like.dtype)


def _from_tensor(spec: torch.Tensor, x: torch.Tensor, what: str) -> torch.Tensor:
    spec = spec.detach().clone().to(device=x.device, dtype=x.dtype)
    if spec.shape == x.shape:
        return spec
    if spec.shape == x.shape[1:]:
        return spec.unsqueeze(0).expand_as(x).clone()
    if x.dim() == 4 and spec.dim() == 1 and spec.shape[0] == x.shape[1]:
        return spec.view(1, -1, 1, 1).expand_as(x).clone()
    if spec.dim() == 0:
        return spec.expand_as(x).clone()
    raise ValueError(
        f"{what} of shape {tuple(spec.shape)} does not match the inputs of shape {tuple(x.shape)}: give "
        f"{tuple(x.shape)} (one per example), {tuple(x.shape[1:])} (shared)"
        + (f", or ({x.shape[1]},) per-channel values" if x.dim() == 4 else "")
        + "."
    )


def make_baseline(
    spec: BaselineSpec,
    x: torch.Tensor,
    *,
    blur_sigma: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One baseline per example, shaped like ``x``.

    Raises:
        ValueError: for an unknown kind, or a tensor whose shape fits neither convention (the
            message names both shapes).
    """
    if isinstance(spec, torch.Tensor):
        return _from_tensor(spec, x, "Baseline")
    if isinstance(spec, bool):
        raise TypeError("A baseline is a kind name, a number or a tensor, not a bool.")
    if isinstance(spec, (int, float)):
        return torch.full_like(x, float(spec))
    if spec in ("zero", "zeros", "black"):
        return torch.zeros_like(x)
    if spec == "blur":
        sigma = blur_sigma if blur_sigma is not None else max(x.shape[-2:]) / 8
        return gaussian_blur(x.detach(), sigma)
    if spec == "uniform":
        low, high = _value_range(x)
        noise = _uniform(tuple(x.shape[1:]), x, generator)
        return low + (high - low) * noise.unsqueeze(0)
    if spec == "mean":
        if x.dim() >= 3:
            return x.detach().mean(dim=tuple(range(2, x.dim())), keepdim=True).expand_as(x).clone()
        return x.detach().mean(dim=1, keepdim=True).expand_as(x).clone()
    raise ValueError(f"Unknown baseline {spec!r}; use one of {list(KINDS)}, a number, or a tensor.")


def baseline_distribution(
    spec: BaselineSpec,
    x: torch.Tensor,
    num: int,
    *,
    blur_sigma: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A distribution of baselines per example, ``(B, N, *x.shape[1:])`` (DeepSHAP, GradientSHAP).

    ``spec`` is a tensor ``(N, *x.shape[1:])`` shared by every example (e.g. a sample of training
    images, as SHAP's background data), ``(B, N, *x.shape[1:])`` per example, or a kind:
    ``"uniform"`` draws ``num`` noise images in each example's value range (one draw shared by
    the batch); ``"blur"`` blurs each example with ``num`` increasing widths up to ``blur_sigma``;
    ``"zero"``/``"mean"``/a number give ``num`` copies of that baseline.
    """
    if num < 1:
        raise ValueError(f"num_baselines must be >= 1; got {num}")
    batch, sample_shape = x.shape[0], tuple(x.shape[1:])
    if isinstance(spec, torch.Tensor):
        spec = spec.detach().clone().to(device=x.device, dtype=x.dtype)
        if spec.dim() == x.dim() and tuple(spec.shape[1:]) == sample_shape:
            return spec.unsqueeze(0).expand(batch, *spec.shape).clone()
        if spec.dim() == x.dim() + 1 and spec.shape[0] == batch and tuple(spec.shape[2:]) == sample_shape:
            return spec
        raise ValueError(
            f"Baseline distribution of shape {tuple(spec.shape)} does not match the inputs of shape "
            f"{tuple(x.shape)}: give (N, {', '.join(map(str, sample_shape))}) shared by all examples or "
            f"({batch}, N, {', '.join(map(str, sample_shape))}) per example."
        )
    if spec == "uniform":
        low, high = _value_range(x)
        noise = _uniform((num, *sample_shape), x, generator)
        return low.unsqueeze(1) + (high - low).unsqueeze(1) * noise.unsqueeze(0)
    if spec == "blur":
        top = blur_sigma if blur_sigma is not None else max(x.shape[-2:]) / 8
        sigmas = [top * (k + 1) / num for k in range(num)]
        return torch.stack([gaussian_blur(x.detach(), sigma) for sigma in sigmas], dim=1)
    one = make_baseline(spec, x, blur_sigma=blur_sigma, generator=generator)
    return one.unsqueeze(1).expand(batch, num, *sample_shape).clone()
