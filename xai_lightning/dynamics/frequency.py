"""What frequencies does the model use? Accuracy on low- and high-frequency parts, kernel roughness.

Wang, Wu, Huang & Xing, "High-frequency Component Helps Explain the Generalization of
Convolutional Neural Networks" (CVPR 2020, arXiv 2019). With ``F = fftshift(fft2(x))`` and the
disc ``M_r`` of radius ``r`` around the zero frequency,

    x_low  = ifft2(ifftshift(F ⊙ M_r))           x_high = x − x_low

(the paper writes ``x_high = ifft2(ifftshift(F ⊙ (1 − M_r)))``, the same in exact arithmetic;
subtracting makes ``x_low + x_high = x`` hold to float rounding). The disc is point-symmetric on
the shifted frequency grid (also at even sizes, where the Nyquist row maps onto itself), so
``x_low`` is real; the imaginary round-off is dropped. The model is scored on both parts. Tracked over
training, the curves show a network picking up high-frequency signal (accuracy on ``x_high``
rising) while its accuracy on ``x_low`` lags; Wang et al. use r = 4, 8, 12, 16 at 32×32.

They also note that adversarially robust models have *smoother* first-layer kernels. We measure
smoothness by the **roughness** of each 2-D kernel slice ``w`` (lower = smoother)::

    roughness(w) = (Σ (w[i, j+1] − w[i, j])² + Σ (w[i+1, j] − w[i, j])²) / Σ w²

(0 for a constant kernel; 16/3 ≈ 5.33 for a 3×3 checkerboard), averaged over the kernel slices
with non-zero energy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from xai_lightning.core import LayerNotFoundError, get_layer, layer_names, select_logits
from xai_lightning.core.fast_forward import FastForward, pass_slices
from xai_lightning.dynamics.features import modules_in_run_order

__all__ = [
    "FrequencyAccuracy",
    "FrequencyVariantCache",
    "check_radii",
    "conv_weight",
    "first_conv_layer",
    "frequency_accuracy",
    "frequency_split",
    "frequency_variants",
    "kernel_roughness",
    "largest_radius",
    "low_pass",
    "radial_mask",
]


def largest_radius(height: int, width: int) -> int:
    """The largest valid radius at ``height × width``: half the shorter side (the inscribed disc).

    Larger discs only add the spectrum's corners and soon cover all of it (``x_high = 0``).
    """
    return min(height, width) // 2


def check_radii(radii: Sequence[float], height: int, width: int) -> list[float]:
    """Validate radii for ``height × width`` images; the error names the largest valid radius."""
    values = [float(r) for r in radii]
    if not values:
        raise ValueError("At least one radius is needed.")
    largest = largest_radius(height, width)
    for radius in values:
        if radius <= 0:
            raise ValueError(f"Radii must be > 0 (pixels of the centred spectrum); got {radius:g}.")
        if radius > largest:
            raise ValueError(
                f"Radius {radius:g} is larger than the {height}×{width} images allow: the largest valid radius is "
                f"{largest} (half the shorter side). Use radii in (0, {largest}], e.g. Wang et al.'s 4, 8, 12, 16 "
                "at 32×32."
            )
    return values


def radial_mask(height: int, width: int, radius: float, device: torch.device | str | None = None) -> torch.Tensor:
    """``(H, W)`` bool: True where the *centred* frequency ``(ky, kx)`` has ``√(ky² + kx²) ≤ radius``.

    Centred as ``torch.fft.fftshift`` centres: the zero frequency sits at ``(H // 2, W // 2)``.
    """
    ky = torch.arange(height, device=device, dtype=torch.float64) - height // 2
    kx = torch.arange(width, device=device, dtype=torch.float64) - width // 2
    return ky.view(-1, 1).square() + kx.view(1, -1).square() <= float(radius) ** 2


def low_pass(images: torch.Tensor, radius: float) -> torch.Tensor:
    """``x_low`` of ``images (..., H, W)`` (any leading dimensions), same dtype."""
    height, width = images.shape[-2:]
    mask = radial_mask(height, width, radius, images.device)
    wide = torch.float32 if images.device.type == "mps" else torch.float64  # MPS has no float64
    spectrum = torch.fft.fftshift(torch.fft.fft2(images.to(wide)), dim=(-2, -1))
    filtered = torch.fft.ifft2(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1)))
    return filtered.real.to(images.dtype)


def frequency_split(images: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_low, x_high)`` of ``images (..., H, W)``, with ``x_low + x_high = images``."""
    low = low_pass(images, radius)
    return low, images - low


@dataclass(frozen=True)
class FrequencyAccuracy:
    """Per-example correctness for ``B`` images and ``R`` radii.

    Attributes:
        radii: the ``R`` radii.
        clean: ``(B,)`` bool, the prediction on ``x`` is the label.
        low: ``(B, R)`` bool, on ``x_low`` of each radius.
        high: ``(B, R)`` bool, on ``x_high`` of each radius.
    """

    radii: tuple[float, ...]
    clean: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor


def frequency_variants(images: torch.Tensor, radii: Sequence[float], *, include_clean: bool = True) -> torch.Tensor:
    """``((1 + 2R)·B, C, H, W)``: ``images (B, C, H, W)`` (if ``include_clean``), then ``x_low`` of
    each radius, then ``x_high`` of each radius, stacked in that order — what :func:`frequency_accuracy`
    scores."""
    lows, highs = zip(*(frequency_split(images, radius) for radius in radii))
    return torch.cat(([images] if include_clean else []) + list(lows) + list(highs))


class FrequencyVariantCache:
    """:func:`frequency_variants` of the last images seen, recomputed only when they change.

    A callback scores the same probe images every epoch; their spectral split does not depend on
    the model. The cache keeps a copy of the images it split and compares the next call's images
    with it (``torch.equal``, a fraction of the split's cost), so changed images, radii, dtype or
    device are split afresh.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._images: torch.Tensor | None = None
        self._variants: torch.Tensor | None = None

    def __call__(self, images: torch.Tensor, radii: Sequence[float], *, include_clean: bool = True) -> torch.Tensor:
        key = (tuple(float(r) for r in radii), include_clean, tuple(images.shape), images.dtype, images.device)
        if self._variants is None or self._images is None or key != self._key or not torch.equal(self._images, images):
            self._variants = frequency_variants(images, radii, include_clean=include_clean)
            self._images, self._key = images.detach().clone(), key
        return self._variants


def frequency_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    radii: Sequence[float],
    *,
    include_clean: bool = True,
    max_batch: int | None = None,
    output_key: str | int | None = None,
    cache: FrequencyVariantCache | None = None,
) -> FrequencyAccuracy:
    """Score ``model`` on ``x``, ``x_low`` and ``x_high`` of ``images (B, C, H, W)`` for every radius.

    All ``(1 + 2R)·B`` variants go through the model in one stream of forward passes without
    gradients, ``max_batch`` images each (on a CPU at most
    :data:`~xai_lightning.core.fast_forward.CPU_INPUT_ELEMENTS_PER_PASS` input elements), through
    :class:`~xai_lightning.core.fast_forward.FastForward` (channels-last, eval BatchNorms folded:
    a plain forward's logits up to float reassociation). Run it inside
    :func:`~xai_lightning.core.observe` (eval mode). ``include_clean=False`` skips the clean pass
    (``clean`` is then all False). ``cache`` reuses the split of images scored before.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W); got {tuple(images.shape)}")
    radii = check_radii(radii, *images.shape[-2:])
    batch = images.shape[0]
    stacked = (cache or frequency_variants)(images, radii, include_clean=include_clean)
    variants = 2 * len(radii) + (1 if include_clean else 0)
    correct = []
    repeated = labels.to(images.device).repeat(variants)
    forward = FastForward(model)
    with torch.no_grad():
        for rows in pass_slices(stacked, max_batch):
            logits = select_logits(forward(stacked[rows]), output_key)
            correct.append(logits.argmax(1) == repeated[rows])
    hits = torch.cat(correct).view(variants, batch)
    offset = 1 if include_clean else 0
    count = len(radii)
    return FrequencyAccuracy(
        radii=tuple(radii),
        clean=hits[0] if include_clean else torch.zeros(batch, dtype=torch.bool, device=images.device),
        low=hits[offset : offset + count].T.contiguous(),
        high=hits[offset + count :].T.contiguous(),
    )


def kernel_roughness(weight: torch.Tensor) -> torch.Tensor:
    """Mean roughness (see the module docstring) of the 2-D slices of ``weight (O, I, kh, kw)``; 0-d tensor.

    Slices with zero energy are skipped; NaN when every slice is zero.
    """
    if weight.dim() != 4:
        raise ValueError(f"kernel_roughness expects conv weights (O, I, kh, kw); got {tuple(weight.shape)}")
    w = weight.detach().double().flatten(0, 1)  # (O·I, kh, kw)
    horizontal = (w[:, :, 1:] - w[:, :, :-1]).square().sum((1, 2))
    vertical = (w[:, 1:, :] - w[:, :-1, :]).square().sum((1, 2))
    energy = w.square().sum((1, 2))
    keep = energy > 0
    if not bool(keep.any()):
        return torch.tensor(float("nan"))
    return ((horizontal + vertical)[keep] / energy[keep]).mean().float()


def first_conv_layer(model: nn.Module, forward: Callable[[], object]) -> str:
    """Dotted name of the first ``nn.Conv2d`` the model runs (one forward pass with temporary hooks)."""
    order = modules_in_run_order(model, forward, nn.Conv2d)
    if not order:
        raise LayerNotFoundError(
            f"{type(model).__name__} runs no nn.Conv2d, so it has no first-layer kernels to measure. Pass "
            "kernel_layer=None to skip the kernel roughness, or name a conv layer; valid names:\n  "
            + "\n  ".join(layer_names(model))
        )
    return order[0]


def conv_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The ``(O, I, kh, kw)`` weight of the conv layer ``name`` (unknown names list the valid ones)."""
    module = get_layer(model, name)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError(f"Layer {name!r} ({type(module).__name__}) has no 4-D conv weight; name an nn.Conv2d.")
    return weight
