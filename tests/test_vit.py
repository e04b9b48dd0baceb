"""Vision transformers as clients of the CNN machinery: token-grid layer specs, 'auto', Grad-CAM and the
CAM family, TCAV and network dissection on folded transformer layers — our ViT and Hugging Face's.

Independent checks: Grad-CAM against the formula computed by hand on the token grid (tokens read by
a hand-written hook, folded by hand); layer gradients for TCAV against autograd on the raw tokens.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import hf_vit
from torch import nn

from xai_lightning import grad_cam
from xai_lightning.attribution import GradCAMPlusPlus, HiResCAM, ScoreCAM
from xai_lightning.concepts import TCAV, layer_activations, logit_gradients
from xai_lightning.core import (
    LayerCapture,
    LayerSpec,
    TokenGrid,
    parse_layer,
    register_reshape,
    resolve_layers,
)
from xai_lightning.dissection import ConceptVocabulary, LayerActivations, dissect
from xai_lightning.models import VisionTransformer


@pytest.fixture(scope="module")
def vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(dim=32, depth=2, heads=2, num_classes=5).eval()


def hand_tokens_and_gradient(model: nn.Module, module: nn.Module, x: torch.Tensor, target: int):
    """The tensor ``module`` receives and the gradient of the target logit w.r.t. it, by a hand-written hook."""
    seen = {}
    handle = module.register_forward_pre_hook(lambda _m, args: seen.__setitem__("tokens", args[0]))
    try:
        output = model(x)
    finally:
        handle.remove()
    logits = output if isinstance(output, torch.Tensor) else output.logits
    (gradient,) = torch.autograd.grad(logits[:, target].sum(), seen["tokens"])
    return seen["tokens"].detach(), gradient


def fold_by_hand(tokens: torch.Tensor, special: int) -> torch.Tensor:
    batch, count, dim = tokens.shape
    side = math.isqrt(count - special)
    grid = torch.empty(batch, dim, side, side)
    for row in range(side):
        for col in range(side):
            grid[:, :, row, col] = tokens[:, special + row * side + col, :]
    return grid


def test_token_grid_folds_patches_row_major_and_drops_the_special_tokens():
    tokens = torch.arange(2 * (1 + 9) * 4, dtype=torch.float32).view(2, 10, 4)
    folded = TokenGrid(special_tokens=1)(tokens)
    assert folded.shape == (2, 4, 3, 3)
    torch.testing.assert_close(folded, fold_by_hand(tokens, 1))
    registers = torch.rand(2, 1 + 4 + 16, 8)
    torch.testing.assert_close(parse_layer("x@vit_reg4").apply(registers), fold_by_hand(registers, 5))


def test_the_reshape_rejects_a_token_count_that_is_not_a_square_plus_the_special_tokens_showing_both_numbers():
    with pytest.raises(
        ValueError,
        match=r"has 16 tokens; minus the 1 declared special token\(s\) that leaves 15, "
        r"which is not a square",
    ):
        TokenGrid(1)(torch.rand(2, 16, 8))
    with pytest.raises(ValueError, match=r"has 21 tokens; minus the 1 declared special token\(s\) that leaves 20"):
        parse_layer("blocks.0@vit").apply(torch.rand(1, 21, 8))  # CLS + 4 registers + 16 patches, registers undeclared
    with pytest.raises(ValueError, match=r"has 17 tokens; minus the 1 .* leaves 16, not the 3x4 = 12 patches"):
        TokenGrid(1, grid=(3, 4))(torch.rand(1, 17, 8))
    with pytest.raises(ValueError, match=r"folds tokens \(B, tokens, dim\)"):
        TokenGrid(1)(torch.rand(2, 8, 4, 4))
    with pytest.raises(ValueError, match="Unknown reshape 'vitt'"):
        parse_layer("blocks.0@vitt")


def test_layer_specs_parse_and_keep_their_key_through_wrappers(vit):
    spec = parse_layer("module._orig_mod.blocks.1.norm1:input@vit")
    assert spec == LayerSpec("blocks.1.norm1", "input", "vit") and spec.key == "blocks.1.norm1:input@vit"
    assert parse_layer({"name": "blocks.1", "reshape": "vit"}).key == "blocks.1@vit"
    assert parse_layer("blocks.1", reshape="deit").key == "blocks.1@deit"
    wrapped = nn.DataParallel(torch.compile(vit))
    assert resolve_layers(wrapped, "module._orig_mod.blocks.1.norm1:input@vit") == ["blocks.1.norm1:input@vit"]

    def fold_eight(tokens):
        return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, 8, 8)

    assert parse_layer(LayerSpec("blocks.0", reshape=fold_eight)).key == "blocks.0@fold_eight"
    with pytest.raises(ValueError, match="already registered"):
        register_reshape("fold_eight", lambda t: t)
    with pytest.raises(ValueError, match="needs a name"):
        LayerSpec("blocks.0", reshape=lambda t: t)


def test_auto_picks_the_input_of_the_last_blocks_first_layernorm(vit):
    x = torch.rand(1, 3, 32, 32)
    assert resolve_layers(vit, "auto", forward=lambda: vit(x)) == ["blocks.1.norm1:input@vit"]
    with_registers = VisionTransformer(dim=16, depth=3, heads=2, num_registers=4).eval()
    assert resolve_layers(with_registers, "auto", forward=lambda: with_registers(x)) == [
        "blocks.2.norm1:input@vit_reg4"
    ]
    hf = hf_vit(layers=3)
    assert resolve_layers(hf, "auto", forward=lambda: hf(x)) == ["vit.layers.2.layernorm_before:input@vit"]


@pytest.mark.parametrize("client", ["ours", "hugging_face"])
def test_grad_cam_on_a_vit_block_equals_the_hand_computation_on_the_folded_token_grid(vit, client):
    model = vit if client == "ours" else hf_vit()
    module = model.blocks[1].norm1 if client == "ours" else model.vit.layers[1].layernorm_before
    torch.manual_seed(1)
    x = torch.rand(4, 3, 32, 32)
    target = 2
    result = grad_cam(model, x, target, "auto", upsample=False)
    (key,) = result.maps
    tokens, gradient = hand_tokens_and_gradient(model, module, x, target)
    activation, weights = fold_by_hand(tokens, 1), fold_by_hand(gradient, 1).mean(dim=(2, 3))
    expected = torch.relu(torch.einsum("bk,bkhw->bhw", weights, activation))
    assert expected.abs().max() > 0
    torch.testing.assert_close(result.maps[key], expected, atol=1e-6, rtol=1e-5)
    upsampled = grad_cam(model, x, target, "auto").maps[key]
    torch.testing.assert_close(
        upsampled,
        F.interpolate(expected[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0],
        atol=1e-6,
        rtol=1e-5,
    )


def test_grad_cam_at_the_last_blocks_output_is_zero_which_is_why_auto_reads_its_input(vit):
    x = torch.rand(3, 3, 32, 32)
    maps = grad_cam(vit, x, 1, ["blocks.1@vit", "blocks.1.norm1:input@vit"], relu=False, upsample=False).maps
    assert maps["blocks.1@vit"].abs().max() == 0  # patch tokens after the last block never reach the CLS logit
    assert maps["blocks.1.norm1:input@vit"].abs().max() > 0


def test_the_cam_family_runs_on_a_reshaped_layer_and_hirescam_sums_gradient_times_activation(vit):
    x = torch.rand(3, 3, 32, 32)
    layer = "blocks.1.norm1:input"
    for method in (GradCAMPlusPlus(layer=layer, reshape="vit"), ScoreCAM(layer=layer, reshape="vit")):
        maps = method.attribute(vit, x, 0)
        assert maps.shape == (3, 32, 32) and torch.isfinite(maps).all() and maps.abs().sum() > 0
    hires = HiResCAM(layer=layer, reshape="vit", relu=False, upsample=False).attribute(vit, x, 0)
    tokens, gradient = hand_tokens_and_gradient(vit, vit.blocks[1].norm1, x, 0)
    torch.testing.assert_close(
        hires, (fold_by_hand(tokens, 1) * fold_by_hand(gradient, 1)).sum(1), atol=1e-6, rtol=1e-5
    )


def test_capture_of_a_reshaped_layer_gives_the_folded_tensor_and_its_folded_gradient(vit):
    x = torch.rand(2, 3, 32, 32)
    with LayerCapture(vit, "blocks.0.norm1:input@vit") as capture:
        logits = vit(x)
    (gradient,) = capture.gradients_of(logits[:, 3].sum())
    tokens, expected = hand_tokens_and_gradient(vit, vit.blocks[0].norm1, x, 3)
    torch.testing.assert_close(capture.activations["blocks.0.norm1:input@vit"], fold_by_hand(tokens, 1))
    torch.testing.assert_close(gradient, fold_by_hand(expected, 1))


def test_tcav_activations_and_gradients_on_a_transformer_layer_are_the_folded_grid(vit):
    x = torch.rand(6, 3, 32, 32)
    layer = "blocks.1.norm1:input@vit"
    activations = layer_activations(vit, x, [layer])[layer]
    gradients, _, _ = logit_gradients(vit, x, 1, [layer])
    tokens, gradient = hand_tokens_and_gradient(vit, vit.blocks[1].norm1, x, 1)
    torch.testing.assert_close(activations, fold_by_hand(tokens, 1).flatten(1))
    torch.testing.assert_close(gradients[layer], fold_by_hand(gradient, 1).flatten(1), atol=1e-7, rtol=1e-5)
    from xai_lightning import ConceptWorld

    world = ConceptWorld(60, seed=3)
    striped = ConceptWorld(40, seed=4).images
    result = TCAV(layers=[layer], num_random=3, examples_per_concept=10).attribute(
        vit, world.images, world.labels, {"striped": striped}, classes=[0, 1]
    )
    assert result.scores.shape == (1, 1, 2, 3) and torch.isfinite(result.cav_accuracy).all()


def test_network_dissection_of_a_folded_transformer_layer(vit):
    from xai_lightning import ConceptWorld

    world = ConceptWorld(24, seed=5)
    layer = "blocks.0.norm1:input@vit"
    outputs = LayerActivations(vit, [layer])(world.images[:2])
    tokens, _ = hand_tokens_and_gradient(vit, vit.blocks[0].norm1, world.images[:2], 0)
    torch.testing.assert_close(outputs[layer], fold_by_hand(tokens, 1))
    vocabulary = ConceptVocabulary.from_names(world.concept_names)
    results = dissect(vit, layer, world.images, world.masks(slice(None)), vocabulary)
    assert results[layer].iou.shape[0] == 32  # one row per unit: the 32 channels of the token width


def test_the_image_callbacks_run_on_a_vit_through_auto_and_layer_specs(tmp_path):
    """GradCAMCallback, AttributionCallback (with attention methods), TCAVCallback and DissectionCallback
    on a ViT in one Trainer: 'auto' and '@vit' specs flow through setup, explanation and logging."""
    import pytorch_lightning as pl
    from conftest import quiet_trainer, small_datamodule
    from pytorch_lightning.loggers import CSVLogger

    from xai_lightning import (
        AttributionCallback,
        DissectionCallback,
        GradCAMCallback,
        ImageClassifier,
        TCAVCallback,
    )

    pl.seed_everything(0)
    model = ImageClassifier(VisionTransformer(dim=16, depth=2, heads=2, num_classes=5))
    spec = "network.blocks.0.norm1:input@vit"
    callbacks = [
        GradCAMCallback(layers="auto", num_probe=8),
        AttributionCallback(methods=["gradcam", "attention_rollout", "attention_relevance"], num_probe=8),
        TCAVCallback(
            layers="auto",
            concepts=["striped"],
            classes=[0, 1],
            num_random=2,
            examples_per_concept=10,
            num_probe=16,
            num_similar=0,
        ),
        DissectionCallback(layers=[spec], num_probe=32, top_units=1, top_images=2),
    ]
    trainer = quiet_trainer(
        max_epochs=1, callbacks=callbacks, logger=CSVLogger(str(tmp_path)), enable_checkpointing=False
    )
    trainer.fit(model, small_datamodule(num_train=64, num_val=48))
    auto = "network.blocks.1.norm1:input@vit"
    assert all(not callback.failures for callback in callbacks), [c.failures for c in callbacks]
    assert callbacks[0].layer_names == [auto]
    assert 0 <= callbacks[0].history[-1][f"gradcam/{auto}/energy_in_mask"] <= 1
    assert "attribution/attention_rollout/energy_in_mask" in callbacks[1].history[-1]
    assert f"tcav/{auto}/striped/cav_accuracy" in callbacks[2].history[-1]
    assert f"dissection/{spec}/interpretable" in callbacks[3].history[-1]
