"""A block in which a model is in eval mode, with every module's own ``training`` flag restored after."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block ``model`` is in eval mode; on exit each module gets back its own flag.

    Restoring per module (not ``model.train(previous)``) keeps mixed states as they were, e.g. a
    frozen BatchNorm in eval inside a training model.
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for module, training in modes:
            module.training = training
