"""A pre-LayerNorm transformer block (Vaswani et al. 2017; pre-LN as in ViT, Dosovitskiy et al. 2021)
shared by the small ViT and the small text classifier."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MultiHeadSelfAttention", "TransformerBlock"]


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention whose attention probabilities come out of a module of their own.

    ``softmax`` is an ``nn.Softmax`` submodule, so a forward hook sees the probabilities
    ``A ∈ (B, heads, T, T)`` as computed — the very tensor multiplied with the values, so the
    gradient with respect to it is defined (attention rollout, Chefer relevance) — without
    changing anything the model computes.

    Args:
        dim: token width ``D`` (divisible by ``heads``).
        heads: attention heads.
        dropout: dropout on the attention probabilities (training only).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.softmax = nn.Softmax(dim=-1)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, T, D)``; ``key_mask (B, T)`` bool, True for tokens that may be attended to."""
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) * self.head_dim**-0.5
        if key_mask is not None:
            # The most negative finite value, not -inf: a sequence with every token masked gets uniform
            # attention instead of NaNs (its tokens are masked out of the pooling anyway).
            scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        attention = self.softmax(scores)  # (B, heads, T, T)
        mixed = self.dropout(attention) @ v  # (B, heads, T, head_dim)
        return self.proj(mixed.transpose(1, 2).reshape(batch, tokens, dim))


class TransformerBlock(nn.Module):
    """``x + attn(norm1(x))`` then ``x + mlp(norm2(x))`` on tokens ``(B, T, D)``.

    The input of ``norm1`` is the residual stream entering the block: the layer
    ``"blocks.<i>.norm1:input@vit"`` that Grad-CAM reads on a ViT.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))
