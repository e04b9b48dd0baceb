"""The pixels of network dissection's unit masks, found without upsampling whole activation maps.

A unit's mask is ``M_k = upsample(A_k) >= T_k`` at the resolution of the concept masks (bilinear,
``align_corners=False``, as NetDissect). At the top 0.5 % quantile almost every upsampled pixel is
off, so upsampling every ``h × w`` map to ``H × W`` spends most of its time on pixels that cannot
be on. For an integer scale factor ``s = H / h``, the upsampled image splits into *cells*: the output
pixels whose four bilinear sources are the 2×2 source block ``[y, y+1] × [x, x+1]`` (the border
rows and columns, clamped to a single source row or column, go to the first and last cells). A
cell's pixels are convex combinations of its four sources, so a cell whose sources all lie below
``T_k`` has no pixel on. :func:`unit_mask_pixels` upsamples only the 2×2 blocks of cells that can
reach their unit's threshold — each into a ``2s × 2s`` patch, of which it keeps the pixels the cell
owns — so every output pixel is looked at once, by exactly one cell.

The patch values are bit-identical to those of the whole-map upsampling: for the pixels a cell
owns, the patch has the same sources and the same bilinear weights, and the same kernel computes
them (a test checks the equality). The weights agree to the bit when ``1 / s`` is exact in floating
point, i.e. for power-of-two scale factors (2, 4, 8, 16, 32: every layer of our models and of
Broden's 112- and 224-pixel masks); other factors fall back to upsampling whole the maps whose
peak can reach their threshold.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["upsample_activations", "unit_mask_pixels"]


def upsample_activations(activations: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling ``(B, K, h, w)`` → ``(B, K, H, W)`` float32 (``align_corners=False``, as
    NetDissect); returned as is when already at ``size``."""
    activations = activations.float()
    if tuple(activations.shape[-2:]) == tuple(size):
        return activations
    return F.interpolate(activations, size=size, mode="bilinear", align_corners=False)


def _reaching(values: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """``values (B, K, ...)`` that can reach ``level (K,)`` after bilinear weighting: weights summing to
    1 in float32 can land a few ulps above the largest source, hence the relative slack."""
    return values >= (level - level.abs() * 1e-5).view(1, -1, *([1] * (values.dim() - 2)))


def _ownership(scale: int, device: torch.device) -> torch.Tensor:
    """``(4, 2·scale)`` bool: which rows (or columns) of its ``2·scale`` patch a cell owns — those whose
    bilinear source coordinate lies in ``[0, 1)``, plus the clamped border below 0 for the first
    cell and from 1 on for the last. Row ``kind = first + 2·last`` of the table (a single cell is both)."""
    patch = torch.arange(2 * scale, dtype=torch.float64, device=device)
    source = (patch + 0.5) / scale - 0.5  # exact for the power-of-two scales used here
    interior = (source >= 0) & (source < 1)
    return torch.stack([interior, interior | (source < 0), interior | (source >= 1), torch.ones_like(interior)])


def _cell_kind(cell_index: torch.Tensor, cells: int) -> torch.Tensor:
    return (cell_index == 0).long() + 2 * (cell_index == cells - 1).long()


def _is_power_of_two(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0


def unit_mask_pixels(
    activations: torch.Tensor, thresholds: torch.Tensor, size: tuple[int, int], max_values: int = 1 << 22
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the bilinearly upsampled activations reach their unit's threshold.

    Args:
        activations: ``(B, K, h, w)``.
        thresholds: ``(K,)`` float32, compared with ``>=`` (see :func:`~xai_lightning.dissection.strict_thresholds`).
        size: ``(H, W)`` of the concept masks.
        max_values: upsampled values computed at once (a memory cap: 16 MiB by default).

    Returns:
        ``(images, units, rows, columns)``, each ``(n,)`` long: the on pixels of the unit masks
        ``upsample(A)[b, k] >= thresholds[k]`` at ``H × W``, every pixel once.
    """
    activations = activations.float()
    _, units, height, width = activations.shape
    out_h, out_w = int(size[0]), int(size[1])
    thresholds = thresholds.to(activations.device, torch.float32)
    if (height, width) == (out_h, out_w):
        b, k, y, x = (activations >= thresholds.view(1, -1, 1, 1)).nonzero(as_tuple=True)
        return b, k, y, x
    scale_h, scale_w = out_h // height, out_w // width
    # Patches reproduce the whole map's arithmetic only where 1/scale is exact in floating point.
    if (
        height < 2
        or width < 2
        or out_h != scale_h * height
        or out_w != scale_w * width
        or not (_is_power_of_two(scale_h) and _is_power_of_two(scale_w))
    ):
        return _whole_map_pixels(activations, thresholds, (out_h, out_w), max_values)
    # A cell can reach when one of its four sources can (shifted ORs: max_pool2d is slower on small maps).
    source_reaches = _reaching(activations, thresholds)
    rows = source_reaches[..., :-1, :] | source_reaches[..., 1:, :]
    cell_reaches = rows[..., :-1] | rows[..., 1:]  # (B, K, h - 1, w - 1)
    b, k, cy, cx = cell_reaches.nonzero(as_tuple=True)
    flat = activations.contiguous().view(-1)
    corner = torch.tensor([0, 1, width, width + 1], device=b.device)  # a cell's 2×2 sources, flat offsets
    rows_owned, columns_owned = _ownership(scale_h, b.device), _ownership(scale_w, b.device)
    found = []
    for chunk in torch.arange(b.shape[0], device=b.device).split(max(1, max_values // (4 * scale_h * scale_w))):
        cb, ck, ccy, ccx = b[chunk], k[chunk], cy[chunk], cx[chunk]
        first = ((cb * units + ck) * height + ccy) * width + ccx
        sources = flat[first[:, None] + corner].view(-1, 1, 2, 2)
        patches = F.interpolate(sources, size=(2 * scale_h, 2 * scale_w), mode="bilinear", align_corners=False)
        cell, py, px = (patches.squeeze(1) >= thresholds[ck].view(-1, 1, 1)).nonzero(as_tuple=True)
        # Few patch pixels are on: keep those the cell owns (each output pixel belongs to one cell).
        owned = rows_owned[_cell_kind(ccy[cell], height - 1), py] & columns_owned[_cell_kind(ccx[cell], width - 1), px]
        cell, py, px = cell[owned], py[owned], px[owned]
        found.append((cb[cell], ck[cell], ccy[cell] * scale_h + py, ccx[cell] * scale_w + px))
    return _concatenated(found, activations.device)


def _whole_map_pixels(
    activations: torch.Tensor, thresholds: torch.Tensor, size: tuple[int, int], max_values: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fallback for other scale factors: upsample whole the maps whose peak can reach."""
    peaks = activations.flatten(2).amax(2)  # (B, K)
    images, units = _reaching(peaks, thresholds).nonzero(as_tuple=True)
    found = []
    for chunk in torch.arange(images.shape[0]).split(max(1, max_values // (size[0] * size[1]))):
        maps = upsample_activations(activations[images[chunk], units[chunk]].unsqueeze(1), size).squeeze(1)
        n, y, x = (maps >= thresholds[units[chunk]].view(-1, 1, 1)).nonzero(as_tuple=True)
        found.append((images[chunk][n], units[chunk][n], y, x))
    return _concatenated(found, activations.device)


PixelIndices = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _concatenated(found: list[PixelIndices], device: torch.device) -> PixelIndices:
    """The ``(images, units, rows, columns)`` of every chunk, joined (empty long tensors for no chunk)."""
    if not found:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, empty, empty
    return tuple(torch.cat(parts) for parts in zip(*found))  # type: ignore[return-value]
