"""RISE: Randomized Input Sampling for Explanation (Petsiuk, Das & Saenko, BMVC 2018).

``N`` random binary grids of ``s × s`` cells (each cell kept with probability ``p``) are
bilinearly upsampled to ``(s + 1) × cell`` pixels, ``cell = ⌈H / s⌉``, and cropped to ``H × W`` at a
random shift in ``[0, cell)`` — smooth masks whose edges fall anywhere. The saliency of a pixel
is the expected score of the masked input given that the pixel was kept:

    S(λ) = Σ_i f(x ⊙ M_i) · M_i(λ) / (N · p)

with ``f`` the class probability (the paper's choice; ``score="logit"`` also works). Masked
pixels take the baseline (``x ⊙ M`` of the paper: ``"zero"``; any baseline spec is accepted).

Batched: the ``B × N`` masked inputs are generated slice by slice under ``max_batch`` (row ``r``
is mask ``r // B`` on example ``r % B``); the random grids and shifts are drawn once, up front,
from the (isolated, optionally seeded) torch generator and shared by the batch, so the result
does not depend on ``max_batch`` or on the other examples in the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from xai_lightning.attribution.baselines import BaselineSpec, make_baseline
from xai_lightning.attribution.explained_model import ExplainedModel, ScoreKind
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.core import ObserverGuard, TargetSpec
from xai_lightning.core.device_generator import device_generator

__all__ = ["Rise", "rise_masks"]


def rise_masks(grids: torch.Tensor, shifts: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Smooth masks ``(n, H, W)`` in [0, 1] from binary grids ``(n, s, s)`` and shifts ``(n, 2)``.

    Each grid is upsampled bilinearly to ``((s + 1)·cell_h, (s + 1)·cell_w)`` and cropped at its
    shift, as in the paper's reference implementation.
    """
    n, s = grids.shape[0], grids.shape[1]
    cell_h, cell_w = math.ceil(height / s), math.ceil(width / s)
    big = F.interpolate(
        grids.unsqueeze(1).float(), size=((s + 1) * cell_h, (s + 1) * cell_w), mode="bilinear", align_corners=False
    ).squeeze(1)
    rows = shifts[:, 0].view(-1, 1) + torch.arange(height, device=grids.device).view(1, -1)  # (n, H)
    cols = shifts[:, 1].view(-1, 1) + torch.arange(width, device=grids.device).view(1, -1)  # (n, W)
    index = torch.arange(n, device=grids.device).view(-1, 1, 1)
    return big[index, rows.unsqueeze(-1), cols.unsqueeze(1)]


class Rise(AttributionMethod):
    """RISE saliency ``(B, H, W)`` (images only): expected class score when each pixel is kept.

    Args:
        num_masks: ``N`` (paper: 4000 at 224 px; small images need fewer).
        grid_size: ``s`` cells per side of the low-resolution masks (paper: 7).
        keep_probability: ``p`` (paper: 0.5).
        baseline: value of masked pixels (default ``"zero"`` as the paper's ``x ⊙ M``).
        score: ``"probability"`` (paper) or ``"logit"``.
    """

    name = "rise"
    title = "RISE"
    image_only = True
    stochastic = True
    map_reduction = "none"

    def __init__(
        self,
        num_masks: int = 4000,
        grid_size: int = 7,
        keep_probability: float = 0.5,
        baseline: BaselineSpec = "zero",
        score: ScoreKind = "probability",
        **common,
    ) -> None:
        super().__init__(**common)
        if num_masks < 1:
            raise ValueError(f"num_masks must be >= 1; got {num_masks}")
        if grid_size < 1:
            raise ValueError(f"grid_size must be >= 1; got {grid_size}")
        if not 0 < keep_probability <= 1:
            raise ValueError(f"keep_probability must be in (0, 1]; got {keep_probability}")
        if score not in ("logit", "probability"):
            raise ValueError(f"score must be 'logit' or 'probability'; got {score!r}")
        self.num_masks = num_masks
        self.grid_size = grid_size
        self.keep_probability = keep_probability
        self.baseline = baseline
        self.score = score

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        batch, _, height, width = inputs.shape
        s = self.grid_size
        # All random numbers first (on the inputs' device, shared by the batch): max_batch cannot change them.
        device = inputs.device
        generator = device_generator(device)
        grids = (torch.rand(self.num_masks, s, s, device=device, generator=generator) < self.keep_probability).float()
        shifts = torch.stack(
            [
                torch.randint(0, math.ceil(height / s), (self.num_masks,), device=device, generator=generator),
                torch.randint(0, math.ceil(width / s), (self.num_masks,), device=device, generator=generator),
            ],
            dim=1,
        )
        targets, _ = explained.resolve(inputs, target, labels)
        baselines = make_baseline(self.baseline, inputs)
        saliency = torch.zeros(batch, height, width, dtype=torch.float64, device=inputs.device)
        total = batch * self.num_masks
        for rows in explained.slices(total):
            first_mask, last_mask = rows.start // batch, (rows.stop - 1) // batch
            masks = rise_masks(grids[first_mask : last_mask + 1], shifts[first_mask : last_mask + 1], height, width)
            index = torch.arange(rows.start, rows.stop, device=inputs.device)
            example, mask = index % batch, index // batch - first_mask
            chosen = masks[mask].unsqueeze(1).to(inputs.dtype)
            rows_input = inputs[example] * chosen + baselines[example] * (1 - chosen)
            scores = explained.scores(rows.stop - rows.start, rows_input.__getitem__, targets[example], self.score)
            saliency.index_add_(0, example, scores.double().view(-1, 1, 1) * masks[mask].double())
        saliency /= self.num_masks * self.keep_probability
        return saliency.to(inputs.dtype), None
