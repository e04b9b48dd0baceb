"""Agreement with Quantus 0.6.0 (a test-only dependency): same model, inputs, maps and perturbations.

Quantus draws its subsets and noise from NumPy's global generator inside its loops. Instead of
reproducing its draw order, each test wraps Quantus's own perturbation function, records what
it produced, and hands exactly those subsets/perturbations to ours. ROAD's noise and MPRT's seeds
are fixed (noise 0; our seed = Quantus' seed + 1). Definitions that differ are compared where
they overlap (see the README section "Evaluating explanations").

Tolerances: Quantus runs the model in float32 on NumPy copies, we in float32 with channels-last
passes; scores agree to ~1e-6, so curves/AUCs are compared at 1e-5 (absolute) and correlations,
which divide small differences, at 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

quantus = pytest.importorskip("quantus")

from quantus.functions import perturb_func as quantus_perturb

from xai_lightning.attribution import Saliency
from xai_lightning.core import isolated_rng
from xai_lightning.evaluation import (
    faithfulness_correlation,
    infidelity,
    max_sensitivity,
    noisy_linear_imputation,
    perturbation_curve,
    pointing_game_score,
    relevance_mass,
    road_curve,
)
from xai_lightning.evaluation.sanity import model_parameter_randomisation

CURVE_TOLERANCE = 1e-5
CORRELATION_TOLERANCE = 1e-4


def small_net(channels: int, seed: int = 0) -> nn.Module:
    """A BN-free CNN whose random weights already give varied logits (the metrics need signal)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 5),
    )
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.mul_(3.0)
    return net.eval()


def batch(channels: int = 3, size: int = 8, count: int = 4, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(count, channels, size, size, generator=generator)
    maps = torch.rand(count, channels, size, size, generator=generator)  # continuous: no ties in any ranking
    return x, maps


def targets_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


class Recorder:
    """Wraps a Quantus perturbation function; remembers every call's indices and output."""

    def __init__(self, function):
        self.function = function
        self.indices: list[np.ndarray] = []
        self.inputs: list[np.ndarray] = []
        self.outputs: list[np.ndarray] = []

    def __call__(self, arr, indices, **kwargs):
        out = self.function(arr=arr, indices=indices, **kwargs)
        self.inputs.append(np.array(arr, copy=True))
        self.indices.append(np.array(indices, copy=True))
        self.outputs.append(np.array(out, copy=True))
        return out


def run_quantus(metric, model, x, y, a, **kwargs):
    with isolated_rng():  # Quantus seeds and draws from the global generators
        return metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=a.numpy(),
            channel_first=True,
            device="cpu",
            **kwargs,
        )


@pytest.mark.parametrize("score", ["probability", "logit"])
def test_deletion_curve_is_quantus_pixel_flipping(score):
    model = small_net(3)
    x, maps = batch()
    y = targets_of(model, x)
    features_in_step = 16  # Quantus wants it to divide H·W as well as C·H·W
    steps = maps[0].numel() // features_in_step
    ours = perturbation_curve(model, x, maps, y, mode="deletion", steps=steps, baseline="zero", score=score)
    theirs = run_quantus(
        quantus.PixelFlipping(
            features_in_step=features_in_step, perturb_baseline=0.0, normalise=False, abs=False, disable_warnings=True
        ),
        model,
        x,
        y,
        maps,
        softmax=score == "probability",
    )
    theirs = torch.tensor(np.asarray(theirs), dtype=torch.float32)
    assert theirs.shape == (4, steps)
    torch.testing.assert_close(ours.scores[:, 1:], theirs, atol=CURVE_TOLERANCE, rtol=0)
    their_auc = torch.tensor(np.trapezoid(theirs.numpy(), dx=1, axis=1))
    converted = steps * ours.auc.double() - (ours.scores[:, 0] + ours.scores[:, 1]).double() / 2
    torch.testing.assert_close(converted, their_auc.double(), atol=steps * CURVE_TOLERANCE, rtol=0)


def test_deletion_with_per_pixel_maps_of_one_channel_images_is_pixel_flipping():
    model = small_net(1)
    x, maps = batch(channels=1)
    y = targets_of(model, x)
    ours = perturbation_curve(model, x, maps[:, 0], y, mode="deletion", steps=8, baseline="zero")
    theirs = run_quantus(
        quantus.PixelFlipping(
            features_in_step=8, perturb_baseline=0.0, normalise=False, abs=False, disable_warnings=True
        ),
        model,
        x,
        y,
        maps,
    )
    torch.testing.assert_close(
        ours.scores[:, 1:], torch.tensor(np.asarray(theirs), dtype=torch.float32), atol=CURVE_TOLERANCE, rtol=0
    )


def test_faithfulness_correlation_on_quantus_subsets():
    model = small_net(3)
    x, maps = batch()
    y = targets_of(model, x)
    recorder = Recorder(quantus_perturb.batch_baseline_replacement_by_indices)
    metric = quantus.FaithfulnessCorrelation(
        nr_runs=20,
        subset_size=24,
        perturb_baseline=0.0,
        perturb_func=recorder,
        normalise=False,
        abs=False,
        return_aggregate=False,
        disable_warnings=True,
    )
    theirs = torch.tensor(run_quantus(metric, model, x, y, maps), dtype=torch.float64)
    subsets = torch.tensor(np.stack(recorder.indices, axis=1))  # (B, runs, k) input-element indices
    assert subsets.shape == (4, 20, 24)
    ours = faithfulness_correlation(model, x, maps, y, subsets=subsets, baseline="zero", score="logit")
    torch.testing.assert_close(ours.double(), theirs, atol=CORRELATION_TOLERANCE, rtol=0)
    assert theirs.abs().max() > 0.1  # a meaningful comparison, not of zeros


def test_infidelity_on_quantus_patch_sequence():
    model = small_net(3)
    x, maps = batch()
    y = targets_of(model, x)
    recorder = Recorder(quantus_perturb.batch_baseline_replacement_by_indices)
    metric = quantus.Infidelity(
        perturb_patch_sizes=[4],
        n_perturb_samples=1,
        perturb_baseline=0.0,
        perturb_func=recorder,
        normalise=False,
        abs=False,
        disable_warnings=True,
    )
    theirs = torch.tensor(np.asarray(run_quantus(metric, model, x, y, maps)), dtype=torch.float64)
    # Each call replaces one more patch of the running copy: I = x − (that copy).
    perturbed = torch.tensor(np.stack(recorder.outputs, axis=1)).view(4, -1, *x.shape[1:])
    assert perturbed.shape[1] == 4  # four 4×4 patches of an 8×8 image
    perturbations = x.unsqueeze(1) - perturbed
    ours = infidelity(model, x, maps, y, perturbations=perturbations, normalize=False, score="logit")
    torch.testing.assert_close(ours.double(), theirs, atol=1e-4, rtol=1e-5)
    assert theirs.min() > 1e-3


def saliency_numpy(model, inputs, targets, **kwargs):
    """Quantus' explain_func: our saliency (per input element, signed), NumPy in and out."""
    attribution = Saliency(abs=False).attribute(model, torch.as_tensor(inputs), torch.as_tensor(targets))
    return attribution.numpy()


def test_max_sensitivity_on_quantus_noise():
    model = small_net(3)
    x, _ = batch()
    y = targets_of(model, x)
    maps = Saliency(abs=False).attribute(model, x, y)
    recorder = Recorder(quantus_perturb.batch_uniform_noise)
    metric = quantus.MaxSensitivity(
        nr_samples=6, lower_bound=0.05, perturb_func=recorder, normalise=False, abs=False, disable_warnings=True
    )
    theirs = torch.tensor(
        np.asarray(run_quantus(metric, model, x, y, maps, explain_func=saliency_numpy)), dtype=torch.float64
    )
    noise = torch.tensor(np.stack(recorder.outputs, axis=1) - np.stack(recorder.inputs, axis=1)).float()
    noise = noise.view(4, 6, *x.shape[1:])
    ours = max_sensitivity(model, x, maps, y, explain=Saliency(abs=False), noise=noise, relative=True)
    torch.testing.assert_close(ours.double(), theirs, atol=1e-5, rtol=1e-4)
    assert theirs.min() > 1e-3


def test_noisy_linear_imputation_equals_quantus_sparse_solve():
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(3, 10, 12, generator=generator, dtype=torch.float64)
    removed_flat = torch.randperm(120, generator=generator)[:70]
    theirs = quantus_perturb.noisy_linear_imputation(arr=image.numpy(), indices=removed_flat.numpy(), noise=0.0)
    removed = torch.zeros(120, dtype=torch.bool)
    removed[removed_flat] = True
    ours = noisy_linear_imputation(image.unsqueeze(0), removed.view(1, 10, 12), noise=0.0)
    torch.testing.assert_close(ours[0], torch.tensor(theirs), atol=1e-8, rtol=0)


def test_road_morf_accuracy_curve_is_quantus_road():
    model = small_net(1)
    x, maps = batch(channels=1, size=8, count=6)
    y = targets_of(model, x)
    percentages = [10, 30, 50, 70, 90]
    metric = quantus.ROAD(percentages=percentages, noise=0.0, normalise=False, abs=False, disable_warnings=True)
    theirs = run_quantus(metric, model, x, y, maps)
    ours = road_curve(
        model, x, maps[:, 0], y, order="morf", fractions=[p / 100 for p in percentages], noise=0.0, score="accuracy"
    )
    assert ours.scores.mean(0).tolist() == pytest.approx([theirs[p] for p in percentages], abs=1e-6)
    assert len(set(ours.scores.mean(0).tolist())) > 1  # the curve moves: a meaningful comparison


def test_pointing_game_and_relevance_mass_are_quantus_localisation_metrics():
    x, maps = batch(channels=3, size=8, count=6)
    maps = maps[:, :1]  # per-pixel, non-negative, no ties
    masks = torch.zeros(6, 1, 8, 8, dtype=torch.bool)
    masks[:, :, 2:6, 1:5] = True
    y = torch.zeros(6, dtype=torch.long)
    model = small_net(3)
    quantus_pointing = run_quantus(
        quantus.PointingGame(normalise=False, abs=False, disable_warnings=True),
        model,
        x,
        y,
        maps,
        s_batch=masks.numpy(),
    )
    quantus_mass = run_quantus(
        quantus.RelevanceMassAccuracy(normalise=False, abs=False, disable_warnings=True),
        model,
        x,
        y,
        maps,
        s_batch=masks.numpy(),
    )
    pointing = pointing_game_score(x, maps, masks[:, 0])
    assert pointing.tolist() == [float(v) for v in quantus_pointing]
    assert 0 < pointing.sum() < 6
    torch.testing.assert_close(
        relevance_mass(x, maps, masks[:, 0]).double(),
        torch.tensor(quantus_mass, dtype=torch.float64),
        atol=1e-6,
        rtol=0,
    )


def saliency_map_numpy(model, inputs, targets, **kwargs):
    """Quantus' explain_func for MPRT: our per-pixel saliency map (max |gradient| over channels)."""
    method = Saliency()
    return method.to_map(method.attribute(model, torch.as_tensor(inputs), torch.as_tensor(targets))).numpy()[:, None]


@pytest.mark.parametrize(("mode", "order"), [("cascading", "top_down"), ("independent", "independent")])
def test_parameter_randomisation_is_quantus_mprt(mode, order):
    model = small_net(3)
    x, _ = batch(size=16, count=4)
    y = targets_of(model, x)
    original = saliency_map_numpy(model, x, y)
    metric = quantus.MPRT(layer_order=order, seed=42, abs=True, normalise=True, disable_warnings=True)
    theirs = run_quantus(metric, model, x, y, torch.tensor(original), explain_func=saliency_map_numpy)
    explain = Saliency()
    ours = model_parameter_randomisation(model, x, y, explain, mode=mode, seed=43, similarities=["spearman_abs"])
    assert ours.layers == ["6", "2", "0"]  # from the logits down (Quantus' "independent" goes bottom-up)
    assert sorted(name for name in theirs if name != "original") == sorted(ours.layers)
    for step, layer in enumerate(ours.layers):
        torch.testing.assert_close(
            ours.similarity["spearman_abs"][step],
            torch.tensor(theirs[layer], dtype=torch.float64),
            atol=CORRELATION_TOLERANCE,
            rtol=0,
        )
    assert ours.similarity["spearman_abs"][-1].mean() < 0.9  # randomisation changed the maps
