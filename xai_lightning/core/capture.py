"""Capture activations (and optionally their gradients) of named layers during a forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TypeVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from xai_lightning.core.layers import LayerSpec, LayerSpecLike, get_layer, parse_layer
from xai_lightning.core.reshape import Reshape

__all__ = ["LayerCapture"]

# ``typing.Self`` is Python 3.11+; the package supports 3.10 without typing_extensions.
_Capture = TypeVar("_Capture", bound="LayerCapture")


class LayerCapture:
    """Record the outputs (or inputs) of named layers, as autograd-connected tensors.

    The forward hook stores the layer's output and hands a *clone* of it to the rest of the
    network. An in-place module downstream (``ReLU(inplace=True)``, ``x += residual``) then
    modifies the clone, so the recorded activation keeps its value and
    ``torch.autograd.grad(score, capture.activations[name])`` is the gradient with respect to
    the layer's output as computed. With ``gradients=True`` a tensor hook (registered inside the
    forward hook) also records that gradient whenever a backward pass or ``autograd.grad`` call
    flows through the layer, for methods that differentiate with respect to something else.

    Layers are spec strings or :class:`~xai_lightning.core.layers.LayerSpec` s: ``":input"``
    records the tensor the module receives (a forward pre-hook, nothing replaced); ``"@<reshape>"``
    presents it folded to ``(B, C, h, w)``. Results are keyed by the spec's ``key`` (for a plain
    module name, the normalised name). For a reshaped layer, differentiate with
    :meth:`gradients_of`: the folded view is not on the forward path, so its gradient is the
    folded gradient of the raw tensor (exact, as reshapes only rearrange elements).

    Hooks are removed on exit, also when the forward raises.

    Example::

        with LayerCapture(model, ["features.6"]) as capture:
            logits = model(x)
        activation = capture.activations["features.6"]      # (B, C, h, w)
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpecLike | Sequence[LayerSpecLike],
        gradients: bool = False,
        reshape: str | Reshape | None = None,
    ) -> None:
        entries = [layers] if isinstance(layers, (str, LayerSpec, dict)) else list(layers)
        self.specs: dict[str, LayerSpec] = {}
        for entry in entries:
            spec = parse_layer(entry, reshape)
            self.specs[spec.key] = spec
        self._modules = {key: get_layer(model, spec.name) for key, spec in self.specs.items()}
        self.gradients_enabled = gradients
        self.raw: dict[str, torch.Tensor] = {}
        self._raw_gradients: dict[str, torch.Tensor] = {}
        self._handles: list[RemovableHandle] = []

    # ------------------------------------------------------------------ results
    @property
    def activations(self) -> dict[str, torch.Tensor]:
        """key → the recorded tensor, reshaped per its spec (the raw tensor itself without a reshape)."""
        return {key: self.specs[key].apply(raw) for key, raw in self.raw.items()}

    @property
    def gradients(self) -> dict[str, torch.Tensor]:
        """key → gradient recorded by the tensor hooks (``gradients=True``), reshaped like the activation."""
        return {key: self.specs[key].apply(grad) for key, grad in self._raw_gradients.items()}

    def gradients_of(
        self,
        score: torch.Tensor,
        keys: Sequence[str] | None = None,
        *,
        retain_graph: bool | None = None,
        create_graph: bool = False,
    ) -> list[torch.Tensor]:
        """``∂score/∂activation`` for ``keys`` (default: all, in spec order), each shaped like its activation.

        One ``torch.autograd.grad`` call; parameters' ``.grad`` is never touched.
        """
        keys = list(self.specs) if keys is None else [parse_layer(key).key for key in keys]
        missing = [key for key in keys if key not in self.raw]
        if missing:
            raise RuntimeError(f"Layers {missing} did not run in the captured forward pass.")
        raw_gradients = torch.autograd.grad(
            score, [self.raw[key] for key in keys], retain_graph=retain_graph, create_graph=create_graph
        )
        return [self.specs[key].apply(gradient) for key, gradient in zip(keys, raw_gradients)]

    # ------------------------------------------------------------------ hooks
    def _store(self, key: str, module: nn.Module, tensor: object, what: str) -> torch.Tensor:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"Layer {key!r} ({type(module).__name__}) {what} {type(tensor).__name__}, not a tensor; "
                "choose a layer whose output is a single tensor."
            )
        self.raw[key] = tensor
        if self.gradients_enabled and tensor.requires_grad:
            tensor.register_hook(lambda grad: self._raw_gradients.__setitem__(key, grad))
        return tensor

    def _output_hook(self, key: str):
        def hook(module: nn.Module, inputs: object, output: object) -> torch.Tensor:
            return self._store(key, module, output, "returns").clone()

        return hook

    def _input_hook(self, key: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            tensor = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
            self._store(key, module, tensor, "receives")

        return hook

    def __enter__(self: _Capture) -> _Capture:
        self.raw.clear()
        self._raw_gradients.clear()
        for key, module in self._modules.items():
            if self.specs[key].capture == "input":
                handle = module.register_forward_pre_hook(self._input_hook(key), with_kwargs=True)
            else:
                handle = module.register_forward_hook(self._output_hook(key))
            self._handles.append(handle)
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
