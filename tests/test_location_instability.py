"""Location instability (Zhang et al. 2018) on ConceptWorld landmarks: planted filters and a hand-computed case."""

from __future__ import annotations

import math

import pytest
import torch

from xai_lightning import ConceptWorld
from xai_lightning.explainer import filter_peaks, location_instability


def maps_peaking_at(points: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, size, size)`` maps whose maximum is the cell containing each ``(x, y)`` fraction."""
    n = points.shape[0]
    maps = torch.rand(n, size, size, generator=torch.Generator().manual_seed(0)) * 0.5
    col = (points[:, 0] * size).floor().clamp(0, size - 1).long()
    row = (points[:, 1] * size).floor().clamp(0, size - 1).long()
    maps[torch.arange(n), row, col] = 1.0 + torch.rand(n, generator=torch.Generator().manual_seed(1))
    return maps


@pytest.fixture(scope="module")
def world() -> ConceptWorld:
    return ConceptWorld(num_samples=200, seed=3)


def test_filter_peaks_are_cell_centres_in_image_fractions():
    maps = torch.zeros(1, 1, 4, 8)
    maps[0, 0, 3, 1] = 2.0
    positions, scores = filter_peaks(maps)
    assert positions[0, 0].tolist() == pytest.approx([(1 + 0.5) / 8, (3 + 0.5) / 4])
    assert scores[0, 0].item() == 2.0


def test_planted_centre_filter_is_stable_and_random_filter_is_not(world):
    landmarks = world.landmarks()  # (N, 5, 2): centre, then corners (NaN for circles)
    size = 32
    centre_filter = maps_peaking_at(landmarks[:, 0], size)
    random_points = torch.rand(len(world), 2, generator=torch.Generator().manual_seed(4))
    random_filter = maps_peaking_at(random_points, size)
    maps = torch.stack([centre_filter, random_filter], dim=1)  # (N, 2, h, w)
    positions, scores = filter_peaks(maps)
    centre_only = location_instability(positions, scores, landmarks[:, :1], top_k=100)
    # Quantisation to a 32-cell grid is the only error: at most half a cell's diagonal over the image diagonal.
    assert centre_only.per_filter[0].item() < 0.5 / size
    assert centre_only.per_filter[1].item() > 0.1
    everything = location_instability(positions, scores, landmarks, top_k=100)
    assert everything.per_filter[0].item() < 0.5 * everything.per_filter[1].item()
    assert everything.mean == pytest.approx(everything.per_filter.mean().item(), rel=1e-6)


def test_corner_landmarks_reward_a_corner_detector(world):
    """A filter that fires on the first corner is stable relative to that corner, a centre filter less so."""
    corners = world.corner_landmarks()  # (N, 4, 2)
    has_corner = ~corners[:, 0, 0].isnan()
    corners = corners[has_corner]
    landmarks = world.landmarks()[has_corner][:, 1:2]  # the first corner only
    corner_filter = maps_peaking_at(corners[:, 0].clamp(0, 0.999), 32)
    centre_filter = maps_peaking_at(world.landmarks()[has_corner][:, 0], 32)
    positions, scores = filter_peaks(torch.stack([corner_filter, centre_filter], dim=1))
    result = location_instability(positions, scores, landmarks, top_k=200)
    assert result.per_filter[0].item() < 0.5 / 32
    assert result.per_filter[1].item() > 2 * result.per_filter[0].item()


def test_hand_computed_instability_with_missing_landmarks_and_top_k():
    # Three images, one filter; landmark 1 is missing on image 2. Image 3 has the lowest score and is dropped.
    positions = torch.tensor([[[0.5, 0.5]], [[0.5, 0.5]], [[0.0, 0.0]]])
    scores = torch.tensor([[3.0], [2.0], [1.0]])
    landmarks = torch.tensor(
        [
            [[0.5, 0.8], [0.1, 0.5]],
            [[0.5, 0.6], [float("nan"), float("nan")]],
            [[0.9, 0.9], [0.9, 0.9]],
        ]
    )
    result = location_instability(positions, scores, landmarks, top_k=2, image_size=(10, 10))
    diagonal = math.sqrt(2)
    # landmark 0: distances 0.3 and 0.1 (fractions of a side) → std 0.1 → / diagonal
    assert result.per_landmark[0, 0].item() == pytest.approx(0.1 / diagonal, rel=1e-5)
    assert math.isnan(result.per_landmark[0, 1].item())  # one image only: undefined
    assert result.per_filter[0].item() == pytest.approx(0.1 / diagonal, rel=1e-5)
    assert sorted(result.top_images[:, 0].tolist()) == [0, 1]


def test_silent_filters_are_undefined_not_stable():
    positions = torch.rand(5, 1, 2)
    result = location_instability(positions, torch.zeros(5, 1), torch.rand(5, 1, 2), top_k=5)
    assert math.isnan(result.mean) and math.isnan(result.per_filter[0].item())


def test_bad_shapes_name_both_shapes():
    with pytest.raises(ValueError, match=r"landmarks must be \(N, L, 2\) with N = 4"):
        location_instability(torch.rand(4, 2, 2), torch.rand(4, 2), torch.rand(3, 5, 2))
    with pytest.raises(ValueError, match="top_k"):
        location_instability(torch.rand(4, 2, 2), torch.rand(4, 2), torch.rand(4, 5, 2), top_k=1)
