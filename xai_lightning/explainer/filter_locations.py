"""Location instability of conv filters: how consistently a filter fires on the same object part.

Zhang et al., "Interpreting CNN Knowledge via an Explanatory Graph" (AAAI 2018), used to evaluate
interpretable filters in "Interpretable Convolutional Neural Networks" (CVPR 2018) and explainer
networks (Zhang et al. 2018). For a filter ``f`` and each of its top-activating images ``I``, the
part it detects is inferred at the peak of its feature map, ``p̂_f(I)`` (the centre of the peak
cell, in image coordinates). For each annotated landmark ``k`` of the object, the distance
``d_k(I) = ‖p_k(I) − p̂_f(I)‖ / diagonal`` is normalised by the image diagonal. A filter that
always fires on the same part keeps these distances constant, so its instability is

    instability_f = mean_k  std_I d_k(I)

and the instability of a set of filters is the mean over filters. Lower is better.

Landmarks come as ``(x, y)`` fractions of the image width/height, e.g. from
:meth:`xai_lightning.data.ConceptWorld.landmarks` (the object's centre, then its corners; NaN where
a shape has fewer corners). Missing (NaN) landmarks are skipped image by image; a (filter,
landmark) pair needs at least two images where the landmark exists, and a filter needs at least
two images where it fires (peak > 0); undefined values are NaN and excluded from means.
The standard deviation is the population one (divide by the count).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LocationInstability", "filter_peaks", "location_instability"]


def filter_peaks(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Peak of every filter's map: ``maps (N, F, h, w)`` → ``positions (N, F, 2)``, ``scores (N, F)``.

    Positions are the centre of the maximal cell as ``(x, y)`` fractions of the map's width and
    height — the same frame as the landmarks when the map covers the image (stride-aligned,
    'same'-padded convolutions). Scores are the maximal activations.
    """
    if maps.dim() != 4:
        raise ValueError(f"maps must be (N, F, h, w); got {tuple(maps.shape)}")
    height, width = maps.shape[-2:]
    scores, flat = maps.flatten(2).max(dim=-1)
    y = torch.div(flat, width, rounding_mode="floor")
    x = flat - y * width
    positions = torch.stack([(x.float() + 0.5) / width, (y.float() + 0.5) / height], dim=-1)
    return positions, scores


@dataclass(frozen=True)
class LocationInstability:
    """Result of :func:`location_instability`.

    Attributes:
        mean: mean instability over the filters where it is defined (NaN if none).
        per_filter: ``(F,)`` instability of each filter (NaN where undefined).
        per_landmark: ``(F, L)`` std of the normalised distance to each landmark (NaN where undefined).
        top_images: ``(K, F)`` indices of each filter's top-activating images.
    """

    mean: float
    per_filter: torch.Tensor
    per_landmark: torch.Tensor
    top_images: torch.Tensor


def location_instability(
    positions: torch.Tensor,
    scores: torch.Tensor,
    landmarks: torch.Tensor,
    top_k: int = 20,
    image_size: tuple[int, int] = (1, 1),
) -> LocationInstability:
    """Zhang's location instability of ``F`` filters from their peaks on ``N`` images.

    Args:
        positions: ``(N, F, 2)`` peak positions as ``(x, y)`` fractions (see :func:`filter_peaks`).
        scores: ``(N, F)`` peak activations; each filter is evaluated on its ``top_k`` highest.
        landmarks: ``(N, L, 2)`` ground-truth part positions as ``(x, y)`` fractions, NaN where absent.
        top_k: images per filter (all ``N`` if larger).
        image_size: ``(height, width)`` of the images, only their ratio matters: distances are
            measured in pixels and divided by the diagonal ``sqrt(h² + w²)``.

    Returns:
        :class:`LocationInstability`.
    """
    if positions.dim() != 3 or positions.shape[-1] != 2:
        raise ValueError(f"positions must be (N, F, 2); got {tuple(positions.shape)}")
    if scores.shape != positions.shape[:2]:
        raise ValueError(f"scores {tuple(scores.shape)} must be (N, F) = {tuple(positions.shape[:2])}")
    if landmarks.dim() != 3 or landmarks.shape[-1] != 2 or landmarks.shape[0] != positions.shape[0]:
        raise ValueError(
            f"landmarks must be (N, L, 2) with N = {positions.shape[0]} images; got {tuple(landmarks.shape)}"
        )
    if top_k < 2:
        raise ValueError(f"top_k must be >= 2 (a standard deviation needs two images); got {top_k}")
    positions, scores, landmarks = positions.float(), scores.float(), landmarks.float().to(positions.device)
    k = min(top_k, positions.shape[0])
    top_scores, top = scores.topk(k, dim=0)  # (K, F)
    filters = torch.arange(positions.shape[1], device=positions.device)
    peaks = positions[top, filters.view(1, -1)]  # (K, F, 2)
    marks = landmarks[top]  # (K, F, L, 2)
    height, width = image_size
    scale = torch.tensor([width, height], dtype=torch.float32, device=positions.device)
    diagonal = float(height**2 + width**2) ** 0.5
    distance = ((marks - peaks.unsqueeze(2)) * scale).norm(dim=-1) / diagonal  # (K, F, L)
    valid = ~distance.isnan() & (top_scores > 0).unsqueeze(-1)
    count = valid.sum(0)  # (F, L)
    filled = torch.where(valid, distance, torch.zeros_like(distance))
    mean = filled.sum(0) / count.clamp_min(1)
    variance = (torch.where(valid, distance - mean, torch.zeros_like(distance)) ** 2).sum(0) / count.clamp_min(1)
    per_landmark = torch.where(count >= 2, variance.sqrt(), torch.full_like(variance, float("nan")))
    defined = ~per_landmark.isnan()
    per_filter = torch.where(
        defined.any(1),
        torch.where(defined, per_landmark, torch.zeros_like(per_landmark)).sum(1) / defined.sum(1).clamp_min(1),
        torch.full((per_landmark.shape[0],), float("nan"), device=per_landmark.device),
    )
    finite = per_filter[~per_filter.isnan()]
    return LocationInstability(
        mean=float(finite.mean()) if finite.numel() else float("nan"),
        per_filter=per_filter,
        per_landmark=per_landmark,
        top_images=top,
    )
