"""Axioms and closed forms: completeness, summation-to-delta, linear models, CAM identities, localisation.

None of these compares with another implementation: each checks a property the paper proves
(or a closed form on a model simple enough to solve by hand), so they would catch a bug shared
by us and Captum.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ViewsItsInput
from torch import nn

from xai_lightning import CifarResNet, ConceptWorld, SmallCNN
from xai_lightning.attribution import attribute, available_methods, get_method
from xai_lightning.attribution.registry import _PERTURBATION_METHODS
from xai_lightning.evaluation import energy_in_mask, uniform_energy_in_mask


def _randomise_batchnorm(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(0.2 * torch.randn(size, generator=generator))
            module.running_var.copy_(0.5 + 1.5 * torch.rand(size, generator=generator))
            module.bias.data.copy_(0.2 * torch.randn(size, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def probe() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """16 held-out ConceptWorld images (a seed the fixture model never saw), labels, object masks."""
    world = ConceptWorld(16, seed=4242)
    masks = world.masks(torch.arange(16))[:, world.concept_index("object")]
    return world.images, world.labels, masks


# ------------------------------------------------------------------ completeness / summation-to-delta
def test_integrated_gradients_completeness_within_one_percent_at_50_steps(trained_shape_model, probe):
    images, labels, _ = probe
    x = images[:8]
    with torch.no_grad():
        logits = trained_shape_model(x).gather(1, labels[:8, None]).squeeze(1)
        baseline = trained_shape_model(torch.zeros_like(x)).gather(1, labels[:8, None]).squeeze(1)
    difference = logits - baseline  # computed here, independently of the reported delta
    errors = {}
    for rule in ("gauss_legendre", "trapezoid"):
        for steps in (10, 50):
            attributions, delta = attribute(
                trained_shape_model,
                x,
                labels[:8],
                "integrated_gradients",
                steps=steps,
                rule=rule,
                return_convergence_delta=True,
            )
            torch.testing.assert_close(attributions.flatten(1).sum(1) - difference, delta, atol=1e-4, rtol=0)
            errors[rule, steps] = float(delta.abs().sum() / difference.abs().sum())
    # Within 1 % of F(x) − F(x') over the batch at 50 steps, for both rules; a ReLU network is only
    # piecewise smooth along the path, so single examples may reach ~1.1 % (none exceeds 2 %).
    assert errors["gauss_legendre", 50] <= 0.01 and errors["trapezoid", 50] <= 0.01, errors
    assert (delta.abs() <= 0.02 * difference.abs()).all(), delta / difference
    # The error shrinks with more steps (and 10 steps are not enough): the check has teeth.
    assert errors["trapezoid", 10] > errors["trapezoid", 50] and errors["trapezoid", 10] > 0.01, errors


@pytest.mark.parametrize("which", ["small_cnn", "resnet"])
def test_deeplift_summation_to_delta(which):
    """Σ C = f(x) − f(x̄) on ReLU→MaxPool (SmallCNN) and residual additions + BatchNorm (ResNet)."""
    torch.manual_seed(0)
    network = SmallCNN(num_classes=5, width=8) if which == "small_cnn" else CifarResNet((2, 1), (8, 16), num_classes=5)
    # float64: the identity is exact, so the only tolerance needed is rounding.
    network = _randomise_batchnorm(network).double()
    x = torch.rand(6, 3, 32, 32, dtype=torch.float64)
    reference = torch.rand(6, 3, 32, 32, dtype=torch.float64) * 0.5
    targets = torch.tensor([0, 1, 2, 3, 4, 0])
    contributions, delta = attribute(network, x, targets, "deeplift", baseline=reference, return_convergence_delta=True)
    with torch.no_grad():
        difference = (network(x) - network(reference)).gather(1, targets[:, None]).squeeze(1)
    total = contributions.flatten(1).sum(1)
    scale = difference.abs().max()
    assert scale > 0
    torch.testing.assert_close(total / scale, difference / scale, atol=1e-9, rtol=0)
    assert delta.abs().max() / scale < 1e-9
    # DeepLIFT is not the plain gradient: the linearisation (x − x̄)·∇f(x) does not sum to the
    # difference on this network, so the equality above is the rescale rule's doing.
    gradient = attribute(network, x, targets, "saliency", abs=False)
    gradient_total = ((x - reference) * gradient).flatten(1).sum(1)
    assert not torch.allclose(gradient_total / scale, difference / scale, atol=1e-2)


def test_deep_shap_sums_to_the_mean_reference_difference():
    torch.manual_seed(0)
    network = _randomise_batchnorm(CifarResNet((1, 1), (8, 16), num_classes=5))
    x = torch.rand(3, 3, 32, 32)
    background = torch.rand(4, 3, 32, 32)
    targets = torch.tensor([1, 2, 3])
    phi, delta = attribute(network, x, targets, "deep_shap", baselines=background, return_convergence_delta=True)
    with torch.no_grad():
        expected = network(x).gather(1, targets[:, None]).squeeze(1) - network(background)[:, targets].mean(0)
    torch.testing.assert_close(phi.flatten(1).sum(1), expected, atol=1e-4, rtol=0)
    assert delta.abs().max() < 1e-4


# ------------------------------------------------------------------ linear models (closed forms)
@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(0)
    model = nn.Linear(12, 4)
    x = torch.randn(5, 12)
    targets = torch.tensor([0, 1, 2, 3, 1])
    return model, x, targets, model.weight.detach()[targets]


def test_linear_saliency_is_the_weight_row(linear):
    model, x, targets, w = linear
    torch.testing.assert_close(attribute(model, x, targets, "saliency", abs=False), w)
    torch.testing.assert_close(attribute(model, x, targets, "saliency"), w.abs())


@pytest.mark.parametrize(
    "method,options",
    [
        ("integrated_gradients", {"steps": 7}),
        ("integrated_gradients", {"steps": 3, "rule": "trapezoid"}),
        ("integrated_gradients", {"steps": 2, "rule": "trapezoid"}),
        ("input_x_gradient", {}),
        ("deeplift", {}),
    ],
)
def test_linear_zero_baseline_attributions_are_x_times_w(linear, method, options):
    model, x, targets, w = linear
    torch.testing.assert_close(attribute(model, x, targets, method, **options), x * w, atol=1e-6, rtol=1e-5)


def test_linear_shap_methods_are_x_minus_expected_baseline_times_w(linear):
    model, x, targets, w = linear
    background = torch.randn(6, 12)
    expected = (x - background.mean(0)) * w
    torch.testing.assert_close(
        attribute(model, x, targets, "deep_shap", baselines=background), expected, atol=1e-6, rtol=1e-5
    )
    # GradientSHAP samples baselines; with a one-point distribution the expectation is exact.
    one_point = background[:1].expand(6, -1)
    torch.testing.assert_close(
        attribute(model, x, targets, "gradient_shap", baselines=one_point, n_samples=5, seed=0),
        (x - background[0]) * w,
        atol=1e-6,
        rtol=1e-5,
    )


def test_linear_occlusion_of_single_features_is_their_contribution(linear):
    model, x, targets, w = linear
    drops = attribute(model, x, targets, "occlusion", window=1, stride=1, baseline=0.0, score="logit")
    torch.testing.assert_close(drops, x * w, atol=1e-6, rtol=1e-5)


def test_smoothgrad_of_a_linear_model_is_the_gradient_and_vargrad_is_zero(linear):
    model, x, targets, w = linear
    torch.testing.assert_close(attribute(model, x, targets, "smoothgrad", n_samples=8, seed=0), w)
    assert attribute(model, x, targets, "smoothgrad", variant="vargrad", n_samples=8, seed=0).abs().max() < 1e-10


@pytest.mark.parametrize(
    "method,expected",
    [
        ("saliency", lambda x, w: w.abs()),
        ("input_x_gradient", lambda x, w: x * w),
        ("integrated_gradients", lambda x, w: x * w),
        ("deeplift", lambda x, w: x * w),
    ],
)
def test_image_models_that_need_the_standard_layout_get_closed_form_gradients(method, expected):
    torch.manual_seed(0)
    model = ViewsItsInput(side=6, num_classes=4)
    x = torch.randn(3, 3, 6, 6)
    targets = torch.tensor([0, 3, 1])
    w = model.head.weight.detach()[targets].view(3, 3, 6, 6)
    attribution = attribute(model, x, targets, method)
    torch.testing.assert_close(attribution, expected(x, w), atol=1e-6, rtol=1e-5)
    assert attribution.is_contiguous()


@pytest.mark.parametrize(
    "method", ["saliency", "guided_backprop", "deeplift", "guided_gradcam", "integrated_gradients"]
)
def test_attributions_come_back_in_the_standard_layout(method):
    """CPU gradient passes run channels-last; what a caller gets is contiguous NCHW (``.view`` works)."""
    torch.manual_seed(0)
    attribution = attribute(SmallCNN(num_classes=5, width=4).eval(), torch.rand(2, 3, 32, 32), 1, method)
    assert attribution.shape == (2, 3, 32, 32) and attribution.is_contiguous()
    assert attribution.view(2, -1).abs().sum() > 0


# ------------------------------------------------------------------ CAM identities on a GAP→linear head
@pytest.fixture(scope="module")
def gap_network():
    torch.manual_seed(0)
    network = _randomise_batchnorm(SmallCNN(num_classes=5, width=8))
    return network, torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])


def test_cam_mean_is_logit_minus_bias_and_gradcam_is_its_scaled_relu(gap_network):
    network, x, targets = gap_network
    cam = attribute(network, x, targets, "cam", layer="features.20", upsample=False)  # (B, 8, 8)
    with torch.no_grad():
        logits = network(x).gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(cam.mean(dim=(1, 2)), logits - network.classifier.bias[targets], atol=1e-5, rtol=1e-5)
    gradcam = attribute(network, x, targets, "gradcam", layer="features.20", upsample=False)
    torch.testing.assert_close(gradcam, cam.clamp_min(0) / 64, atol=1e-6, rtol=1e-5)
    hirescam = attribute(network, x, targets, "hirescam", layer="features.20", upsample=False, relu=False)
    torch.testing.assert_close(hirescam, cam / 64, atol=1e-6, rtol=1e-5)


def test_gradcam_plus_plus_closed_form_on_a_gap_head(gap_network):
    """With g = w_ck/(hw) constant per channel: α = 1/(2 + g·ΣA), w_k = hw·ReLU(g)/(2 + g·ΣA)."""
    network, x, targets = gap_network
    ours = attribute(network, x, targets, "gradcam_plus_plus", layer="features.20", upsample=False)
    from xai_lightning.core import LayerCapture

    with torch.no_grad(), LayerCapture(network, "features.20") as capture:
        network(x)
    activation = capture.activations["features.20"]
    g = network.classifier.weight[targets].double() / 64  # (B, K)
    weights = 64 * g.clamp_min(0) / (2 + g * activation.double().sum(dim=(2, 3)))
    expected = torch.einsum("bk,bkhw->bhw", weights, activation.double()).clamp_min(0).float()
    torch.testing.assert_close(ours, expected.detach(), atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------ ground truth: ConceptWorld object masks
FAST_OPTIONS = {
    "integrated_gradients": {"steps": 16},
    "smoothgrad": {"n_samples": 10},
    "gradient_shap": {"n_samples": 10},
    "deep_shap": {"num_baselines": 4},
}


# The perturbation methods have their own localisation test, with settings sized for them
# (tests/test_attribution_perturbation.py); this one covers the gradient-based methods.
GRADIENT_METHODS = [m for m in available_methods() if m not in {c.name for c in _PERTURBATION_METHODS}]


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_every_method_puts_more_mass_on_the_object_than_a_uniform_map(trained_shape_model, probe, method):
    images, labels, masks = probe
    explainer = get_method(method, seed=0, **FAST_OPTIONS.get(method, {}))
    maps = explainer.to_map(explainer.attribute(trained_shape_model, images, labels))
    assert maps.shape == masks.shape
    score = energy_in_mask(maps.abs() if explainer.map_reduction == "sum" else maps, masks)
    uniform = uniform_energy_in_mask(masks)
    assert torch.nanmean(score) > torch.nanmean(uniform) + 0.05, (method, score, uniform)


@pytest.mark.parametrize(
    "method", ["saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "guided_backprop", "gradient_shap"]
)
def test_slicing_into_passes_leaves_attributions_unchanged(method):
    """Per-example targets are sliced with the inputs, whether the passes come from ``max_batch`` or from
    the CPU's rows per pass (IG's 8 × 50 path points here exceed neither; 3 rows per pass do)."""
    torch.manual_seed(0)
    network = SmallCNN(num_classes=5, width=4).eval()
    x = torch.rand(8, 3, 32, 32)
    targets = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    options = {"seed": 3} if method in ("smoothgrad", "gradient_shap") else {}
    whole = attribute(network, x, targets, method, **options)
    sliced = attribute(network, x, targets, method, max_batch=3, **options)
    torch.testing.assert_close(sliced, whole, atol=1e-6, rtol=1e-5)
    assert whole.abs().sum() > 0


@pytest.mark.parametrize(
    "method",
    [
        "saliency",
        "input_x_gradient",
        "integrated_gradients",
        "smoothgrad",
        "guided_backprop",
        "deconvnet",
        "cam",
        "gradcam",
        "gradcam_plus_plus",
        "hirescam",
        "score_cam",
        "guided_gradcam",
        "deeplift",
        "deep_shap",
        "gradient_shap",
    ],
)
def test_a_frozen_network_gets_the_same_attributions(method):
    """Parameters with ``requires_grad=False`` (a frozen backbone) must not cut the graph a method
    differentiates (Grad-CAM differentiates to a layer, not to the input)."""
    torch.manual_seed(0)
    network = _randomise_batchnorm(SmallCNN(num_classes=5, width=4)).eval()
    x = torch.rand(2, 3, 32, 32)
    options = {"seed": 1} if method in ("smoothgrad", "gradient_shap") else {}
    if method in ("deep_shap", "gradient_shap"):
        options["baselines"] = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    target = 3  # a class whose Grad-CAM maps are not all zero on this untrained network
    trainable = attribute(network, x, target, method, **options)
    network.requires_grad_(False)
    frozen = attribute(network, x, target, method, **options)
    torch.testing.assert_close(frozen, trainable, atol=1e-6, rtol=1e-5)
    assert trainable.abs().sum() > 0
    assert not any(p.requires_grad for p in network.parameters())
