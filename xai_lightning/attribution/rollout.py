"""Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020).

Attention alone ignores the residual connections, through which every token also keeps its own
information. Rollout models each layer ``l`` as the mixing matrix

    Ã_l = normalise_rows( (1 − r)·fuse_heads(A_l) + r·I )        (r = 0.5 in the paper)

and the flow from the input tokens to the last layer as the product ``Ã_L ··· Ã_1``. Its CLS row
over the patch tokens is the map (:mod:`~xai_lightning.attribution.attention_map_methods`). Heads are
fused by their mean (the paper); ``"max"`` and ``"min"`` are common variants. Everything is a
batched matrix product ``(B, T, T)``; no gradient is involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

__all__ = ["HeadFusion", "attention_rollout", "fuse_heads"]

HeadFusion = Literal["mean", "max", "min"]


def fuse_heads(attention: torch.Tensor, fusion: HeadFusion = "mean") -> torch.Tensor:
    """``(B, heads, T, T)`` → ``(B, T, T)`` by the mean, max or min over heads."""
    if fusion == "mean":
        return attention.mean(1)
    if fusion == "max":
        return attention.amax(1)
    if fusion == "min":
        return attention.amin(1)
    raise ValueError(f"head_fusion must be 'mean', 'max' or 'min'; got {fusion!r}")


def attention_rollout(
    attentions: Sequence[torch.Tensor], residual: float = 0.5, head_fusion: HeadFusion = "mean"
) -> torch.Tensor:
    """``Ã_L ··· Ã_1`` with ``Ã_l = rownorm((1 − residual)·fuse(A_l) + residual·I)``; ``(B, T, T)`` float32.

    Args:
        attentions: per layer, first to last, ``(B, heads, T, T)`` attention probabilities.
        residual: weight of the identity (the residual connection); 0.5 in the paper.
        head_fusion: ``"mean"`` (paper), ``"max"`` or ``"min"``.
    """
    if not attentions:
        raise ValueError("Attention rollout needs the attention of at least one layer.")
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1]; got {residual}")
    first = attentions[0]
    batch, _, tokens, _ = first.shape
    identity = torch.eye(tokens, device=first.device, dtype=torch.float32).expand(batch, tokens, tokens)
    flow = identity
    for attention in attentions:
        mixed = (1.0 - residual) * fuse_heads(attention.detach().float(), head_fusion) + residual * identity
        mixed = mixed / mixed.sum(-1, keepdim=True)
        flow = torch.bmm(mixed, flow)
    return flow
