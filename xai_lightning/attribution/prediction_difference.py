"""Prediction Difference Analysis (Zintgraf, Cohen, Adel & Welling, "Visualizing Deep Neural
Network Decisions: Prediction Difference Analysis", ICLR 2017).

The relevance of a ``k × k`` window ``w`` of the image (all channels) is its *weight of evidence*

    WE_w = log₂ odds(c | x) − log₂ odds(c | x∖w),    odds(p) = p / (1 − p),

where ``p(c | x∖w) = E[p(c | x̃)]`` over images ``x̃`` whose window is resampled while the rest of
``x`` is kept, estimated with ``num_samples`` draws:

* ``"marginal"`` sampling: the window's pixels are copied from a random image of the reference
  data at the same location;
* ``"conditional"`` sampling (the paper's improvement): the window is drawn from a Gaussian over
  ``l × l`` patches (``l = k + 2·neighbourhood``) fitted on the reference data, conditioned on the
  ``l × l`` neighbourhood of the window in ``x`` (reflect-padded at the image border).

Probabilities get the paper's Laplace correction ``p ← (p·n + 1)/(n + K)`` (``n`` =
``laplace_count``, ``K`` classes), so ``p = 1`` has finite odds. A pixel's relevance is the mean
WE of the windows covering it (windows slide with ``stride``). Positive: evidence for the class.

Reference data: :meth:`PredictionDifferenceAnalysis.fit` stores images (e.g. a training batch);
without it the explained batch itself is the reference (needs ≥ 2 images for marginal sampling).
Batched: the ``B × windows × num_samples`` resampled images are built slice by slice under
``max_batch``; every random draw is made up front and shared by the examples, so results depend
neither on ``max_batch`` nor (with fitted reference data) on the other examples of the batch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.core import ObserverGuard, TargetSpec

__all__ = ["PredictionDifferenceAnalysis", "window_origins", "weight_of_evidence"]

Sampling = Literal["marginal", "conditional"]


def window_origins(size: int, window: int, stride: int) -> list[int]:
    """Top/left offsets of windows covering ``0 … size − 1`` (the last one flush with the border)."""
    if window > size:
        raise ValueError(f"window_size {window} is larger than the image side {size}")
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def weight_of_evidence(p_with: torch.Tensor, p_without: torch.Tensor, count: int, classes: int) -> torch.Tensor:
    """``log₂ odds(p_with) − log₂ odds(p_without)`` after Laplace correction with ``count`` and ``classes``."""

    def log2_odds(p: torch.Tensor) -> torch.Tensor:
        p = (p.double() * count + 1) / (count + classes)
        return torch.log2(p) - torch.log2(1 - p)

    return log2_odds(p_with) - log2_odds(p_without)


class _PatchGaussian:
    """Gaussian over vectorised ``(C, l, l)`` patches, conditioned on the outer ring for the inner ``k × k``."""

    def __init__(self, data: torch.Tensor, window: int, neighbourhood: int, jitter: float = 1e-4) -> None:
        side = window + 2 * neighbourhood
        channels = data.shape[1]
        padded = F.pad(data.double(), (neighbourhood,) * 4, mode="reflect")
        patches = F.unfold(padded, side).transpose(1, 2).reshape(-1, channels * side * side)
        mean = patches.mean(0)
        centred = patches - mean
        cov = centred.T @ centred / max(patches.shape[0] - 1, 1)
        cov += (
            jitter
            * cov.diagonal().mean().clamp_min(1e-12)
            * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        )
        grid = torch.zeros(channels, side, side, dtype=torch.bool)
        grid[:, neighbourhood : neighbourhood + window, neighbourhood : neighbourhood + window] = True
        inner = grid.flatten().nonzero().squeeze(1).to(data.device)
        outer = (~grid).flatten().nonzero().squeeze(1).to(data.device)
        sigma_oo = cov[outer][:, outer]
        sigma_io = cov[inner][:, outer]
        self.gain = torch.linalg.solve(sigma_oo, sigma_io.T).T  # Σ_io Σ_oo⁻¹
        conditional = cov[inner][:, inner] - self.gain @ sigma_io.T
        conditional = (conditional + conditional.T) / 2
        self.cholesky = torch.linalg.cholesky(
            conditional + jitter * torch.eye(len(inner), dtype=cov.dtype, device=cov.device)
        )
        self.mean_inner, self.mean_outer = mean[inner], mean[outer]
        self.inner, self.outer, self.side = inner, outer, side
        self.neighbourhood, self.window, self.channels = neighbourhood, window, channels

    def conditional_means(self, images: torch.Tensor, tops: list[int], lefts: list[int]) -> torch.Tensor:
        """``(B, windows, C·k·k)`` conditional means of every window given its neighbourhood in ``images``."""
        pad = self.neighbourhood
        padded = F.pad(images.double(), (pad,) * 4, mode="reflect")
        patches = F.unfold(padded, self.side)  # (B, C·l·l, positions) with stride 1
        positions_per_row = images.shape[-1] - self.window + 1
        index = torch.tensor([top * positions_per_row + left for top in tops for left in lefts], device=images.device)
        chosen = patches[:, :, index].transpose(1, 2)  # (B, windows, C·l·l)
        outer = chosen[..., self.outer] - self.mean_outer
        return self.mean_inner + outer @ self.gain.T


class PredictionDifferenceAnalysis(AttributionMethod):
    """Weight-of-evidence map ``(B, H, W)`` (images only), signed: positive supports the class.

    Args:
        window_size: ``k`` (paper: 4–10).
        stride: window step in pixels (1 = the paper's sliding window; 2 is 4× cheaper).
        num_samples: resamples per window (paper: 10).
        sampling: ``"conditional"`` (paper's) or ``"marginal"``.
        neighbourhood: border of the conditioning patch (``l = k + 2·neighbourhood``).
        laplace_count: ``n`` of the Laplace correction (paper: the training-set size).
    """

    name = "prediction_difference"
    title = "Prediction Difference"
    image_only = True
    stochastic = True
    map_reduction = "none"

    def __init__(
        self,
        window_size: int = 4,
        stride: int = 2,
        num_samples: int = 10,
        sampling: Sampling = "conditional",
        neighbourhood: int = 2,
        laplace_count: int = 1000,
        **common,
    ) -> None:
        super().__init__(**common)
        if window_size < 1 or stride < 1 or num_samples < 1 or neighbourhood < 0 or laplace_count < 1:
            raise ValueError(
                "window_size, stride, num_samples and laplace_count must be >= 1 and neighbourhood >= 0; got "
                f"{window_size}, {stride}, {num_samples}, {laplace_count}, {neighbourhood}"
            )
        if sampling not in ("marginal", "conditional"):
            raise ValueError(f"sampling must be 'marginal' or 'conditional'; got {sampling!r}")
        self.window_size = window_size
        self.stride = stride
        self.num_samples = num_samples
        self.sampling = sampling
        self.neighbourhood = neighbourhood
        self.laplace_count = laplace_count
        self._reference: torch.Tensor | None = None

    def fit(self, images: torch.Tensor) -> "PredictionDifferenceAnalysis":
        """Use ``images (N, C, H, W)`` (e.g. training images) as the reference data for sampling."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] < 1:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"Reference data are images (N, C, H, W); got {shape}")
        self._reference = images.detach().clone().float()
        return self

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        batch, channels, height, width = inputs.shape
        k = self.window_size
        reference = inputs if self._reference is None else self._reference.to(inputs.device, inputs.dtype)
        if tuple(reference.shape[1:]) != tuple(inputs.shape[1:]):
            raise ValueError(
                f"Reference images of shape {tuple(reference.shape[1:])} differ from the inputs' "
                f"{tuple(inputs.shape[1:])}; fit() on images of the explained size."
            )
        if self.sampling == "marginal" and reference.shape[0] < 2:
            raise ValueError("Marginal sampling needs reference images: call fit(images) or explain >= 2 images.")
        tops, lefts = window_origins(height, k, self.stride), window_origins(width, k, self.stride)
        origins = torch.tensor([(top, left) for top in tops for left in lefts], device=inputs.device)
        windows, samples = origins.shape[0], self.num_samples
        # Every random draw up front and shared by the examples (as the windows are): neither
        # max_batch nor an example's batch neighbours (e.g. DDP shards) change its draws.
        if self.sampling == "marginal":
            donors = torch.randint(0, reference.shape[0], (windows, samples)).to(inputs.device)
        else:
            if self.neighbourhood >= min(height, width):
                raise ValueError(f"neighbourhood {self.neighbourhood} must be smaller than the image side")
            gaussian = _PatchGaussian(reference, k, self.neighbourhood)
            means = gaussian.conditional_means(inputs, tops, lefts)  # (B, windows, C·k·k)
            noise = torch.randn(windows, samples, channels * k * k, dtype=torch.float64).to(inputs.device)

        probabilities = explained.predict(inputs).softmax(1)
        targets, _ = explained.resolve(inputs, target, labels)
        classes = probabilities.shape[1]
        p_with = probabilities.gather(1, targets.view(-1, 1)).squeeze(1)

        offsets = torch.arange(k, device=inputs.device)
        channel_index = torch.arange(channels, device=inputs.device).view(1, -1, 1, 1)

        def resampled(rows: slice) -> torch.Tensor:
            index = torch.arange(rows.start, rows.stop, device=inputs.device)
            example, window, sample = index // (windows * samples), (index // samples) % windows, index % samples
            top, left = origins[window, 0], origins[window, 1]
            ys = (top.view(-1, 1) + offsets).view(-1, 1, k, 1)
            xs = (left.view(-1, 1) + offsets).view(-1, 1, 1, k)
            if self.sampling == "marginal":
                patch = reference[donors[window, sample].view(-1, 1, 1, 1), channel_index, ys, xs]
            else:
                draw = means[example, window] + noise[window, sample] @ gaussian.cholesky.T
                patch = draw.view(-1, channels, k, k)
            images = inputs[example].clone()
            images[torch.arange(len(index), device=inputs.device).view(-1, 1, 1, 1), channel_index, ys, xs] = patch.to(
                inputs.dtype
            )
            return images

        total = batch * windows * samples
        p_rows = explained.scores(total, resampled, targets.repeat_interleave(windows * samples), "probability")
        p_without = p_rows.view(batch, windows, samples).double().mean(2)
        evidence = weight_of_evidence(p_with.view(-1, 1), p_without, self.laplace_count, classes)  # (B, windows)
        # Spread each window's WE over its pixels and average by coverage.
        spread = evidence.unsqueeze(1).expand(-1, k * k, -1)
        total_map = self._fold(spread, tops, lefts, height, width)
        coverage = self._fold(torch.ones_like(spread), tops, lefts, height, width)
        return (total_map / coverage.clamp_min(1)).to(inputs.dtype), None

    def _fold(self, values: torch.Tensor, tops: list[int], lefts: list[int], height: int, width: int) -> torch.Tensor:
        """Sum ``(B, k·k, windows)`` window values into ``(B, H, W)`` maps."""
        k = self.window_size
        out = torch.zeros(values.shape[0], height, width, dtype=values.dtype, device=values.device)
        grid = values.view(values.shape[0], k, k, len(tops), len(lefts))
        for i, top in enumerate(tops):  # windows per side (a few dozen), not per example
            for j, left in enumerate(lefts):
                out[:, top : top + k, left : left + k] += grid[..., i, j]
        return out
