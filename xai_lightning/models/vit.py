"""A small Vision Transformer (Dosovitskiy et al., ICLR 2021) for 32×32 inputs, fast on a CPU.

Registers (Darcet et al., "Vision Transformers Need Registers", ICLR 2024) are optional extra
learned tokens after the CLS token; ``num_special_tokens`` (1 + registers) tells
:func:`~xai_lightning.core.auto_layer` how many tokens precede the patch grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from xai_lightning.models.normalize import Normalize
from xai_lightning.models.transformer_block import TransformerBlock

__all__ = ["VisionTransformer"]


class VisionTransformer(nn.Module):
    """Patch embedding (a ``patch_size`` strided convolution), CLS (+ register) tokens, learned
    position embeddings, ``depth`` pre-LN blocks, a final LayerNorm and a linear head on the CLS token.

    Layer names: ``normalize``, ``patch_embed``, ``blocks.<i>`` (each with ``norm1``, ``attn``
    (``attn.softmax`` gives the attention probabilities), ``norm2``, ``mlp``), ``norm``, ``head``.
    On 32×32 inputs with ``patch_size=4`` the patch grid is 8×8 (64 patch tokens + 1 CLS).

    Args:
        image_size, patch_size: the grid is ``(image_size // patch_size)²`` patches.
        in_channels, num_classes: input channels and logits.
        dim, depth, heads, mlp_ratio: token width, blocks, attention heads, MLP expansion.
        num_registers: register tokens after the CLS token (0: none).
        mean, std: per-channel normalisation inside the network (None: inputs used as is).
        dropout: dropout in the blocks.
    """

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        in_channels: int = 3,
        num_classes: int = 5,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        num_registers: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
        if num_registers < 0:
            raise ValueError(f"num_registers must be >= 0; got {num_registers}")
        self.grid = image_size // patch_size
        self.num_registers = num_registers
        self.num_special_tokens = 1 + num_registers
        self.num_classes = num_classes
        self.normalize: nn.Module = Normalize(mean, std) if mean is not None and std is not None else nn.Identity()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.registers = nn.Parameter(torch.zeros(1, num_registers, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_special_tokens + self.grid**2, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.registers, std=0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(self.normalize(x)).flatten(2).transpose(1, 2)  # (B, h·w, D), row-major
        batch = patches.shape[0]
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), self.registers.expand(batch, -1, -1), patches], 1)
        tokens = tokens + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens)[:, 0])
