"""XRAI (Kapishnikov, Bolukbasi, Viégas & Terry, "XRAI: Better Attributions Through Regions", ICCV 2019).

1. Pixel attributions: Integrated Gradients of this package (through the registry) from a black
   and a white baseline, averaged, summed over channels.
2. Over-segmentation: Felzenszwalb at several ``scales`` (scikit-image), every segment of every
   scale a candidate region (the paper dilates segments; ``dilation`` pixels, default 0 at 32 px).
3. Greedy ranking: starting from nothing, repeatedly add the candidate with the largest *gain* —
   the attribution of its pixels not yet selected divided by their number — until the image is
   covered. Each newly covered pixel gets the gain of the region that covered it, so the map
   ranks pixels by the order (and density) in which regions were chosen.

:func:`rank_regions` is the greedy step on its own (one image), returning the chosen order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.attribution.superpixels import _as_rgb_unit
from xai_lightning.core import ObserverGuard, TargetSpec

__all__ = ["RegionRanking", "Xrai", "candidate_regions", "rank_regions"]


@dataclass
class RegionRanking:
    """The greedy XRAI selection for one image.

    Attributes:
        order: indices into the candidate regions, in the order they were added.
        gains: ``(len(order),)`` gain of each added region when it was added.
        added: ``(len(order), H, W)`` bool, the pixels each step newly covered.
        saliency: ``(H, W)`` every pixel's gain at the step that covered it.
    """

    order: list[int]
    gains: torch.Tensor
    added: torch.Tensor
    saliency: torch.Tensor


def candidate_regions(
    image: torch.Tensor, scales: Sequence[float], sigma: float = 0.8, min_size: int | None = None, dilation: int = 0
) -> torch.Tensor:
    """``(R, H, W)`` bool segments of Felzenszwalb over-segmentations of ``image (C, H, W)`` at each scale."""
    from xai_lightning.extras import require

    felzenszwalb = require("skimage.segmentation", "XRAI's Felzenszwalb regions").felzenszwalb

    height, width = image.shape[-2:]
    rgb = _as_rgb_unit(image)
    size = max(4, height * width // 100) if min_size is None else min_size
    regions = []
    for scale in scales:
        labels = torch.from_numpy(
            felzenszwalb(rgb, scale=float(scale), sigma=sigma, min_size=size, channel_axis=-1).astype(np.int64)
        )
        regions.append(F.one_hot(labels, int(labels.max()) + 1).permute(2, 0, 1).bool())
    masks = torch.cat(regions)
    if dilation > 0:
        masks = F.max_pool2d(masks.float().unsqueeze(1), 2 * dilation + 1, stride=1, padding=dilation).squeeze(1).bool()
    return masks


def rank_regions(attribution: torch.Tensor, regions: torch.Tensor, min_pixels: int = 1) -> RegionRanking:
    """Greedy XRAI ranking of ``regions (R, H, W)`` by attribution gain on ``attribution (H, W)``.

    A candidate whose uncovered part has fewer than ``min_pixels`` pixels is dropped.
    """
    if regions.shape[-2:] != attribution.shape:
        raise ValueError(f"Regions {tuple(regions.shape)} and attribution {tuple(attribution.shape)} differ in size")
    flat = regions.flatten(1).double()  # (R, P)
    values = attribution.flatten().double()
    covered = torch.zeros_like(values, dtype=torch.bool)
    available = torch.ones(regions.shape[0], dtype=torch.bool, device=regions.device)
    saliency = torch.zeros_like(values)
    order, gains, added = [], [], []
    while not bool(covered.all()):
        open_pixels = (~covered).double()
        uncovered_area = flat @ open_pixels  # (R,) — all candidates at once
        available &= uncovered_area >= min_pixels
        if not bool(available.any()):
            break
        gain = (flat @ (values * open_pixels)) / uncovered_area.clamp_min(1)
        gain = gain.masked_fill(~available, -torch.inf)
        best = int(gain.argmax())
        new = flat[best].bool() & ~covered
        saliency[new] = gain[best]
        covered |= new
        available[best] = False
        order.append(best)
        gains.append(float(gain[best]))
        added.append(new.view(attribution.shape))
    # Pixels no candidate reached (only possible with min_pixels > 1) rank last.
    if not bool(covered.all()) and gains:
        saliency[~covered] = min(gains) - 1.0
    stacked = torch.stack(added) if added else torch.zeros(0, *attribution.shape, dtype=torch.bool)
    return RegionRanking(order, torch.tensor(gains, dtype=torch.float64), stacked, saliency.view(attribution.shape))


class Xrai(AttributionMethod):
    """XRAI region saliency ``(B, H, W)`` (images only): higher = region chosen earlier / denser.

    Args:
        ig_steps: Integrated Gradients steps (the IG of this package, ``max_batch`` shared).
        baselines: IG baselines averaged (paper: black and white, ``(0.0, 1.0)`` for [0, 1] images).
        scales: Felzenszwalb scales (the paper's reference implementation: 50 … 1200 at 224 px).
        sigma, min_size, dilation: segmentation settings (``min_size`` default: 1 % of the pixels).
        min_pixels: drop candidates whose uncovered part is smaller.
    """

    fold_batchnorm_default = False  # points near ties: see AttributionMethod.fold_batchnorm_default

    name = "xrai"
    title = "XRAI"
    image_only = True
    map_reduction = "none"

    def __init__(
        self,
        ig_steps: int = 50,
        baselines: Sequence[float] = (0.0, 1.0),
        scales: Sequence[float] = (50, 100, 150, 250, 500, 1200),
        sigma: float = 0.8,
        min_size: int | None = None,
        dilation: int = 0,
        min_pixels: int = 1,
        **common,
    ) -> None:
        super().__init__(**common)
        if ig_steps < 1 or not baselines or not scales or min_pixels < 1 or dilation < 0:
            raise ValueError("ig_steps and min_pixels must be >= 1, dilation >= 0, baselines and scales non-empty")
        self.ig_steps = ig_steps
        self.baselines = tuple(float(b) for b in baselines)
        self.scales = tuple(float(s) for s in scales)
        self.sigma = sigma
        self.min_size = min_size
        self.dilation = dilation
        self.min_pixels = min_pixels

    def pixel_attributions(
        self, explained: ExplainedModel, inputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """``(B, H, W)`` IG summed over channels, averaged over the baselines."""
        from xai_lightning.attribution.registry import get_method

        total = torch.zeros(inputs.shape[0], *inputs.shape[2:], dtype=torch.float64, device=inputs.device)
        for baseline in self.baselines:
            ig = get_method(
                "integrated_gradients",
                steps=self.ig_steps,
                baseline=baseline,
                output_key=self.output_key,
                max_batch=self.max_batch,
            )
            # Already inside this method's guard: the nested guard only re-asserts eval/grad mode.
            explained_target = targets if explained.score_fn is None else explained.score_fn
            total += ig.attribute(explained.model, inputs, explained_target).sum(1).double()
        return total / len(self.baselines)

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        targets, _ = explained.resolve(inputs, target, labels)
        attribution = self.pixel_attributions(explained, inputs, targets)
        maps = []
        for image, pixel_map in zip(inputs.cpu(), attribution.cpu()):  # greedy selection is sequential per image
            regions = candidate_regions(image, self.scales, self.sigma, self.min_size, self.dilation)
            maps.append(rank_regions(pixel_map, regions, self.min_pixels).saliency)
        return torch.stack(maps).to(inputs.device, inputs.dtype), None
