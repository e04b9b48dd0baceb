"""Layer lookup (dotted names, 'auto', wrappers), activation capture, targets and logits selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xai_lightning.core import (
    LayerCapture,
    LayerNotFoundError,
    get_layer,
    layer_names,
    normalize_layer_name,
    resolve_layers,
    resolve_targets,
    select_logits,
    unwrap_model,
)
from xai_lightning.models import SmallCNN, resnet20


def test_dotted_names_resolve_and_wrappers_are_transparent():
    model = resnet20(num_classes=4)
    assert get_layer(model, "layer3.2.conv2") is model.layer3[2].conv2
    compiled = torch.compile(model)  # nothing is compiled until it is called
    wrapped = nn.DataParallel(compiled)
    assert unwrap_model(wrapped) is model
    assert get_layer(wrapped, "module._orig_mod.layer3.2.conv2") is model.layer3[2].conv2
    assert normalize_layer_name("module._orig_mod.layer1.0") == "layer1.0"
    assert "layer2.1.relu2" in layer_names(wrapped)


def test_unknown_layer_lists_valid_names_and_suggests_close_ones():
    model = SmallCNN(num_classes=3, width=4)
    with pytest.raises(LayerNotFoundError) as error:
        get_layer(model, "features.200")
    message = str(error.value)
    assert "features.200" in message and "Valid names" in message
    for name in layer_names(model):
        assert name in message
    assert "Did you mean" in message


def test_auto_picks_the_last_spatial_layer_not_the_1x1_pool():
    model = SmallCNN(num_classes=3, width=4)
    x = torch.rand(1, 3, 16, 16)
    assert resolve_layers(model, "auto", forward=lambda: model(x)) == ["features"]
    resnet = resnet20(num_classes=3)
    assert resolve_layers(resnet, ["auto", "layer2"], forward=lambda: resnet(x)) == ["layer3", "layer2"]


def test_auto_is_remembered_per_model_modules_and_input_shape():
    from xai_lightning.core import resolve_layer_specs

    model = SmallCNN(num_classes=3, width=4).eval()
    passes = []

    def resolve(x):
        def forward():
            passes.append(tuple(x.shape))
            return model(x)

        return resolve_layer_specs(model, "auto", forward, sample=x)[0].key

    big, small = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 4, 4)
    assert resolve(big) == resolve(big) == "features" and len(passes) == 1
    # 4x4 images leave 1x1 maps after the second pooling: another input shape, another answer.
    assert resolve(small) == "features.13" and len(passes) == 2
    model.features[20] = nn.Sequential(nn.ReLU(), nn.Conv2d(16, 16, 1))  # a replaced module: look again
    assert resolve(big) == "features" and len(passes) == 3
    assert resolve_layer_specs(model, "auto", lambda: passes.append("plain") or model(big))  # no sample: no memory
    assert passes[-1] == "plain"


def test_auto_fails_clearly_on_a_model_without_4d_outputs():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(LayerNotFoundError, match="found no module with a 4-D"):
        resolve_layers(mlp, "auto", forward=lambda: mlp(torch.rand(1, 3, 2, 2)))


class ConvThenInplaceReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.relu(self.conv(x)).mean((2, 3)))


def test_capture_survives_an_inplace_module_downstream():
    torch.manual_seed(0)
    model = ConvThenInplaceReLU()
    x = torch.randn(2, 2, 5, 5)
    with LayerCapture(model, "conv", gradients=True) as capture:
        out = model(x)
        (grad,) = torch.autograd.grad(out[:, 1].sum(), capture.activations["conv"])
    pre_relu = model.conv(x)
    torch.testing.assert_close(capture.activations["conv"], pre_relu)  # not overwritten by the ReLU
    assert (capture.activations["conv"] < 0).any()
    # d out_1 / d conv = w_head[1, k] / 25 where the ReLU passes, else 0.
    expected = (pre_relu > 0).float() * model.head.weight[1].view(1, 3, 1, 1) / 25
    torch.testing.assert_close(grad, expected)
    torch.testing.assert_close(capture.gradients["conv"], expected)


@pytest.mark.parametrize("graph_from_layers", [False, True])
def test_an_inplace_module_gets_a_copy_of_a_captured_input(graph_from_layers):
    torch.manual_seed(0)
    model = ConvThenInplaceReLU()
    x = torch.randn(2, 2, 5, 5)
    with LayerCapture(model, "relu:input", graph_from_layers=graph_from_layers) as capture:
        out = model(x)
    (grad,) = capture.gradients_of(out[:, 1].sum())
    pre_relu = model.conv(x)
    torch.testing.assert_close(capture.activations["relu:input"], pre_relu)  # the value the ReLU received
    torch.testing.assert_close(out, model.head(pre_relu.relu().mean((2, 3))))
    torch.testing.assert_close(grad, (pre_relu > 0).float() * model.head.weight[1].view(1, 3, 1, 1) / 25)


def test_graph_from_layers_gives_the_same_gradients_and_records_nothing_below_the_layer():
    from xai_lightning.models import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(dim=16, depth=3, heads=2).eval()
    cnn = resnet20(num_classes=3).eval()
    x = torch.rand(4, 3, 32, 32)
    # The ViT's residual stream feeds both the LayerNorm and the skip connection: both paths count.
    for model, layers, below in (
        (vit, ["blocks.1.norm1:input@vit", "blocks.2"], vit.patch_embed.weight),
        (cnn, ["layer2", "layer3.1.conv1"], next(cnn.stem.parameters())),
    ):
        gradients = {}
        for graph_from_layers in (False, True):
            with LayerCapture(model, layers, graph_from_layers=graph_from_layers) as capture:
                logits = model(x)
            assert torch.is_grad_enabled()  # restored on exit
            gradients[graph_from_layers] = capture.gradients_of(logits[:, 1].sum(), retain_graph=True)
            if graph_from_layers:
                assert logits.requires_grad
                with pytest.raises(RuntimeError, match="does not require grad|not have been used"):
                    torch.autograd.grad(logits[:, 1].sum(), below)  # the graph starts at the first layer
        for full, from_layer in zip(gradients[False], gradients[True]):
            torch.testing.assert_close(from_layer, full, rtol=1e-5, atol=1e-7)


def test_graph_from_layers_differentiates_a_frozen_network_and_restores_the_grad_mode():
    torch.manual_seed(0)
    model = SmallCNN(num_classes=3, width=4).eval().requires_grad_(False)
    x = torch.rand(2, 3, 16, 16)
    with LayerCapture(model, "features.3", graph_from_layers=True) as capture:
        logits = model(x)
    (gradient,) = capture.gradients_of(logits[:, 0].sum())
    assert gradient.shape == capture.activations["features.3"].shape and gradient.abs().sum() > 0
    with torch.no_grad():
        with LayerCapture(model, "features.3", graph_from_layers=True):
            model(x)
        assert not torch.is_grad_enabled()
        with pytest.raises(ZeroDivisionError):
            with LayerCapture(model, "features.3", graph_from_layers=True):
                model(x)
                raise ZeroDivisionError
        assert not torch.is_grad_enabled()
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())


def test_capture_rejects_tuple_outputs_with_a_clear_message():
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    model = nn.Sequential(Pair())
    with pytest.raises(TypeError, match="not a tensor"):
        with LayerCapture(model, "0"):
            model(torch.rand(1))


def test_targets_label_predicted_fixed_and_per_example():
    logits = torch.tensor([[0.1, 2.0, 0.3], [3.0, 0.0, 0.1]])
    assert resolve_targets("predicted", logits).tolist() == [1, 0]
    assert resolve_targets("label", logits, torch.tensor([2, 2])).tolist() == [2, 2]
    assert resolve_targets(1, logits).tolist() == [1, 1]
    assert resolve_targets([0, 2], logits).tolist() == [0, 2]
    with pytest.raises(ValueError, match="out of range: the model has 3 classes"):
        resolve_targets(3, logits)
    with pytest.raises(ValueError, match="needs labels"):
        resolve_targets("label", logits)
    with pytest.raises(ValueError, match="2 examples"):
        resolve_targets([0, 1, 2], logits)


def test_select_logits_from_dicts_and_tuples_needs_output_key():
    logits = torch.rand(2, 3)
    assert select_logits({"logits": logits, "features": torch.rand(2, 8)}, "logits") is logits
    assert select_logits((torch.rand(2, 8), logits), 1) is logits
    with pytest.raises(TypeError, match=r"output_key=.*available: \['logits', 'features'\]"):
        select_logits({"logits": logits, "features": torch.rand(2, 8)})
    with pytest.raises(TypeError, match="output_key"):
        select_logits((logits,))
