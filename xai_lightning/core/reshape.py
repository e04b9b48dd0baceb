"""Reshapes that turn a layer's activation into feature maps ``(B, C, h, w)``: transformers as grids.

Every map, concept and dissection method of this library reads a layer as ``(B, C, h, w)``. A
vision transformer's block carries tokens ``(B, 1 + R + N, D)`` instead: a CLS token, ``R``
register (or distillation) tokens and ``N = h·w`` patch tokens in row-major order (Dosovitskiy et
al. 2021; Darcet et al. 2024 for registers). :class:`TokenGrid` drops the ``1 + R`` leading special
tokens and folds the patches into ``(B, D, h, w)``, so Grad-CAM, TCAV and network dissection run on
ViTs unchanged.

A reshape is named in a layer spec after ``@`` (``"blocks.3.norm1:input@vit"``, see
:mod:`xai_lightning.core.layers`). Named presets:

==================  ==================================================================
``vit``             one special token (CLS) first, then a square grid of patches
``deit``            two (CLS and distillation), DeiT
``vit_reg<R>``      CLS and ``R`` registers, e.g. ``vit_reg4``
``grid``            no special tokens: every token is a patch
==================  ==================================================================

A callable ``(B, T, D) → (B, C, h, w)`` may be registered under a name with
:func:`register_reshape` (a :class:`~xai_lightning.core.layers.LayerSpec` given a callable does
it under the function's ``__name__``). Gradients with respect to the reshaped activation are the
reshaped gradients of the raw one, so a reshape must only *rearrange* elements — select, permute,
view — never compute with them (every preset does only that).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch

__all__ = ["Reshape", "TokenGrid", "get_reshape", "register_reshape", "reshape_name"]

Reshape = Callable[[torch.Tensor], torch.Tensor]

_PRESET_SPECIAL_TOKENS = {"vit": 1, "deit": 2, "grid": 0}
_REGISTERS = re.compile(r"^vit_reg(\d+)$")


class TokenGrid:
    """Fold tokens ``(B, S + N, D)`` into ``(B, D, h, w)``, dropping the ``S`` leading special tokens.

    Args:
        special_tokens: ``S``, the tokens before the patches (CLS, registers, distillation).
        grid: ``(h, w)`` of the patch grid; None: square, ``h = w = √N``.

    Raises (when called) a ValueError showing the token count and the declared special tokens
    when the patches do not fill the grid.
    """

    def __init__(self, special_tokens: int = 1, grid: tuple[int, int] | None = None, name: str | None = None) -> None:
        if special_tokens < 0:
            raise ValueError(f"special_tokens must be >= 0; got {special_tokens}")
        if grid is not None and (len(grid) != 2 or min(grid) < 1):
            raise ValueError(f"grid must be (h, w) with positive sides; got {grid}")
        self.special_tokens = int(special_tokens)
        self.grid = None if grid is None else (int(grid[0]), int(grid[1]))
        self.__name__ = name or (
            f"tokens{special_tokens}" if grid is None else f"tokens{special_tokens}_{grid[0]}x{grid[1]}"
        )

    def grid_size(self, tokens: int) -> tuple[int, int]:
        """``(h, w)`` for a sequence of ``tokens`` tokens; raises naming both numbers when it does not fit."""
        patches = tokens - self.special_tokens
        if self.grid is not None:
            if patches != self.grid[0] * self.grid[1]:
                raise ValueError(
                    f"The layer has {tokens} tokens; minus the {self.special_tokens} declared special token(s) "
                    f"that leaves {patches}, not the {self.grid[0]}x{self.grid[1]} = {self.grid[0] * self.grid[1]} "
                    "patches of the declared grid. Declare the number of special tokens (CLS, registers) and the "
                    "grid the model uses."
                )
            return self.grid
        side = math.isqrt(max(patches, 0))
        if patches < 1 or side * side != patches:
            raise ValueError(
                f"The layer has {tokens} tokens; minus the {self.special_tokens} declared special token(s) that "
                f"leaves {patches}, which is not a square number of patches h·w. Declare the special tokens the "
                "model puts before its patches (reshape='vit' for a CLS token, 'vit_reg<R>' for CLS and R "
                "registers, 'deit' for CLS and distillation, 'grid' for none) or give TokenGrid a grid=(h, w)."
            )
        return side, side

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3:
            raise ValueError(
                f"Reshape {self.__name__!r} folds tokens (B, tokens, dim) into a grid; the layer gives shape "
                f"{tuple(tokens.shape)}."
            )
        height, width = self.grid_size(tokens.shape[1])
        patches = tokens[:, self.special_tokens :]
        # (B, h·w, D) row-major patches → (B, D, h, w): channels first, as a convolution's output.
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)

    def __repr__(self) -> str:
        return f"TokenGrid(special_tokens={self.special_tokens}, grid={self.grid})"


_REGISTRY: dict[str, Reshape] = {}


def register_reshape(name: str, reshape: Reshape) -> str:
    """Make ``reshape`` available as ``"<layer>@<name>"``; returns the name.

    Registering the same callable twice is allowed; another callable under a taken name is not.
    """
    if not name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"A reshape name is an identifier (letters, digits, _); got {name!r}")
    if name in _PRESET_SPECIAL_TOKENS or _REGISTERS.match(name):
        raise ValueError(f"{name!r} is a built-in reshape preset; register a custom reshape under another name.")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not reshape:
        raise ValueError(f"A different reshape is already registered as {name!r}; choose another name.")
    if not callable(reshape):
        raise TypeError(f"A reshape is a callable (B, T, D) -> (B, C, h, w); got {type(reshape).__name__}")
    _REGISTRY[name] = reshape
    return name


def reshape_name(reshape: str | Reshape) -> str:
    """The name under which a reshape is known (registering a callable under its ``__name__``)."""
    if isinstance(reshape, str):
        get_reshape(reshape)  # unknown names fail here
        return reshape
    name = getattr(reshape, "__name__", None)
    if not name or name == "<lambda>":
        raise ValueError(
            "A callable reshape needs a name to identify the layer in logs and checkpoints: use a named function "
            "(def fold(tokens): ...) or register_reshape('fold', fn)."
        )
    for preset_name, preset in _REGISTRY.items():
        if preset is reshape:
            return preset_name
    return register_reshape(name, reshape)


def get_reshape(name: str) -> Reshape:
    """The reshape called ``name`` (a preset or a registered callable)."""
    if name in _PRESET_SPECIAL_TOKENS:
        return TokenGrid(_PRESET_SPECIAL_TOKENS[name], name=name)
    registers = _REGISTERS.match(name)
    if registers:
        return TokenGrid(1 + int(registers.group(1)), name=name)
    if name in _REGISTRY:
        return _REGISTRY[name]
    known = [*_PRESET_SPECIAL_TOKENS, "vit_reg<R>", *_REGISTRY]
    raise ValueError(f"Unknown reshape {name!r}; use one of {known} or register_reshape(name, fn).")
