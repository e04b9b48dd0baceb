"""Grad-CAM against Captum, against the closed form of CAM, and for batching invariance."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from xai_lightning import GradCAM, grad_cam
from xai_lightning.models import SmallCNN, resnet20


def captum_grad_cam(model, layer, x, target):
    attribution = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
    return LayerAttribution.interpolate(attribution, x.shape[-2:], interpolate_mode="bilinear").squeeze(1)


@pytest.mark.parametrize("architecture", ["small_cnn", "resnet20"])
def test_matches_captum_layer_grad_cam_with_relu_and_bilinear_upsampling(architecture):
    torch.manual_seed(0)
    model = (SmallCNN(num_classes=5, width=8) if architecture == "small_cnn" else resnet20(num_classes=5)).eval()
    layers = {"small_cnn": ["features.13", "features.18"], "resnet20": ["layer2.1", "layer3"]}[architecture]
    x = torch.rand(6, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    ours = grad_cam(model, x, "label", layers, labels=labels)
    for name in layers:
        reference = captum_grad_cam(model, model.get_submodule(name), x, labels)
        assert reference.abs().max() > 0
        torch.testing.assert_close(ours.maps[name], reference, atol=1e-5, rtol=1e-5)
    assert torch.equal(ours.targets, labels)


class GapLinear(nn.Module):
    """conv features → global average pool → linear: the architecture of CAM (Zhou et al. 2016)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def test_equals_class_activation_mapping_in_closed_form():
    # With GAP→linear, ∂y^c/∂A^k_ij = w_ck / (h·w), so Grad-CAM = ReLU(Σ_k w_ck A^k) / (h·w) = CAM / (h·w).
    torch.manual_seed(1)
    model = GapLinear().eval()
    x = torch.rand(3, 3, 12, 12)
    maps = grad_cam(model, x, 2, "features", upsample=False).maps["features"]
    activations = model.features(x)
    cam = torch.einsum("k,bkij->bij", model.fc.weight[2], activations)
    torch.testing.assert_close(maps, F.relu(cam) / (12 * 12), atol=1e-6, rtol=1e-5)


def test_batched_slices_and_multi_layer_pass_equal_single_calls():
    torch.manual_seed(2)
    model = SmallCNN(num_classes=5, width=8).eval()
    x = torch.rand(7, 3, 32, 32)
    together = grad_cam(model, x, "predicted", ["features.6", "features.20"])
    sliced = grad_cam(model, x, "predicted", ["features.6", "features.20"], max_batch=3)
    alone = GradCAM(layer="features.6").attribute(model, x, target=together.targets)
    for name in ("features.6", "features.20"):
        torch.testing.assert_close(together.maps[name], sliced.maps[name], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(together.maps["features.6"], alone, atol=1e-6, rtol=1e-5)
    assert together.probabilities.shape == (7,)


def test_trained_model_maps_concentrate_on_the_object(trained_shape_model):
    from xai_lightning import ConceptWorld
    from xai_lightning.evaluation import energy_in_mask, uniform_energy_in_mask

    data = ConceptWorld(64, seed=99)
    masks = data.masks(slice(None))[:, 0]
    maps = grad_cam(trained_shape_model, data.images, "label", "network.features.13", labels=data.labels)
    inside = energy_in_mask(maps.maps["network.features.13"], masks)
    assert inside.nanmean() > 2 * uniform_energy_in_mask(masks).mean()


def test_non_image_input_is_rejected():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        grad_cam(nn.Linear(4, 2), torch.rand(3, 4), 0, "auto")
