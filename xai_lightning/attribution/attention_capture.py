"""Capture a transformer's attention probabilities during a forward pass, without changing it.

An *attention layer* is a module whose output (or one element of its output tuple) is the
attention probabilities ``A ∈ (B, heads, T, T)``: non-negative, each row summing to one. They are
found with one forward pass (:func:`find_attention_layers`) — our models' ``attn.softmax``
modules, Hugging Face's attention modules in ``eager`` mode (``ViTAttention``,
``BertSelfAttention``), or any module that returns them — and read by forward hooks that return
nothing, so the model computes exactly what it computes without them. The captured tensors are the
ones multiplied with the values, so ``torch.autograd.grad(score, A)`` is defined (Chefer et al.).

Alternatively, ``source="outputs"`` asks the model itself (``model(x, output_attentions=True)``,
Hugging Face) — the same tensors, recorded by the library's own hooks.

Hugging Face models built with ``attn_implementation="sdpa"`` (the default) never materialise the
probabilities; the error says how to switch to ``eager``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from xai_lightning.core import get_layer, unwrap_model

__all__ = ["AttentionCapture", "AttentionNotFoundError", "find_attention_layers", "is_attention_probabilities"]

_ROW_SUM_TOLERANCE = 1e-3


class AttentionNotFoundError(ValueError):
    """The model exposes no attention probabilities to hooks; the message names the fix."""


def is_attention_probabilities(tensor: object) -> bool:
    """``(B, heads, T, T)`` non-negative with rows summing to 1 (within 1e-3)."""
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4 or tensor.shape[-1] != tensor.shape[-2]:
        return False
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return False
    detached = tensor.detach()
    rows = detached.sum(-1)
    return bool(detached.min() >= 0) and bool(torch.allclose(rows, torch.ones_like(rows), atol=_ROW_SUM_TOLERANCE))


def _probabilities_in(output: object) -> tuple[int | None, torch.Tensor] | None:
    """``(tuple index or None, tensor)`` of the attention probabilities in a module output, if any."""
    if is_attention_probabilities(output):
        return None, output  # type: ignore[return-value]
    if isinstance(output, (tuple, list)):
        for index, element in enumerate(output):
            if is_attention_probabilities(element):
                return index, element
    return None


def _sdpa_hint(model: nn.Module) -> str:
    implementation = next(
        (
            getattr(module.config, "_attn_implementation", None)
            for module in unwrap_model(model).modules()
            if hasattr(module, "config")
        ),
        None,
    )  # a Hugging Face model, perhaps inside a wrapper
    if implementation is not None and implementation != "eager":
        return (
            f" The model computes attention with {implementation!r}, which never materialises the attention "
            "probabilities: switch it to eager attention, e.g. model.set_attn_implementation('eager') or build it "
            "with attn_implementation='eager' (the numbers are the same up to float rounding)."
        )
    return (
        " Expose them from a module of their own (e.g. an nn.Softmax submodule, as "
        "xai_lightning.models.MultiHeadSelfAttention does) or return them from the attention module."
    )


def find_attention_layers(model: nn.Module, forward: Callable[[], object]) -> list[tuple[str, int | None]]:
    """``[(module name, tuple index or None), ...]`` of the modules that output attention probabilities,
    in execution order, found with one forward pass (``forward`` runs the model, e.g. on one input).

    A tensor returned by several nested modules (an attention module passing its child's
    probabilities on) is attributed to the first module that produced it.

    Raises:
        AttentionNotFoundError: when no module outputs attention probabilities, naming the fix.
    """
    root = unwrap_model(model)
    found: list[tuple[str, int | None]] = []
    # The tensors themselves are kept: an id() of a freed tensor can be reused by the next layer's.
    seen: list[torch.Tensor] = []

    def record(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            located = _probabilities_in(output)
            if located is not None and not any(located[1] is tensor for tensor in seen):
                seen.append(located[1])
                found.append((name, located[0]))

        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in root.named_modules() if name]
    try:
        with torch.no_grad():
            forward()
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        raise AttentionNotFoundError(
            f"Found no attention probabilities (B, heads, T, T) in the outputs of {type(root).__name__}'s modules."
            + _sdpa_hint(root)
        )
    return found


class AttentionCapture:
    """Record the attention probabilities of ``layers`` (from :func:`find_attention_layers`) during forward passes.

    ``maps`` holds one autograd-connected ``(B, heads, T, T)`` tensor per layer, in the order of
    ``layers``, after each forward. Hooks only read; they are removed on exit.
    """

    def __init__(self, model: nn.Module, layers: Sequence[tuple[str, int | None]]) -> None:
        self.layers = list(layers)
        self._modules = [get_layer(model, name) for name, _ in self.layers]
        self._captured: dict[int, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []

    @property
    def maps(self) -> list[torch.Tensor]:
        missing = [name for i, (name, _) in enumerate(self.layers) if i not in self._captured]
        if missing:
            raise RuntimeError(f"Attention layers {missing} did not run in the captured forward pass.")
        return [self._captured[i] for i in range(len(self.layers))]

    def _hook(self, position: int, index: int | None) -> Callable[..., None]:
        name = self.layers[position][0]

        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            tensor = output if index is None else output[index]  # type: ignore[index]
            if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4:
                raise TypeError(
                    f"Attention layer {name!r} no longer outputs attention probabilities (got "
                    f"{type(tensor).__name__}); was the attention implementation changed?"
                )
            self._captured[position] = tensor

        return hook

    def __enter__(self) -> AttentionCapture:
        self._captured.clear()
        self._handles = [
            module.register_forward_hook(self._hook(i, index))
            for i, (module, (_, index)) in enumerate(zip(self._modules, self.layers))
        ]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        while self._handles:
            self._handles.pop().remove()
