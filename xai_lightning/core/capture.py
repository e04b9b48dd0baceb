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

    ``graph_from_layers=True`` is for passes that only differentiate with respect to the captured
    layers (Grad-CAM and the CAM family, TCAV's directional derivatives): the forward runs without
    recording an autograd graph until the first captured layer, whose tensor becomes a leaf that
    requires a gradient; recording starts there (and stays on until the block ends). The numbers
    are the same; the part of the network below the layer is not recorded, saved for backward or
    kept in memory (our ViT, last block: hooked forward + gradient 1.62× → 1.32× a plain forward).
    Gradients with respect to the input or to parameters below the first layer are then not
    available. A module that modifies a captured *input* in place gets a copy, so the recorded
    tensor keeps the value the module received, in both modes.

    Hooks are removed and the grad mode is restored on exit, also when the forward raises.

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
        graph_from_layers: bool = False,
    ) -> None:
        entries = [layers] if isinstance(layers, (str, LayerSpec, dict)) else list(layers)
        self.specs: dict[str, LayerSpec] = {}
        for entry in entries:
            spec = parse_layer(entry, reshape)
            self.specs[spec.key] = spec
        self._modules = {key: get_layer(model, spec.name) for key, spec in self.specs.items()}
        self.gradients_enabled = gradients
        self.graph_from_layers = graph_from_layers
        self._grad_mode_on_entry: bool | None = None
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
        if self.graph_from_layers and tensor.is_floating_point():
            # Recording starts here: a tensor made without a graph is a leaf, so it can require a gradient.
            torch.set_grad_enabled(True)
            if not tensor.requires_grad:
                tensor.requires_grad_(True)
        self.raw[key] = tensor
        if self.gradients_enabled and tensor.requires_grad:
            tensor.register_hook(lambda grad: self._raw_gradients.__setitem__(key, grad))
        return tensor

    def _output_hook(self, key: str):
        def hook(module: nn.Module, inputs: object, output: object) -> torch.Tensor:
            return self._store(key, module, output, "returns").clone()

        return hook

    def _input_hook(self, key: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                tensor = self._store(key, module, args[0], "receives")
                return (tensor.clone(), *args[1:]), kwargs
            name = next((name for name, value in kwargs.items() if isinstance(value, torch.Tensor)), None)
            tensor = self._store(key, module, None if name is None else kwargs[name], "receives")
            return args, {**kwargs, name: tensor.clone()}

        return hook

    def __enter__(self: _Capture) -> _Capture:
        self.raw.clear()
        self._raw_gradients.clear()
        if self.graph_from_layers:
            self._grad_mode_on_entry = torch.is_grad_enabled()
            torch.set_grad_enabled(False)
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
        if self._grad_mode_on_entry is not None:
            torch.set_grad_enabled(self._grad_mode_on_entry)
            self._grad_mode_on_entry = None
