"""Run a model's own ``forward`` channels-last with eval BatchNorms folded, for a block of observing passes.

Attribution passes get this through :meth:`~xai_lightning.attribution.ExplainedModel.fast_logits`.
Iterative syntheses (PGD attacks, targeted morphs, representation inversion, feature
visualisation) call ``model(x)`` hundreds of times from code that takes a plain ``nn.Module``;
:func:`fast_forward` gives every one of those calls the same two speed-ups without wrapping the
model in another module (so layer names, hooks and ``isinstance`` checks stay as they are):

* the images go in channels-last on a CPU (:class:`~xai_lightning.core.layout.ChannelsLastForward`);
* every eval-mode ``BatchNorm2d`` that only reads a convolution's output is folded into it for the
  pass (:class:`~xai_lightning.core.batchnorm_folding.BatchNormFolding`; pairs carrying a hook at
  the time of the pass, e.g. a captured layer, are left alone).

Both keep the numbers up to float reassociation (checked by each helper on a model's first pass)
and keep ``∂/∂x`` flowing to ``x``. Measured on SmallCNN (width 32, one thread, 32×32 images) for
forward + input gradient of 40 images: see ``RobustnessCallback``'s docstring.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from xai_lightning.core.batchnorm_folding import BatchNormFolding
from xai_lightning.core.layout import ChannelsLastForward

__all__ = ["fast_forward"]

_MISSING = object()


@contextmanager
def fast_forward(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, ``model(x, ...)`` runs channels-last (CPU, 4-D ``x``) with eval BatchNorms folded.

    The model's ``forward`` is replaced by an instance attribute for the block only and restored in
    ``finally`` (an instance ``forward`` the model already had is put back). Only the first
    positional argument is re-laid out; other arguments pass through. Yields ``model``.
    ``enabled=False``: the block runs the model as it is.
    """
    if not enabled:
        yield model
        return
    layout, folding = ChannelsLastForward(), BatchNormFolding(model)
    saved = model.__dict__.get("forward", _MISSING)
    original = model.forward

    def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs or not hasattr(x, "dim"):
            return original(x, *args, **kwargs)
        return layout(lambda rows: folding(original, rows), x)

    model.forward = forward  # type: ignore[method-assign]
    try:
        yield model
    finally:
        if saved is _MISSING:
            model.__dict__.pop("forward", None)
        else:
            model.__dict__["forward"] = saved
