"""Every gradient-based method and occlusion against Captum on the same model, inputs and settings.

Captum is an independent implementation (a test-only dependency). The model is a SmallCNN with
randomised BatchNorm statistics whose classifier is rescaled so that attributions are of order
one: an absolute tolerance of 1e-5 is then a relative agreement of about 1e-5.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from xai_lightning import CifarResNet, SmallCNN
from xai_lightning.attribution import attribute

captum_attr = pytest.importorskip("captum.attr")

ATOL = 1e-5
warnings.filterwarnings("ignore", module="captum")


def _randomise_batchnorm(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.2)


def _unit_scale(model: nn.Module, head: nn.Linear, x: torch.Tensor) -> nn.Module:
    """Rescale the classifier so that the largest input gradient is about 1."""
    x = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
    with torch.no_grad():
        factor = 1.0 / gradient.abs().max()
        head.weight.mul_(factor)
        head.bias.mul_(factor)
    return model


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 32, 32, generator=generator), torch.tensor([0, 1, 2, 4])


@pytest.fixture(scope="module")
def model(inputs) -> nn.Module:
    torch.manual_seed(0)
    network = SmallCNN(num_classes=5, width=8).eval()
    _randomise_batchnorm(network)
    return _unit_scale(network, network.classifier, inputs[0])


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    assert theirs.abs().max() > 1e-2, "the comparison is vacuous: Captum's attributions are ~0"
    torch.testing.assert_close(ours.float(), theirs.float(), atol=ATOL, rtol=0)


def test_saliency(model, inputs):
    x, t = inputs
    close(attribute(model, x, t, "saliency"), captum_attr.Saliency(model).attribute(x, target=t))
    close(attribute(model, x, t, "saliency", abs=False), captum_attr.Saliency(model).attribute(x, target=t, abs=False))


def test_input_x_gradient(model, inputs):
    x, t = inputs
    close(attribute(model, x, t, "input_x_gradient"), captum_attr.InputXGradient(model).attribute(x, target=t))


@pytest.mark.parametrize("rule,captum_rule", [("gauss_legendre", "gausslegendre"), ("trapezoid", "riemann_trapezoid")])
def test_integrated_gradients_rules(model, inputs, rule, captum_rule):
    x, t = inputs
    ours, delta = attribute(model, x, t, "integrated_gradients", steps=24, rule=rule, return_convergence_delta=True)
    theirs, captum_delta = captum_attr.IntegratedGradients(model).attribute(
        x, target=t, n_steps=24, method=captum_rule, return_convergence_delta=True
    )
    if rule == "trapezoid":
        # Captum 0.9's trapezoid weights are 1/n (halved at the ends), summing to (n − 1)/n instead of 1
        # (ours: 1/(n − 1); tests/test_attribution_axioms.py checks completeness). Same nodes, same
        # gradients: rescaled, the two agree to float precision.
        ours = ours * (23 / 24)
        close(ours, theirs)
        return
    close(ours, theirs)
    torch.testing.assert_close(delta, captum_delta.float(), atol=ATOL, rtol=0)


def test_integrated_gradients_custom_baseline_and_max_batch(model, inputs):
    x, t = inputs
    baseline = torch.full_like(x, 0.5)
    ours = attribute(model, x, t, "integrated_gradients", steps=16, baseline=baseline, max_batch=7)
    theirs = captum_attr.IntegratedGradients(model).attribute(x, baselines=baseline, target=t, n_steps=16)
    close(ours, theirs)


@pytest.mark.parametrize(
    "variant,nt_type", [("smoothgrad", "smoothgrad"), ("smoothgrad_sq", "smoothgrad_sq"), ("vargrad", "vargrad")]
)
def test_noise_tunnel_with_the_same_noise(model, inputs, variant, nt_type):
    x, t = inputs
    n, stdev = 6, 0.1
    torch.manual_seed(7)
    theirs = captum_attr.NoiseTunnel(captum_attr.Saliency(model)).attribute(
        x, nt_type=nt_type, nt_samples=n, stdevs=stdev, target=t
    )
    torch.manual_seed(7)  # NoiseTunnel draws torch.normal(0, σ) of shape (B·N, ...), example-major
    noise = torch.normal(0, torch.full((x.shape[0] * n, *x.shape[1:]), stdev)).view(x.shape[0], n, *x.shape[1:])
    ours = attribute(
        model, x, t, "smoothgrad", variant=variant, n_samples=n, noise=noise, wrapped_options={"abs": True}
    )
    close(ours, theirs)


def test_smooth_integrated_gradients_matches_noise_tunnel_over_ig(model, inputs):
    x, t = inputs
    n, stdev = 3, 0.05
    torch.manual_seed(3)
    theirs = captum_attr.NoiseTunnel(captum_attr.IntegratedGradients(model)).attribute(
        x, nt_type="smoothgrad", nt_samples=n, stdevs=stdev, target=t, n_steps=8
    )
    torch.manual_seed(3)
    noise = torch.normal(0, torch.full((x.shape[0] * n, *x.shape[1:]), stdev)).view(x.shape[0], n, *x.shape[1:])
    ours = attribute(
        model,
        x,
        t,
        "smoothgrad",
        wrapped="integrated_gradients",
        wrapped_options={"steps": 8},
        n_samples=n,
        noise=noise,
    )
    close(ours, theirs)


def test_guided_backprop(model, inputs):
    x, t = inputs
    close(attribute(model, x, t, "guided_backprop"), captum_attr.GuidedBackprop(model).attribute(x, target=t))


def test_deconvolution(model, inputs):
    x, t = inputs
    close(attribute(model, x, t, "deconvnet"), captum_attr.Deconvolution(model).attribute(x, target=t))


@pytest.mark.parametrize("layer", ["features.13", "features.18"])
def test_layer_grad_cam(model, inputs, layer):
    x, t = inputs
    module = dict(model.named_modules())[layer]
    signed = captum_attr.LayerGradCam(model, module).attribute(x, target=t).squeeze(1)
    scale = 1.0 / signed.abs().max()  # Grad-CAM values are small; compare on the unit scale
    unscaled = attribute(model, x, t, "gradcam", layer=layer, upsample=False, relu=False)
    close(unscaled * scale, signed * scale)
    raw = captum_attr.LayerGradCam(model, module).attribute(x, target=t, relu_attributions=True)
    theirs = captum_attr.LayerAttribution.interpolate(raw, (32, 32), interpolate_mode="bilinear").squeeze(1)
    close(attribute(model, x, t, "gradcam", layer=layer) * scale, theirs * scale)


def test_guided_grad_cam(model, inputs):
    x, t = inputs
    theirs = captum_attr.GuidedGradCam(model, model.features[13]).attribute(x, target=t)  # nearest upsampling
    ours = attribute(model, x, t, "guided_gradcam", layer="features.13", interpolate_mode="nearest")
    scale = 1.0 / theirs.abs().max()
    close(ours * scale, theirs * scale)


class Copy(nn.Module):
    """Hands the next module a fresh tensor (see the DeepLIFT note below)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


@pytest.fixture(scope="module")
def separated_model(inputs) -> nn.Module:
    """SmallCNN whose max pools receive a copy of the preceding ReLU's output.

    Captum's DeepLift hooks record a module's output gradient with a tensor hook on its output;
    when a ReLU feeds a MaxPool directly, the pool's input-gradient hook sits on the *same*
    tensor and runs after it, so Captum's ReLU sees the ordinary pool gradient instead of the
    pool's rescale multipliers. A copy in between gives each hook its own tensor, which makes
    Captum compute the rescale rule of the paper — the quantity we compare with. (On the plain
    SmallCNN ours still satisfies summation-to-delta exactly: tests/test_attribution_axioms.py.)
    """
    torch.manual_seed(0)
    network = SmallCNN(num_classes=5, width=8).eval()
    for index, module in enumerate(network.features):
        if isinstance(module, nn.MaxPool2d):
            network.features[index] = nn.Sequential(Copy(), module)
    _randomise_batchnorm(network)
    return _unit_scale(network, network.classifier, inputs[0])


@pytest.fixture(scope="module")
def resnet(inputs) -> nn.Module:
    torch.manual_seed(0)
    network = CifarResNet((1, 1), (8, 16), num_classes=5).eval()
    _randomise_batchnorm(network)
    return _unit_scale(network, network.fc, inputs[0])


@pytest.mark.parametrize("which", ["separated_model", "resnet"])
def test_deeplift(request, inputs, which):
    network = request.getfixturevalue(which)
    x, t = inputs
    ours, delta = attribute(network, x, t, "deeplift", return_convergence_delta=True)
    theirs = captum_attr.DeepLift(network).attribute(x, target=t)
    close(ours, theirs)
    baseline = torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    close(
        attribute(network, x, t, "deeplift", baseline=baseline, max_batch=4),
        captum_attr.DeepLift(network).attribute(x, baselines=baseline, target=t),
    )


@pytest.mark.parametrize("which", ["separated_model", "resnet"])
def test_deeplift_shap(request, inputs, which):
    network = request.getfixturevalue(which)
    x, t = inputs
    background = torch.rand(5, *x.shape[1:], generator=torch.Generator().manual_seed(6))
    ours = attribute(network, x, t, "deep_shap", baselines=background, max_batch=8)
    theirs = captum_attr.DeepLiftShap(network).attribute(x, baselines=background, target=t)
    close(ours, theirs)


# Few windows on two images: Captum evaluates them one forward pass each (slow on a shared CPU).
# In float64: the model's logits are ~1e4 and occlusion differences them, so float32 results of
# any two convolution orders (NCHW vs channels-last, whole images vs incremental patches) differ
# by ~1e-3; in float64 by ~1e-12, and the 1e-5 tolerance then tests the method, not the rounding.
@pytest.mark.parametrize("incremental", [False, True])
@pytest.mark.parametrize(
    "window,stride", [((3, 8, 8), (3, 8, 8)), ((3, 11, 11), (3, 10, 10)), ((1, 16, 12), (1, 8, 10))]
)
def test_occlusion(model, inputs, window, stride, incremental):
    model = copy.deepcopy(model).double()
    x, t = inputs[0][:2].double(), inputs[1][:2]
    ours = attribute(
        model,
        x,
        t,
        "occlusion",
        window=window,
        stride=stride,
        baseline=0.0,
        score="logit",
        max_batch=50,
        incremental=incremental,
    )
    theirs = captum_attr.Occlusion(model).attribute(
        x, target=t, sliding_window_shapes=window, strides=stride, perturbations_per_eval=16
    )
    close(ours, theirs)
    baseline = 0.3
    close(
        attribute(
            model,
            x,
            t,
            "occlusion",
            window=window,
            stride=stride,
            baseline=baseline,
            score="logit",
            incremental=incremental,
        ),
        captum_attr.Occlusion(model).attribute(
            x, target=t, sliding_window_shapes=window, strides=stride, baselines=baseline, perturbations_per_eval=16
        ),
    )


def test_occlusion_on_tabular_inputs():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3)).eval()
    x = torch.randn(6, 10)
    t = torch.tensor([0, 1, 2, 0, 1, 2])
    ours = attribute(mlp, x, t, "occlusion", window=3, stride=2, baseline=0.0, score="logit")
    theirs = captum_attr.Occlusion(mlp).attribute(x, target=t, sliding_window_shapes=(3,), strides=2)
    torch.testing.assert_close(ours, theirs.float(), atol=ATOL, rtol=0)
