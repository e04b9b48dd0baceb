"""Capture activations (and optionally their gradients) of named layers during a forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from xai_lightning.core.layers import get_layer, normalize_layer_name

__all__ = ["LayerCapture"]


class LayerCapture:
    """Record the outputs of named layers, as autograd-connected tensors.

    The forward hook stores the layer's output and hands a *clone* of it to the rest of the
    network. An in-place module downstream (``ReLU(inplace=True)``, ``x += residual``) then
    modifies the clone, so the recorded activation keeps its value and
    ``torch.autograd.grad(score, capture.activations[name])`` is the gradient with respect to
    the layer's output as computed. With ``gradients=True`` a tensor hook (registered inside the
    forward hook) also records that gradient whenever a backward pass or ``autograd.grad`` call
    flows through the layer, for methods that differentiate with respect to something else.

    Hooks are removed on exit, also when the forward raises.

    Example::

        with LayerCapture(model, ["features.6"]) as capture:
            logits = model(x)
        activation = capture.activations["features.6"]      # (B, C, h, w)
    """

    def __init__(self, model: nn.Module, layers: str | Sequence[str], gradients: bool = False) -> None:
        names = [layers] if isinstance(layers, str) else list(layers)
        self._modules = {normalize_layer_name(name): get_layer(model, name) for name in names}
        self.gradients_enabled = gradients
        self.activations: dict[str, torch.Tensor] = {}
        self.gradients: dict[str, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: object, output: object) -> torch.Tensor:
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"Layer {name!r} ({type(module).__name__}) returns {type(output).__name__}, not a tensor; "
                    "choose a layer whose output is a single tensor."
                )
            self.activations[name] = output
            if self.gradients_enabled and output.requires_grad:
                output.register_hook(lambda grad: self.gradients.__setitem__(name, grad))
            return output.clone()

        return hook

    def __enter__(self) -> "LayerCapture":
        self.activations.clear()
        self.gradients.clear()
        self._handles = [module.register_forward_hook(self._hook(name)) for name, module in self._modules.items()]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()
