"""Sanity checks (Adebayo et al. 2018): similarities against scikit-image and SciPy, randomised copies that
never touch the model, and the published result reproduced on a trained ConceptWorld model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from skimage.feature import hog
from skimage.metrics import structural_similarity as skimage_ssim
from torch import nn

from xai_lightning import ConceptWorld
from xai_lightning.attribution import get_method
from xai_lightning.core import isolated_rng
from xai_lightning.evaluation.sanity import (
    ModelParameterRandomisation,
    hog_features,
    hog_pearson,
    map_similarity,
    model_parameter_randomisation,
    randomisable_layers,
    randomised_copies,
    scaled_magnitude,
    spearman_abs,
    spearman_signed,
    ssim,
    structural_similarity,
)


def random_maps(count=4, size=32, seed=0, signed=True):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(count, size, size, generator=generator, dtype=torch.float64)
    b = a + torch.randn(count, size, size, generator=generator, dtype=torch.float64) * 1.5
    return (a, b) if signed else (a.abs(), b.abs())


def test_ssim_matches_scikit_image():
    a, b = random_maps()
    ours = structural_similarity(scaled_magnitude(a), scaled_magnitude(b))
    for i in range(a.shape[0]):
        theirs = skimage_ssim(scaled_magnitude(a)[i].numpy(), scaled_magnitude(b)[i].numpy(), data_range=1.0)
        assert float(ours[i]) == pytest.approx(theirs, abs=1e-10)
    assert ssim(a, a).tolist() == pytest.approx([1.0] * 4)


@pytest.mark.parametrize(("size", "cell", "block"), [(32, 4, 2), (32, 8, 3), (24, 6, 2)])
def test_hog_matches_scikit_image(size, cell, block):
    a, _ = random_maps(size=size, signed=False)
    ours = hog_features(a, pixels_per_cell=cell, cells_per_block=block)
    for i in range(a.shape[0]):
        theirs = hog(
            a[i].numpy(),
            orientations=9,
            pixels_per_cell=(cell, cell),
            cells_per_block=(block, block),
            block_norm="L2-Hys",
            feature_vector=True,
        )
        # scikit-image sums each cell in C float (32 bit): agreement to ~1e-7
        np.testing.assert_allclose(ours[i].numpy(), theirs, rtol=1e-6, atol=1e-7)


def test_spearman_similarities_match_scipy_and_constants_score_zero():
    a, b = random_maps(size=12)
    for i in range(a.shape[0]):
        signed = spearmanr(a[i].flatten(), b[i].flatten()).statistic
        absolute = spearmanr(a[i].abs().flatten(), b[i].abs().flatten()).statistic
        assert float(spearman_signed(a, b)[i]) == pytest.approx(signed, abs=1e-6)
        assert float(spearman_abs(a, b)[i]) == pytest.approx(absolute, abs=1e-6)
    assert float(spearman_abs(a, -a).min()) == pytest.approx(1.0) and float(
        spearman_signed(a, -a).max()
    ) == pytest.approx(-1.0)
    zero = torch.zeros_like(a)
    for name in ("spearman_abs", "spearman", "hog_pearson"):
        assert map_similarity(name, a, zero).tolist() == [0.0] * 4, name
        assert map_similarity(name, a, torch.full_like(a, float("nan"))).tolist() == [0.0] * 4, name
    assert torch.isfinite(ssim(a, zero)).all()
    assert hog_pearson(a, a).tolist() == pytest.approx([1.0] * 4)
    with pytest.raises(ValueError, match=r"differ in shape: \(4, 12, 12\) vs \(4, 6, 6\)"):
        spearman_abs(a, a[:, :6, :6])
    with pytest.raises(ValueError, match="Unknown similarity 'pearson'"):
        map_similarity("pearson", a, b)


def small_bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


def storages(module: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in list(module.parameters()) + list(module.buffers())}


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_randomised_copies_never_alias_or_touch_the_model(mode):
    model = small_bn_net()
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)  # trained-looking buffers, which reset_parameters() resets
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    layers = randomisable_layers(model)
    assert layers == ["5", "1", "0"]
    seen = []
    for step, (layer, copy) in enumerate(randomised_copies(model, mode, seed=3)):
        assert not storages(copy) & storages(model)
        changed = {
            name.rsplit(".", 1)[0]
            for name, value in copy.state_dict().items()
            if name.split(".")[0] in layers and not torch.equal(value, before[name])
        }
        expected = set(layers[: step + 1]) if mode == "cascading" else {layer}
        assert changed == expected, (step, changed)
        seen.append(layer)
    assert seen == layers
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(torch.get_rng_state(), rng)
    with pytest.raises(
        ValueError, match=r"Cannot randomise \['2'\].*Randomisable layers, top first: \['5', '1', '0'\]"
    ):
        next(randomised_copies(model, layers=["2"]))


def test_parameter_randomisation_keeps_maps_and_the_torchmetric_averages_batches():
    model = small_bn_net()
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    result = model_parameter_randomisation(model, x, "predicted", "saliency", keep_maps=True, seed=1)
    assert result.maps.shape == (3, 6, 8, 8) and result.original.shape == (6, 8, 8)
    assert set(result.similarity) == {"spearman_abs", "spearman", "ssim", "hog_pearson"}
    # The same seed gives the same copies: the first step's map is the classifier-randomised model's.
    copy = next(randomised_copies(model, seed=1))[1]
    method = get_method("saliency")
    torch.testing.assert_close(result.maps[0], method.to_map(method.attribute(copy, x, result.targets)))
    metric = ModelParameterRandomisation(model, method="saliency", seed=1, similarities=["spearman_abs", "ssim"])
    metric.update(x[:2], None, result.targets[:2])
    metric.update(x[2:], None, result.targets[2:])
    curves = metric.compute()
    torch.testing.assert_close(curves["spearman_abs"], result.curve("spearman_abs").float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(curves["ssim"], result.curve("ssim").float(), atol=1e-6, rtol=0)


# ------------------------------------------------------------------ the published result
TOP_LAYERS = 5  # classifier, then the last stage's BN, conv, BN, conv


@pytest.fixture(scope="module")
def shape_probe():
    world = ConceptWorld(16, seed=5)
    return world.tensors()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_published_sanity_check_result_on_a_trained_model(trained_shape_model, shape_probe, seed):
    """Adebayo et al. (2018), Fig. 2: as the top layers are re-initialised (cascading), gradient and
    Grad-CAM maps decorrelate from the trained model's, Guided Backprop's stay highly similar.

    Margins, from seeds 0-4 of the re-initialisation (1 and 2 threads): Guided Backprop's mean
    Spearman ρ (abs) over the top 5 steps 0.92-0.94; gradient 0.70-0.75; Grad-CAM 0.12-0.45."""
    images, labels = shape_probe
    model = trained_shape_model
    layers = randomisable_layers(model)[:TOP_LAYERS]
    curves = {}
    for method in ("saliency", "gradcam", "guided_backprop"):
        result = model_parameter_randomisation(
            model, images, labels, get_method(method), layers=layers, seed=seed, similarities=["spearman_abs"]
        )
        curves[method] = result.curve("spearman_abs")
    assert float(curves["guided_backprop"].mean()) > 0.85
    assert float(curves["guided_backprop"].min()) > 0.8
    assert float(curves["saliency"].mean()) < float(curves["guided_backprop"].mean()) - 0.1
    assert float(curves["saliency"][-1]) < 0.75  # the gradient decorrelates ...
    assert float(curves["saliency"][-1]) < float(curves["saliency"][0]) - 0.05  # ... more with every stage
    assert float(curves["gradcam"].mean()) < 0.6
    assert float(curves["gradcam"].mean()) < float(curves["guided_backprop"].mean()) - 0.3


def test_randomisation_leaves_the_trained_model_and_rng_untouched(trained_shape_model, shape_probe):
    images, labels = shape_probe
    before = {k: v.clone() for k, v in trained_shape_model.state_dict().items()}
    with isolated_rng():
        torch.manual_seed(7)
        expected = torch.rand(3)
        torch.manual_seed(7)
        model_parameter_randomisation(
            trained_shape_model, images[:4], labels[:4], "saliency", layers=randomisable_layers(trained_shape_model)[:2]
        )
        assert torch.equal(torch.rand(3), expected)
    for key, value in trained_shape_model.state_dict().items():
        assert torch.equal(value, before[key]), key
