"""Attention maps: rollout and Chefer relevance against hand computations, capture by hooks against the
model's own attention outputs, and capture that does not change the computation.

Independent checks: rollout and relevance of hand-made attention stacks computed element by element
in numpy; Hugging Face's ``output_attentions=True`` (its own recording) for the hooks; our ViT's
attention recomputed from its query/key weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import hf_vit

from xai_lightning.attribution import (
    AttentionCapture,
    AttentionNotFoundError,
    AttentionRelevance,
    AttentionRollout,
    RawAttention,
    attention_maps,
    attention_relevance,
    attention_rollout,
    find_attention_layers,
)
from xai_lightning.evaluation import energy_in_mask, mass_in_mask_on_grid
from xai_lightning.models import VisionTransformer


def random_attention(batch: int, heads: int, tokens: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, heads, tokens, tokens, generator=generator, dtype=torch.float64).softmax(-1)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Matrix product by explicit sums (no BLAS), the hand computation."""
    n, m, p = a.shape[0], a.shape[1], b.shape[1]
    out = np.zeros((n, p))
    for i in range(n):
        for j in range(p):
            out[i, j] = sum(a[i, k] * b[k, j] for k in range(m))
    return out


@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_rollout_of_a_hand_made_two_layer_stack_equals_the_product_computed_by_hand(fusion):
    first, second = random_attention(2, 3, 4, seed=0), random_attention(2, 3, 4, seed=1)
    ours = attention_rollout([first.float(), second.float()], residual=0.5, head_fusion=fusion)
    for b in range(2):
        mixed = []
        for layer in (first, second):
            heads = layer[b].numpy()
            fused = heads.mean(0) if fusion == "mean" else heads.max(0)
            with_identity = 0.5 * fused + 0.5 * np.eye(4)
            mixed.append(with_identity / with_identity.sum(1, keepdims=True))  # "max" rows no longer sum to 1
        expected = matmul(mixed[1], mixed[0])  # Ã_2 · Ã_1
        np.testing.assert_allclose(ours[b].numpy(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours[b].numpy().sum(1), np.ones(4), atol=1e-5)  # still a flow: rows sum to 1


def test_chefer_relevance_of_a_hand_made_two_layer_stack():
    first, second = random_attention(2, 2, 5, seed=2), random_attention(2, 2, 5, seed=3)
    g1, g2 = torch.randn(2, 2, 5, 5, dtype=torch.float64), torch.randn(2, 2, 5, 5, dtype=torch.float64)
    ours = attention_relevance([first, second], [g1, g2])
    for b in range(2):
        bars = [np.maximum(g[b].numpy() * a[b].numpy(), 0).mean(0) for a, g in ((first, g1), (second, g2))]
        after_first = np.eye(5) + bars[0]
        expected = after_first + matmul(bars[1], after_first)  # R ← R + Ā₂ R, starting from R = I + Ā₁
        np.testing.assert_allclose(ours[b].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_hugging_face_vit_gives_the_same_maps_from_hooks_and_from_output_attentions():
    model = hf_vit(layers=3)
    x = torch.rand(5, 3, 32, 32)
    hooks = attention_maps(model, x, 1)
    outputs = attention_maps(model, x, 1, source="outputs")
    assert hooks.layers == ("vit.layers.0.attention", "vit.layers.1.attention", "vit.layers.2.attention")
    assert hooks.rollout.shape == (5, 4, 4) and hooks.raw.shape == (5, 3, 4, 4, 4)
    torch.testing.assert_close(hooks.rollout, outputs.rollout, atol=0, rtol=0)
    torch.testing.assert_close(hooks.raw, outputs.raw, atol=0, rtol=0)
    torch.testing.assert_close(hooks.relevance, outputs.relevance, atol=1e-7, rtol=1e-6)
    # The hooks read the very tensors the model reports.
    with AttentionCapture(model, find_attention_layers(model, lambda: model(x[:1]))) as capture:
        model(x)
    reported = model(x, output_attentions=True).attentions
    for ours, theirs in zip(capture.maps, reported):
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


def test_capture_reads_the_attention_our_vit_computes_and_changes_nothing():
    torch.manual_seed(0)
    model = VisionTransformer(dim=16, depth=4, heads=2).eval()
    x = torch.rand(3, 3, 32, 32)
    plain = model(x)
    layers = find_attention_layers(model, lambda: model(x[:1]))
    # Every layer, although each layer's probabilities are freed (and their id() reused) under no_grad.
    assert [name for name, _ in layers] == [f"blocks.{i}.attn.softmax" for i in range(4)]
    with AttentionCapture(model, layers) as capture:
        captured_logits = model(x)
    assert torch.equal(plain, captured_logits)
    # Recompute the first layer's attention from its weights.
    block = model.blocks[0]
    tokens = torch.cat([model.cls_token.expand(3, -1, -1), model.patch_embed(x).flatten(2).transpose(1, 2)], 1)
    tokens = block.norm1(tokens + model.pos_embed)
    q, k, _ = block.attn.qkv(tokens).view(3, -1, 3, 2, 8).permute(2, 0, 3, 1, 4)
    expected = (q @ k.transpose(-2, -1) / 8**0.5).softmax(-1)
    torch.testing.assert_close(capture.maps[0], expected, atol=1e-6, rtol=1e-5)


def test_sdpa_attention_is_refused_naming_the_switch_to_eager():
    model = hf_vit(eager=False)
    with pytest.raises(AttentionNotFoundError, match=r"'sdpa'.*set_attn_implementation\('eager'\)"):
        attention_maps(model, torch.rand(2, 3, 32, 32))


def test_maps_are_batched_and_independent_of_max_batch():
    torch.manual_seed(1)
    model = VisionTransformer(dim=16, depth=2, heads=2, num_registers=2).eval()
    x = torch.rand(6, 3, 32, 32)
    whole = attention_maps(model, x, "predicted")
    sliced = attention_maps(model, x, "predicted", max_batch=4)
    assert whole.special_tokens == 3 and whole.raw.shape == (6, 2, 2, 8, 8)
    for kind in ("raw", "rollout", "relevance"):
        torch.testing.assert_close(getattr(whole, kind), getattr(sliced, kind), atol=1e-6, rtol=1e-5)
    # The raw maps are rows of the attention probabilities: over patches they sum to at most 1.
    assert (whole.raw.sum((-2, -1)) <= 1 + 1e-5).all()


def test_the_attention_methods_upsample_like_grad_cam():
    torch.manual_seed(2)
    model = VisionTransformer(dim=16, depth=2, heads=2).eval()
    x = torch.rand(2, 3, 32, 32)
    maps = attention_maps(model, x, 0)
    rollout = AttentionRollout().attribute(model, x, 0)
    torch.testing.assert_close(
        rollout, F.interpolate(maps.rollout[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    )
    relevance = AttentionRelevance(upsample=False).attribute(model, x, 0)
    torch.testing.assert_close(relevance, maps.relevance)
    head = RawAttention(attention_layer=0, head=1, upsample=False).attribute(model, x, 0)
    torch.testing.assert_close(head, maps.raw[:, 0, 1])


def test_mass_in_mask_on_the_patch_grid_equals_energy_in_mask_of_the_nearest_upsampled_map():
    torch.manual_seed(3)
    maps = torch.rand(4, 2, 8, 8)
    masks = torch.rand(4, 32, 32) > 0.6
    on_grid = mass_in_mask_on_grid(maps, masks)
    for head in range(2):
        upsampled = F.interpolate(maps[:, head : head + 1], size=(32, 32), mode="nearest")[:, 0]
        torch.testing.assert_close(on_grid[:, head], energy_in_mask(upsampled, masks), atol=1e-6, rtol=1e-5)
