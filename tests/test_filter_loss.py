"""Filter loss of interpretable conv filters (Zhang, Wu & Zhu 2018) against a plainly written reference."""

from __future__ import annotations

import math

import pytest
import torch

from xai_lightning.explainer import (
    filter_loss,
    mask_to_peak,
    mutual_information,
    part_templates,
    template_entropy,
    template_log_priors,
)


def reference_templates(n: int, tau: float, beta: float) -> list[list[list[float]]]:
    """The paper's templates for an n × n map, written out: T_μ = τ·max(1 − β‖[i,j] − μ‖₁ / n, −1), T⁻ = −τ."""
    templates = []
    for mu_i in range(n):
        for mu_j in range(n):
            templates.append(
                [[tau * max(1 - beta * (abs(i - mu_i) + abs(j - mu_j)) / n, -1.0) for j in range(n)] for i in range(n)]
            )
    templates.append([[-tau] * n for _ in range(n)])
    return templates


def reference_mutual_information(maps: list[list[list[float]]], tau: float, beta: float = 4.0) -> float:
    """MI(X; T) = Σ_T p(T) Σ_x p(x|T) log(p(x|T)/p(x)), p(x|T) = exp(tr(x·T)) / Σ_x' exp(tr(x'·T)), in loops."""
    n = len(maps[0])
    templates = reference_templates(n, tau, beta)
    alpha = n * n / (1 + n * n)
    priors = [alpha / (n * n)] * (n * n) + [1 - alpha]

    def trace(x, t):
        return sum(x[i][j] * t[i][j] for i in range(n) for j in range(n))

    likelihood = []  # likelihood[t][x]
    for t in templates:
        scores = [math.exp(trace(x, t)) for x in maps]
        z = sum(scores)
        likelihood.append([s / z for s in scores])
    marginal = [sum(priors[t] * likelihood[t][x] for t in range(len(templates))) for x in range(len(maps))]
    return sum(
        priors[t] * likelihood[t][x] * math.log(likelihood[t][x] / marginal[x])
        for t in range(len(templates))
        for x in range(len(maps))
    )


def peaked_maps(positions: list[tuple[int, int]], n: int, height: float) -> torch.Tensor:
    """One map per position: the ReLU of the positive template bump at that position, peak ``height``."""
    templates = part_templates(n, n, tau=1.0)
    return torch.stack([height * templates[i * n + j].clamp_min(0) for i, j in positions])


def test_templates_match_the_paper_formula():
    ours = part_templates(4, 4, tau=0.3, beta=4.0)
    assert torch.allclose(ours, torch.tensor(reference_templates(4, 0.3, 4.0)), atol=1e-7)
    priors = template_log_priors(4, 4).exp()
    assert priors.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert priors[-1].item() == pytest.approx(1 / 17, rel=1e-6)


@pytest.mark.parametrize("tau", [None, 0.4])
def test_mutual_information_matches_the_reference_on_small_maps(tau):
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 3, 4, 4, generator=generator) * 20  # 6 images, 3 filters
    ours = mutual_information(maps, tau=tau)
    scale = 0.5 / 16 if tau is None else tau
    for f in range(3):
        expected = reference_mutual_information(maps[:, f].tolist(), scale)
        assert ours[f].item() == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert filter_loss(maps, tau=tau).item() == pytest.approx(-ours.mean().item(), rel=1e-6)


def test_filter_loss_is_lowest_for_maps_that_match_their_templates():
    n, tau, height = 5, 0.2, 30.0
    positions = [(0, 0), (1, 3), (2, 2), (4, 1), (3, 4), (0, 4)]
    matching = peaked_maps(positions, n, height)  # each image: one part at one place
    energy = matching.flatten(1).sum(1).view(-1, 1, 1)
    generator = torch.Generator().manual_seed(1)
    scattered = torch.rand(len(positions), n, n, generator=generator)
    scattered = scattered / scattered.flatten(1).sum(1).view(-1, 1, 1) * energy  # same energy, no part
    uniform = energy.expand(-1, n, n) / (n * n)
    same_place = peaked_maps([(2, 2)] * len(positions), n, height)  # one part, but never discriminative
    maps = torch.stack([matching, scattered, uniform, same_place], dim=1)  # (B, 4 filters, n, n)
    loss = -mutual_information(maps, tau=tau)
    assert loss.argmin().item() == 0, loss
    assert (loss[0] < loss[1:] - 0.05).all(), loss
    # Bounded by the template entropy, and all-zero maps carry no information.
    assert -loss[0].item() <= template_entropy(n, n) + 1e-6
    assert mutual_information(torch.zeros(4, 1, n, n)).abs().max().item() < 1e-6


def test_filter_loss_gradient_moves_a_map_towards_one_part():
    """A few gradient steps on the filter loss concentrate scattered maps (mass near the peak grows)."""
    n = 6
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(8, 1, n, n, generator=generator).requires_grad_(True)
    optimizer = torch.optim.SGD([logits], lr=5.0)

    def peak_share(maps):
        return (maps.flatten(2).max(-1).values / maps.flatten(2).sum(-1)).mean().item()

    start = peak_share(torch.relu(logits.detach()) + 1e-6)
    first = filter_loss(torch.relu(logits) * 10, tau=0.1).item()
    for _ in range(50):
        loss = filter_loss(torch.relu(logits) * 10, tau=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first - 0.1
    assert peak_share(torch.relu(logits.detach()) + 1e-6) > start


def test_mask_keeps_the_peak_and_suppresses_far_positions():
    maps = torch.rand(3, 2, 7, 7)
    maps[0, 0, 1, 5] = 10.0
    masked = mask_to_peak(maps)
    assert masked[0, 0, 1, 5].item() == 10.0
    assert masked[0, 0, 6, 0].item() == 0.0  # far from the peak: negative template region → ReLU → 0
    assert (masked <= maps + 1e-6).all() and (masked >= 0).all()
    assert torch.equal(masked.flatten(2).argmax(-1), maps.flatten(2).argmax(-1))
