"""The representation an inversion or a feature visualisation works on: a layer's output, or the logits.

``Representation(model, "features.13")(x)`` returns that layer's activations for ``x`` (captured by
a forward hook that is removed after every call); ``"logits"`` means the model's output (through
``output_key`` for dict/tuple outputs) and ``"auto"`` the last module with a spatial 4-D output.
"""

from __future__ import annotations

import torch
from torch import nn

from xai_lightning.core import AUTO, LayerCapture, resolve_layers, select_logits

__all__ = ["LOGITS", "Representation"]

#: Layer name meaning "the model's logits".
LOGITS = "logits"


class Representation:
    """``Φ(x)``: the activations of ``layer`` in ``model`` (or its logits for ``layer="logits"``).

    Args:
        model: the network (in whatever mode the caller's guard put it).
        layer: a dotted module name, ``"auto"``, or ``"logits"``.
        probe: one example input, needed to resolve ``"auto"`` (a forward pass finds the layer).
        output_key: where the logits are when the model returns a dict/tuple.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str = LOGITS,
        probe: torch.Tensor | None = None,
        output_key: str | int | None = None,
    ) -> None:
        self.model = model
        self.output_key = output_key
        if layer == LOGITS:
            self.layer: str | None = None
        else:
            if layer == AUTO and probe is None:
                raise ValueError("layer='auto' needs a probe input to find the last spatial layer.")
            forward = None if probe is None else (lambda: model(probe[:1].detach()))
            with torch.no_grad():
                self.layer = resolve_layers(model, layer, forward=forward)[0]

    @property
    def name(self) -> str:
        return LOGITS if self.layer is None else self.layer

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer is None:
            return select_logits(self.model(x), self.output_key)
        with LayerCapture(self.model, self.layer) as capture:
            self.model(x)
        return capture.activations[self.layer]
