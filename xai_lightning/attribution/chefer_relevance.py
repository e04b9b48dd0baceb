"""Gradient-weighted attention relevance (Chefer, Gur & Wolf, "Generic Attention-model Explainability
for Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021, eq. 5–6 for self-attention).

Attention weights alone are class-agnostic. Weighting each layer's attention ``A_l`` by the
gradient of the explained score with respect to it, keeping the positive part and averaging over
heads gives

    Ā_l = mean_heads( (∇_{A_l} y ⊙ A_l)⁺ ),     R ← R + Ā_l · R   (l = 1 … L, R = I at the start)

whose CLS row over the patch tokens is the relevance map. The gradients of all layers come from
one backward pass; all examples are one batched matrix product.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["attention_relevance"]


def attention_relevance(attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor]) -> torch.Tensor:
    """Relevance ``R = Π_l (I + Ā_l)`` applied in layer order (``R ← R + Ā_l R``); ``(B, T, T)`` float32.

    Args:
        attentions, gradients: per layer, first to last, ``(B, heads, T, T)`` attention
            probabilities and the gradient of the explained score with respect to them.
    """
    if not attentions or len(attentions) != len(gradients):
        raise ValueError(
            f"Attention relevance needs one gradient per attention layer; got {len(attentions)} layers and "
            f"{len(gradients)} gradients."
        )
    first = attentions[0]
    batch, _, tokens, _ = first.shape
    relevance = torch.eye(tokens, device=first.device, dtype=torch.float32).expand(batch, tokens, tokens).clone()
    for attention, gradient in zip(attentions, gradients):
        weighted = (gradient.detach().float() * attention.detach().float()).clamp_min(0).mean(1)
        relevance = relevance + torch.bmm(weighted, relevance)
    return relevance
