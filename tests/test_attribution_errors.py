"""Bad input to the attribution library fails with a message that names the fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xai_lightning import SmallCNN
from xai_lightning.attribution import attribute, available_methods, get_method


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN(num_classes=5, width=4).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32)


class DictOutput(nn.Module):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x):
        return {"features": x.flatten(1), "logits": self.network(x)}


class TupleOutput(DictOutput):
    def forward(self, x):
        return x.flatten(1), self.network(x)


def test_unknown_method_lists_every_available_name(model, images):
    with pytest.raises(
        ValueError, match="Unknown attribution method 'integrated_gradient'. Did you mean 'integrated_gradients'"
    ) as error:
        attribute(model, images, 0, method="integrated_gradient")
    assert all(name in str(error.value) for name in available_methods())


def test_aliases_reach_the_same_method():
    assert type(get_method("Deconvolution")) is type(get_method("deconvnet"))
    assert type(get_method("IG")) is type(get_method("integrated_gradients"))


def test_unknown_option_lists_the_valid_ones(model, images):
    with pytest.raises(TypeError, match=r"integrated_gradients has no option 'n_steps'; valid options: steps, rule"):
        attribute(model, images, 0, method="integrated_gradients", n_steps=5)


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "occlusion", "gradcam", "deeplift"])
def test_target_out_of_range(model, images, method):
    with pytest.raises(ValueError, match=r"Target class 7 is out of range: the model has 5 classes \(valid 0..4\)"):
        attribute(model, images, 7, method=method)
    with pytest.raises(ValueError, match="Got 3 targets for a batch of 2"):
        attribute(model, images, torch.tensor([0, 1, 2]), method=method)


@pytest.mark.parametrize(
    "method,option", [("integrated_gradients", "baseline"), ("deeplift", "baseline"), ("occlusion", "baseline")]
)
def test_baseline_shape_mismatch_names_both_shapes(model, images, method, option):
    bad = torch.zeros(3, 16, 16)
    with pytest.raises(ValueError, match=r"of shape \(3, 16, 16\) does not match the inputs of shape \(2, 3, 32, 32\)"):
        attribute(model, images, 0, method=method, **{option: bad})


@pytest.mark.parametrize("method", ["deep_shap", "gradient_shap"])
def test_baseline_distribution_shape_mismatch(model, images, method):
    with pytest.raises(ValueError, match=r"Baseline distribution of shape \(4, 3, 16, 16\) does not match"):
        attribute(model, images, 0, method=method, baselines=torch.zeros(4, 3, 16, 16))


def test_smoothgrad_noise_shape_mismatch(model, images):
    with pytest.raises(ValueError, match=r"SmoothGrad noise of shape \(5, 3, 32, 32\) does not fit"):
        attribute(model, images, 0, method="smoothgrad", n_samples=4, noise=torch.zeros(5, 3, 32, 32))


@pytest.mark.parametrize("wrapper,key", [(DictOutput, "logits"), (TupleOutput, 1)])
@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "gradcam", "occlusion", "deeplift"])
def test_dict_or_tuple_output_needs_output_key(model, images, wrapper, key, method):
    wrapped = wrapper(model)
    with pytest.raises(TypeError, match="Pass output_key= naming where the logits are"):
        attribute(wrapped, images, 0, method=method)
    options = {"layer": "network.features.13"} if method == "gradcam" else {}
    keyed = attribute(wrapped, images, 0, method=method, output_key=key, **options)
    plain_options = {"layer": "features.13"} if method == "gradcam" else {}
    torch.testing.assert_close(keyed, attribute(model, images, 0, method=method, **plain_options))


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcam_plus_plus", "hirescam", "score_cam", "guided_gradcam"])
def test_image_only_methods_reject_tabular_inputs_and_name_the_alternatives(method):
    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(
        ValueError,
        match=r"explains images \(B, C, H, W\); got inputs of shape \(4, 6\). "
        r"For non-image inputs use one of: saliency, input_x_gradient",
    ):
        attribute(mlp, torch.randn(4, 6), 0, method=method)


def test_tabular_inputs_work_for_the_model_agnostic_methods():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(4, 6)
    for method in available_methods():
        if get_method(method).image_only:
            continue
        options = {"window": 2, "stride": 2} if method == "occlusion" else {}
        assert attribute(mlp, x, 1, method=method, **options).shape == (4, 6), method


def test_integer_inputs_and_empty_batches(model):
    with pytest.raises(TypeError, match="needs floating-point inputs.*inputs.float"):
        attribute(model, torch.zeros(2, 3, 32, 32, dtype=torch.uint8), 0, method="saliency")
    with pytest.raises(ValueError, match="non-empty batch"):
        attribute(model, torch.zeros(0, 3, 32, 32), 0, method="saliency")


def test_methods_without_delta_say_so(model, images):
    with pytest.raises(TypeError, match="Saliency has no convergence delta"):
        attribute(model, images, 0, method="saliency", return_convergence_delta=True)


def test_bad_settings_fail_at_construction():
    with pytest.raises(ValueError, match="Unknown integration rule"):
        get_method("integrated_gradients", rule="simpson")
    with pytest.raises(ValueError, match="stride .* is larger than the window"):
        attribute(nn.Linear(6, 2), torch.randn(2, 6), 0, method="occlusion", window=2, stride=3)
    with pytest.raises(ValueError, match="exceeds the input"):
        attribute(nn.Linear(6, 2), torch.randn(2, 6), 0, method="occlusion", window=7)
    with pytest.raises(ValueError, match="max_batch"):
        get_method("saliency", max_batch=0)


def test_wrong_layer_lists_valid_names(model, images):
    from xai_lightning import LayerNotFoundError

    with pytest.raises(LayerNotFoundError, match="features.13"):
        attribute(model, images, 0, method="hirescam", layer="features.99")
