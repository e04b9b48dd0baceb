"""Give chosen modules a different backward pass by replacing their outputs during the explained forward.

Guided backprop, deconvnet and DeepLIFT keep the forward pass and change how gradients flow back
through nonlinearities. Instead of full backward hooks on modules (which wrap every call in extra
autograd nodes), a forward hook hands the rest of the network a tensor with the *same value* and a
different gradient, built from the module's input and output:

* a pre-hook keeps the module's input — a clone is given to in-place modules
  (``ReLU(inplace=True)``), so the kept input still holds the pre-activation values;
* the forward hook returns ``replace(module, input, output)``.

Hooks are registered through the observer guard, which removes them when the explanation ends,
also when the forward raises. A module used several times in one forward is handled call by call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from xai_lightning.core import ObserverGuard

__all__ = ["override_module_outputs"]

Replace = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def override_module_outputs(
    guard: ObserverGuard, model: nn.Module, select: Callable[[nn.Module], bool], replace: Replace
) -> list[nn.Module]:
    """Hook every submodule of ``model`` for which ``select(module)`` is true; return the hooked modules."""
    hooked = [module for module in model.modules() if select(module)]
    for module in hooked:
        kept: list[torch.Tensor] = []

        def pre_hook(mod: nn.Module, args: tuple, kept: list[torch.Tensor] = kept):
            x = args[0]
            kept.append(x)
            if getattr(mod, "inplace", False) and isinstance(x, torch.Tensor):
                return (x.clone(), *args[1:])
            return None

        def forward_hook(mod: nn.Module, args: tuple, output: torch.Tensor, kept: list[torch.Tensor] = kept):
            return replace(mod, kept.pop(), output)

        guard.add_hook(module.register_forward_pre_hook(pre_hook))
        guard.add_hook(module.register_forward_hook(forward_hook))
    return hooked
