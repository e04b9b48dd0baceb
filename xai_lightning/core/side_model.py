"""Move a model a callback trains on the side (an explainer, an autoencoder) together with its optimizer."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["move_with_optimizer"]


def move_with_optimizer(module: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Put ``module`` and the tensors of ``optimizer``'s state (Adam's moments, …) on ``device``.

    A callback creates its side model at ``setup``, before Lightning moves the trained model (and
    the data) to its device; the first batch on that device brings the side model along. The
    optimizer's ``step`` counters stay where they are: PyTorch keeps them on the CPU unless the
    optimizer runs ``capturable``/fused. Nothing happens when the module is already there.
    """
    if next(module.parameters()).device == device:
        return
    module.to(device)
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key != "step":
                state[key] = value.to(device)
