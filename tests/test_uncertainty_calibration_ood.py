"""Calibration, temperature scaling and OOD scores against hand computations, torchmetrics and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torchmetrics.classification import MulticlassCalibrationError

from xai_lightning.uncertainty import (
    CalibrationBins,
    calibration_report,
    cross_fitted_probs,
    expected_calibration_error,
    fit_temperature,
    fpr_at_tpr,
    ood_auroc,
    ood_detection,
)


def two_class(confidences: list[float], correct: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions of class 0 with the given confidences; the label is 0 where ``correct``."""
    c = torch.tensor(confidences, dtype=torch.float64)
    probs = torch.stack([c, 1 - c], dim=1)
    labels = torch.tensor([0 if ok else 1 for ok in correct])
    return probs, labels


def test_perfectly_calibrated_predictor_has_zero_ece():
    # Exactly calibrated by construction: in each bin, the fraction correct equals the confidence.
    confidences, correct = [], []
    for confidence in (0.6, 0.7, 0.8, 0.9, 1.0):
        hits = round(confidence * 10)
        confidences += [confidence] * 10
        correct += [True] * hits + [False] * (10 - hits)
    probs, labels = two_class(confidences, correct)
    report = calibration_report(probs, labels)
    assert report.ece == pytest.approx(0.0, abs=1e-12)
    assert report.mce == pytest.approx(0.0, abs=1e-12)
    # Calibrated in distribution (labels drawn from the predicted probabilities): ECE ≈ 0 up to sampling noise.
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(200_000, 4, generator=generator)
    probs = logits.softmax(-1)
    labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    assert expected_calibration_error(probs, labels) < 0.005


def test_overconfident_predictor_matches_the_hand_computation():
    # Bin of 0.95: 10 predictions, 5 right -> gap 0.45; bin of 0.55: 10 predictions, 5 right -> gap 0.05.
    probs, labels = two_class([0.95] * 10 + [0.55] * 10, ([True] * 5 + [False] * 5) * 2)
    report = calibration_report(probs, labels)
    assert report.ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)
    assert report.mce == pytest.approx(0.45)
    assert report.accuracy == pytest.approx(0.5) and report.confidence == pytest.approx(0.75)
    nll = (5 * -math.log(0.95) + 5 * -math.log(0.05) + 5 * -math.log(0.55) + 5 * -math.log(0.45)) / 20
    brier = (5 * 2 * 0.05**2 + 5 * 2 * 0.95**2 + 5 * 2 * 0.45**2 + 5 * 2 * 0.55**2) / 20
    assert report.nll == pytest.approx(nll) and report.brier == pytest.approx(brier)
    assert report.bin_count.sum() == 20 and report.bin_count[14] == 10 and report.bin_count[8] == 10
    assert report.bin_accuracy[14] == pytest.approx(0.5) and report.bin_confidence[14] == pytest.approx(0.95)
    assert torch.isnan(report.bin_accuracy[0])  # empty bins are NaN, not 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_and_mce_agree_with_torchmetrics(seed):
    generator = torch.Generator().manual_seed(seed)
    logits = 2.5 * torch.randn(3000, 7, generator=generator)
    probs = logits.softmax(-1)
    labels = torch.randint(0, 7, (3000,), generator=generator)
    labels[:1500] = probs[:1500].argmax(1)  # mix of right and wrong predictions
    for norm, ours in (("l1", "ece"), ("max", "mce")):
        reference = MulticlassCalibrationError(num_classes=7, n_bins=15, norm=norm)
        expected = float(reference(probs, labels))
        assert getattr(calibration_report(probs, labels, 15), ours) == pytest.approx(expected, abs=1e-6), norm


def test_confidence_one_is_in_the_last_bin_and_batches_accumulate():
    probs, labels = two_class([1.0, 1.0, 0.99, 0.5], [True, False, True, True])
    report = calibration_report(probs, labels, num_bins=10)
    assert report.bin_count.tolist() == [0] * 5 + [1] + [0] * 3 + [3]
    metric = CalibrationBins(num_bins=10)
    metric.update(probs[:2], labels[:2])
    metric.update(probs[2:], labels[2:])
    accumulated = metric.report()
    assert accumulated.scalars() == pytest.approx(report.scalars())
    assert torch.equal(accumulated.bin_count, report.bin_count)
    with pytest.raises(ValueError, match="softmax"):
        calibration_report(torch.randn(4, 3) * 5, torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(true_temperature):
    # Labels are drawn from softmax(u); the model reports z = T·u, so the calibrating temperature is T.
    generator = torch.Generator().manual_seed(1)
    calibrated = 2.0 * torch.randn(20_000, 10, generator=generator)
    labels = torch.multinomial(calibrated.softmax(-1), 1, generator=generator).squeeze(1)
    fit = fit_temperature(calibrated * true_temperature, labels)
    assert fit.temperature == pytest.approx(true_temperature, rel=0.05)
    assert fit.nll_after <= fit.nll_before
    # Scaling fixes the calibration, evaluated out of sample (cross-fitted).
    logits = calibrated * true_temperature
    before = expected_calibration_error(logits.softmax(-1), labels)
    after = expected_calibration_error(cross_fitted_probs(logits, labels), labels)
    assert after < 0.02 < before


def test_temperature_scaling_runs_inside_inference_mode():
    logits, labels = torch.randn(64, 3), torch.randint(0, 3, (64,))
    with torch.inference_mode():
        fit = fit_temperature(logits, labels)
    assert fit.temperature > 0


def sklearn_fpr_at_95(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    # In-distribution inputs are the positives, scored by confidence = -uncertainty.
    y = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    fpr, tpr, _ = roc_curve(y, -np.r_[in_scores, out_scores], drop_intermediate=False)
    return float(fpr[tpr >= 0.95].min())


@pytest.mark.parametrize(
    "seed,n_in,n_out,decimals", [(0, 200, 150, 1), (1, 97, 301, 2), (2, 1000, 40, 6), (3, 20, 20, 0)]
)
def test_auroc_and_fpr95_agree_with_scikit_learn(seed, n_in, n_out, decimals):
    rng = np.random.default_rng(seed)
    in_scores = np.round(rng.normal(0.0, 1.0, n_in), decimals)  # rounding makes ties
    out_scores = np.round(rng.normal(0.8, 1.2, n_out), decimals)
    y = np.r_[np.zeros(n_in), np.ones(n_out)]
    expected_auroc = roc_auc_score(y, np.r_[in_scores, out_scores])
    assert ood_auroc(torch.tensor(in_scores), torch.tensor(out_scores)) == pytest.approx(expected_auroc, abs=1e-12)
    assert fpr_at_tpr(torch.tensor(in_scores), torch.tensor(out_scores)) == pytest.approx(
        sklearn_fpr_at_95(in_scores, out_scores), abs=1e-12
    )


def test_ood_extremes_and_errors():
    inside, outside = torch.arange(10.0), torch.arange(10.0) + 100
    result = ood_detection(inside, outside)
    assert result.auroc == 1.0 and result.fpr95 == 0.0
    assert ood_auroc(outside, inside) == 0.0 and fpr_at_tpr(outside, inside) == 1.0
    assert ood_auroc(torch.ones(5), torch.ones(7)) == 0.5  # all tied: chance
    with pytest.raises(ValueError, match="both sets"):
        ood_auroc(torch.ones(3), torch.ones(0))


def test_reliability_diagram_draws_the_bins():
    from xai_lightning.logging.reliability import reliability_diagram

    probs, labels = two_class([0.95] * 10 + [0.55] * 10, ([True] * 5 + [False] * 5) * 2)
    report = calibration_report(probs, labels)
    figure = reliability_diagram(
        report.bin_edges, report.bin_accuracy, report.bin_confidence, report.bin_count, title="test", ece=report.ece
    )
    diagram, histogram = figure.axes
    accuracy_bars = [patch for patch in diagram.patches if patch.get_facecolor()[2] > 0.5][:2]  # tab:blue bars
    assert sorted(round(bar.get_height(), 6) for bar in accuracy_bars) == [0.5, 0.5]
    assert sum(patch.get_height() for patch in histogram.patches) == pytest.approx(1.0)
    assert any("ECE = 0.250" in text.get_text() for text in diagram.texts)
    with pytest.raises(ValueError, match="B \\+ 1 edges"):
        reliability_diagram([0, 0.5, 1], [0.1], [0.2], [3])


def test_shifted_concept_world_shows_only_unseen_values_and_leaves_the_original_alone():
    from xai_lightning.data import (
        COLOURS,
        SHAPES,
        TEXTURES,
        UNSEEN_COLOURS,
        UNSEEN_SHAPES,
        UNSEEN_TEXTURES,
        ConceptWorld,
    )

    world = ConceptWorld(60, seed=3)
    before = world.render(world.latent).images.clone()
    colours = world.shifted("colour", num_samples=40)
    assert colours.images.shape == (40, 3, 32, 32) and colours.shift == "colour" and colours.labels_meaningful
    assert set(colours.colours) == set(UNSEEN_COLOURS) and not set(UNSEEN_COLOURS) & set(COLOURS)
    assert colours.shapes == world.shapes and colours.class_names == world.class_names
    # Every object pixel has an unseen colour (ink) or its dark shade: none has a training colour.
    object_pixels = colours.images.permute(0, 2, 3, 1)[colours.regions == 1]
    palette = torch.tensor(list(COLOURS.values()))
    shades = torch.cat([palette, 0.38 * palette])
    assert (torch.cdist(object_pixels, shades).min(1).values > 0.05).all()
    textures = world.shifted("texture")
    assert set(textures.textures) == set(UNSEEN_TEXTURES) and not set(UNSEEN_TEXTURES) & set(TEXTURES)
    shapes = world.shifted("shape")
    assert set(shapes.shapes) == set(UNSEEN_SHAPES) and not set(UNSEEN_SHAPES) & set(SHAPES)
    assert not shapes.labels_meaningful  # the label is the shape, which is now unseen
    assert torch.equal(world.render(world.latent).images, before) and world.shift is None
    with pytest.raises(ValueError, match="shift kind"):
        world.shifted("size")
