"""Which input elements each map entry ranks: per-pixel maps ``(B, H, W)`` or maps shaped like the inputs.

A per-pixel map of images ``(B, C, H, W)`` ranks pixels: removing a pixel removes all its
channels. A map shaped like the inputs ranks every element on its own (channels separately,
as Quantus does with maps broadcast to the input shape). Tabular inputs ``(B, D)`` take maps
``(B, D)``. Anything else is an error naming both shapes.
"""

from __future__ import annotations

import torch

__all__ = ["check_maps", "expand_features"]


def check_maps(inputs: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Validate ``maps`` against ``inputs`` and return them as ``(B, F)`` float features.

    ``(B, 1, H, W)`` maps of images count as per-pixel maps.

    Raises:
        ValueError: naming both shapes and the shapes that would fit.
    """
    if not isinstance(maps, torch.Tensor) or not isinstance(inputs, torch.Tensor):
        raise TypeError("inputs and maps must be tensors")
    if inputs.dim() < 2 or inputs.shape[0] == 0:
        raise ValueError(
            f"Explanation metrics take a non-empty batch (B, ...); got inputs of shape {tuple(inputs.shape)}"
        )
    if (
        inputs.dim() == 4
        and maps.dim() == 4
        and maps.shape[1] == 1
        and maps.shape[0] == inputs.shape[0]
        and maps.shape[2:] == inputs.shape[2:]
    ):
        maps = maps[:, 0]
    per_pixel = inputs.dim() == 4 and maps.dim() == 3 and maps.shape == (inputs.shape[0], *inputs.shape[2:])
    if not (per_pixel or maps.shape == inputs.shape):
        fits = f"{tuple(inputs.shape)} (one value per input element)"
        if inputs.dim() == 4:
            fits = f"({inputs.shape[0]}, {inputs.shape[2]}, {inputs.shape[3]}) (one value per pixel) or " + fits
        raise ValueError(
            f"Maps of shape {tuple(maps.shape)} do not match inputs of shape {tuple(inputs.shape)}: give maps of "
            f"shape {fits}. Upsample low-resolution maps (e.g. Grad-CAM with upsample=False) to the input size first."
        )
    return maps.detach().flatten(1).float() if maps.dtype != torch.float64 else maps.detach().flatten(1)


def expand_features(selected: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Boolean feature selections ``(R, F)`` → input-shaped masks ``(R, *inputs.shape[1:])``.

    ``F`` is ``H·W`` for per-pixel maps (broadcast over channels) or the number of input elements.
    """
    rows = selected.shape[0]
    sample_shape = tuple(inputs.shape[1:])
    if selected.shape[1] == inputs[0].numel():
        return selected.view(rows, *sample_shape)
    if inputs.dim() == 4 and selected.shape[1] == inputs.shape[2] * inputs.shape[3]:
        return selected.view(rows, 1, *inputs.shape[2:]).expand(rows, *sample_shape)
    raise ValueError(f"{selected.shape[1]} features do not index inputs of shape {tuple(inputs.shape)}")
