"""Map saliency values to colours, batched in torch."""

from __future__ import annotations

import functools

import torch

__all__ = ["apply_colormap", "normalize_maps"]


@functools.lru_cache(maxsize=8)
def _lookup_table(name: str) -> torch.Tensor:
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(f"Unknown colormap {name!r}; use a matplotlib name such as 'jet', 'turbo', 'inferno'.") from None
    return torch.tensor(cmap(torch.linspace(0, 1, 256).numpy())[:, :3], dtype=torch.float32)


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of ``(B, H, W)`` to [0, 1] by its own min and max (constant maps → 0)."""
    flat = maps.detach().float().flatten(1)
    low = flat.amin(1, keepdim=True)
    span = flat.amax(1, keepdim=True) - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(1e-12), torch.zeros_like(flat))
    return scaled.view_as(maps)


def apply_colormap(maps: torch.Tensor, name: str = "jet") -> torch.Tensor:
    """Colour ``(B, H, W)`` values in [0, 1] → ``(B, H, W, 3)`` float RGB in [0, 1]."""
    table = _lookup_table(name).to(maps.device)
    index = (maps.clamp(0, 1) * 255).round().long()
    return table[index]
