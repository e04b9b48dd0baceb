"""Forward a model only as far as the deepest requested layer, and return those layers' outputs.

Concept methods (TCAV's activations of concept and random images) and network dissection need
layer outputs, not logits: the rest of the network after the deepest requested layer is wasted
work (SmallCNN, activations at ``features.13``: 37 % of the multiply-adds saved). A hook raises
once every requested layer has produced its output, which ends the forward pass there. On a CPU
the images go in channels-last (:class:`~xai_lightning.core.layout.ChannelsLastForward`), and eval
BatchNorms are folded into their convolutions (:mod:`xai_lightning.core.batchnorm_folding`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from xai_lightning.core.fast_forward import FastForward
from xai_lightning.core.layers import LayerSpec, LayerSpecLike, get_layer, parse_layer

__all__ = ["LayerActivations"]


class _StopForward(Exception):
    """Raised by a hook once every requested layer produced its tensor."""


class LayerActivations:
    """``LayerActivations(model, ["features.6", "features.13"])(images)`` →
    ``{"features.6": (B, K, h, w), ...}``: detached tensors, computed under ``torch.no_grad``, the
    forward stopped after the last of them. Hooks live only during the call.

    Layers are specs (:mod:`xai_lightning.core.layers`): ``":input"`` reads the tensor a module
    receives (the forward may stop before that module runs), ``"@<reshape>"`` folds it (a ViT's
    tokens to ``(B, D, h, w)``). Results are keyed by the spec's ``key``; :attr:`layers` lists them
    in the order given.
    """

    def __init__(self, model: nn.Module, layers: Sequence[LayerSpecLike]) -> None:
        self.model = model
        self.specs: list[LayerSpec] = [parse_layer(layer) for layer in layers]
        self.layers = [spec.key for spec in self.specs]
        self.modules = {spec.key: get_layer(model, spec.name) for spec in self.specs}
        self._fast = FastForward(model)

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs: dict[str, torch.Tensor] = {}
        wanted = len(set(self.layers))

        def store(spec: LayerSpec, module: nn.Module, tensor: object, what: str) -> None:
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(
                    f"Layer {spec.key!r} ({type(module).__name__}) {what} {type(tensor).__name__}, not a tensor."
                )
            outputs[spec.key] = spec.apply(tensor.detach())
            if len(outputs) == wanted:
                raise _StopForward

        def output_hook(spec: LayerSpec) -> Callable[..., None]:
            def hook(module: nn.Module, _inputs: object, output: object) -> None:
                store(spec, module, output, "returns")

            return hook

        def input_hook(spec: LayerSpec) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
                tensor = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
                store(spec, module, tensor, "receives")

            return hook

        def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
            outputs.clear()  # a pass may run more than once (BatchNorm folding's check on a first slice)
            try:
                self.model(x)
            except _StopForward:
                pass
            return dict(outputs)

        handles = [
            self.modules[spec.key].register_forward_pre_hook(input_hook(spec), with_kwargs=True)
            if spec.capture == "input"
            else self.modules[spec.key].register_forward_hook(output_hook(spec))
            for spec in self.specs
        ]
        try:
            with torch.no_grad():
                self._fast.run(forward, images)
        finally:
            for handle in handles:
                handle.remove()
        missing = [key for key in self.layers if key not in outputs]
        if missing:
            raise RuntimeError(f"Layers {missing} did not run in the model's forward pass.")
        return outputs
