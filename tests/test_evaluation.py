"""Localisation and stability scores against hand-computed values and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from xai_lightning.evaluation import (
    average_ranks,
    energy_in_mask,
    pointing_game,
    spearman_correlation,
    uniform_energy_in_mask,
)


def test_energy_in_mask_by_hand():
    maps = torch.tensor([[[1.0, 3.0], [0.0, -5.0]], [[0.0, 0.0], [0.0, 0.0]]])
    masks = torch.tensor([[[False, True], [False, True]], [[True, False], [False, False]]])
    energy = energy_in_mask(maps, masks)
    assert energy[0] == pytest.approx(3.0 / 4.0)  # negative values carry no energy
    assert torch.isnan(energy[1])  # an empty map localises nothing
    assert uniform_energy_in_mask(masks).tolist() == [0.5, 0.25]
    assert energy_in_mask(torch.ones(2, 2, 2), masks).tolist() == uniform_energy_in_mask(masks).tolist()


def test_pointing_game_with_and_without_tolerance():
    maps = torch.zeros(3, 5, 5)
    maps[0, 1, 1] = 1.0  # peak on the mask
    maps[1, 4, 4] = 1.0  # peak one pixel off the mask
    masks = torch.zeros(3, 5, 5, dtype=torch.bool)
    masks[:, 1:4, 1:4] = True
    hits = pointing_game(maps, masks)
    assert hits[0] == 1.0 and hits[1] == 0.0 and torch.isnan(hits[2])
    assert pointing_game(maps, masks, tolerance=1)[1] == 1.0


def test_mask_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 4, 4\).*\(2, 8, 8\)"):
        energy_in_mask(torch.rand(2, 4, 4), torch.ones(2, 8, 8, dtype=torch.bool))


def test_spearman_matches_scipy_with_ties():
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (5, 6, 6), generator=generator).float()  # many ties, like ReLU'd maps
    b = a + torch.rand(5, 6, 6, generator=generator) * 3
    ours = spearman_correlation(a, b)
    for i in range(5):
        expected = spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert ours[i].item() == pytest.approx(expected, abs=1e-6)
    values = torch.tensor([[3.0, 1.0, 3.0, 2.0]])
    assert average_ranks(values).tolist() == [[3.5, 1.0, 3.5, 2.0]]
    assert torch.isnan(spearman_correlation(torch.zeros(1, 3, 3), torch.rand(1, 3, 3))).all()
    np.testing.assert_allclose(spearman_correlation(b, b).numpy(), 1.0, atol=1e-6)
