"""Modified ReLU backward passes: the rules behind guided backprop and deconvnet.

For a ReLU ``y = max(x, 0)`` receiving the gradient ``g = ∂s/∂y`` from above:

==============  ====================================  ================================================
rule            passes back                            source
==============  ====================================  ================================================
``gradient``    ``g · [x > 0]``                        the ordinary chain rule
``guided``      ``max(g, 0) · [x > 0]``                Springenberg et al., "Striving for Simplicity:
                                                       The All Convolutional Net", ICLR-W 2015
``deconvnet``   ``max(g, 0)``  (forward mask ignored)  Zeiler & Fergus, "Visualizing and Understanding
                                                       Convolutional Networks", ECCV 2014
==============  ====================================  ================================================

The rule applies to every ``nn.ReLU`` module (as Captum's ``GuidedBackprop``/``Deconvolution``);
ReLUs called as functions inside ``forward`` cannot be seen and keep the ordinary gradient.
:class:`ReLURuleSwitch` lets one forward pass serve several backward passes with different rules
(Guided Grad-CAM needs the ordinary gradient at a layer and the guided one at the input).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from xai_lightning.attribution.output_override import override_module_outputs
from xai_lightning.core import ObserverGuard

__all__ = ["ReLURule", "ReLURuleSwitch", "apply_relu_rule"]

ReLURule = Literal["gradient", "guided", "deconvnet"]


class ReLURuleSwitch:
    """The rule in force, read when gradients flow back (so it may change between backward passes)."""

    def __init__(self, rule: ReLURule) -> None:
        self.rule: ReLURule = rule

    def modify(self, gradient: torch.Tensor) -> torch.Tensor:
        return gradient if self.rule == "gradient" else gradient.clamp_min(0)


def apply_relu_rule(guard: ObserverGuard, model: nn.Module, rule: ReLURule | ReLURuleSwitch) -> ReLURuleSwitch:
    """Install ``rule`` on every ``nn.ReLU`` of ``model`` for the guard's lifetime.

    ``"deconvnet"`` is fixed for the whole explanation (it changes the graph: the forward mask is
    dropped); ``"guided"``/``"gradient"`` may be switched between backward passes.

    Raises:
        ValueError: when the model has no ``nn.ReLU`` module (the rule would silently do nothing).
    """
    switch = rule if isinstance(rule, ReLURuleSwitch) else ReLURuleSwitch(rule)
    if switch.rule not in ("gradient", "guided", "deconvnet"):
        raise ValueError(f"Unknown ReLU rule {switch.rule!r}; use 'gradient', 'guided' or 'deconvnet'.")
    bypass_mask = switch.rule == "deconvnet"

    def replace(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not y.requires_grad:
            return y
        if bypass_mask:
            # Same value as y, but ∂/∂x = identity: the forward mask [x > 0] is not applied.
            y = y.detach() + (x - x.detach())
        y.register_hook(switch.modify)
        return y

    hooked = override_module_outputs(guard, model, lambda m: isinstance(m, nn.ReLU), replace)
    if not hooked:
        raise ValueError(
            f"The {switch.rule} rule acts on nn.ReLU modules, and {type(model).__name__} has none (ReLUs called "
            "as torch.relu/F.relu inside forward cannot be hooked). Use nn.ReLU modules, or a method that does "
            "not modify ReLU gradients (saliency, integrated_gradients, ...)."
        )
    return switch
