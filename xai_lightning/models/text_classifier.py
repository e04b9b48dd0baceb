"""A small transformer text classifier over token ids, pure torch, fast on a CPU."""

from __future__ import annotations

import torch
from torch import nn

from xai_lightning.models.transformer_block import TransformerBlock

__all__ = ["TextClassifier"]


class TextClassifier(nn.Module):
    """Token embedding + learned positions → ``depth`` pre-LN transformer blocks → LayerNorm →
    mean over the non-padding tokens → linear logits.

    Padding (``pad_id``) is masked out of attention and of the mean, so trailing padding changes
    nothing: a sentence gives the same logits however far it is padded. ``depth=0`` is a
    bag-of-embeddings model (the mean of the token embeddings).

    Layer names: ``embedding`` (the word embedding, an ``nn.Embedding``), ``position``,
    ``blocks.<i>`` (``attn.softmax`` gives the attention probabilities), ``norm``, ``head``.

    Args:
        vocab_size: number of token ids.
        num_classes: logits.
        dim, depth, heads, mlp_ratio: token width, blocks, heads, MLP expansion.
        max_length: longest sequence (position embeddings).
        pad_id: the padding id.
        dropout: dropout in the blocks.

    ``forward(input_ids (B, T) long, attention_mask (B, T) | None)``; without a mask, tokens equal
    to ``pad_id`` are padding.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int = 2,
        dim: int = 32,
        depth: int = 1,
        heads: int = 2,
        mlp_ratio: float = 2.0,
        max_length: int = 64,
        pad_id: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.pad_id = pad_id
        self.max_length = max_length
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.position = nn.Embedding(max_length, dim)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if input_ids.dim() != 2:
            raise ValueError(f"TextClassifier reads token ids (B, T); got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.max_length:
            raise ValueError(f"Sequences of {input_ids.shape[1]} tokens exceed max_length={self.max_length}")
        keep = input_ids != self.pad_id if attention_mask is None else attention_mask.bool()
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        tokens = self.embedding(input_ids) + self.position(positions)
        for block in self.blocks:
            tokens = block(tokens, keep)
        tokens = self.norm(tokens)
        weights = keep.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.head(pooled)
