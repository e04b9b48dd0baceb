"""Observing passes tuned for the CPU: channels-last images, eval BatchNorms folded, cache-sized slices.

A pass that only observes a model (no parameter gradients; an input gradient is fine) can run
faster than the training forward without changing its numbers beyond float reassociation:

* on a CPU the images go in channels-last (:class:`~xai_lightning.core.layout.ChannelsLastForward`);
* every eval-mode BatchNorm after a convolution is folded into it
  (:class:`~xai_lightning.core.batchnorm_folding.BatchNormFolding`);
* on a CPU a pass takes at most :data:`CPU_INPUT_ELEMENTS_PER_PASS` input elements
  (:func:`rows_per_pass`, :func:`pass_slices`): bigger batches run slower per image once the
  activations outgrow the caches.

SmallCNN (width 32), 512 images of 3×32×32, no gradients, one thread, a shared machine: one batch
of 512 NCHW ~1.3 s; slices of 64 NCHW ~0.7 s; slices of 64 channels-last with folding ~0.45 s.

Two ways in: :class:`FastForward` is a callable for code that owns its passes (the dynamics
measures); :func:`fast_forward` is a block within which the model's own ``forward`` runs that
way, for code that takes a plain ``nn.Module`` and calls ``model(x)`` hundreds of times (PGD
attacks, targeted morphs, representation inversion, feature visualisation) — no wrapper module,
so layer names, hooks and ``isinstance`` checks stay as they are. Attribution passes get the same
through :meth:`~xai_lightning.attribution.ExplainedModel.fast_logits`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from xai_lightning.core.batching import even_slices
from xai_lightning.core.batchnorm_folding import BatchNormFolding
from xai_lightning.core.layout import ChannelsLastForward

__all__ = ["CPU_INPUT_ELEMENTS_PER_PASS", "FastForward", "fast_forward", "pass_slices", "rows_per_pass"]

#: On a CPU, observing passes take at most this many input elements (85 images of 3×32×32): there,
#: bigger batches run slower per image once activations outgrow the caches (SmallCNN, 1 thread:
#: 64 images 0.63 ms each, 1,024 images 0.99, 3,136 1.13).
CPU_INPUT_ELEMENTS_PER_PASS = 2**18


def rows_per_pass(
    row: torch.Tensor, max_batch: int | None, cpu_elements: int = CPU_INPUT_ELEMENTS_PER_PASS
) -> int | None:
    """Rows per pass of inputs shaped like ``row`` (``(1, ...)`` or more rows): ``max_batch`` (None:
    no cap), and on a CPU at most ``cpu_elements`` input elements (at least one row)."""
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1 or None; got {max_batch}")
    if row.device.type != "cpu":
        return max_batch
    rows = max(1, cpu_elements // max(1, math.prod(row.shape[1:])))
    return rows if max_batch is None else min(rows, max_batch)


def pass_slices(x: torch.Tensor, max_batch: int | None) -> Iterator[slice]:
    """Slices of the rows of ``x`` for passes of at most :func:`rows_per_pass` rows each, evened out
    (:func:`~xai_lightning.core.batching.even_slices`)."""
    return even_slices(x.shape[0], rows_per_pass(x, max_batch))


class FastForward:
    """``fast(x)``: ``forward(x)`` (default ``model(x)``) with ``x`` channels-last on a CPU and the
    model's eval BatchNorms folded into their convolutions.

    One instance per observation: the folded weights are computed from the weights as they are at
    the first pass (:class:`~xai_lightning.core.batchnorm_folding.BatchNormFolding`). The
    channels-last copy is part of the autograd graph, so input gradients still reach ``x``.
    Modules that carry hooks during the pass (a captured layer) are not folded, so hooks see
    what they always see. ``fold_batchnorm=False`` keeps only the layout change.

    The one home of this composition: attribution passes
    (:meth:`~xai_lightning.attribution.ExplainedModel.fast_logits`), layer activations
    (:class:`~xai_lightning.core.layer_activations.LayerActivations`, through :meth:`run` with a
    forward of their own) and the :func:`fast_forward` block all go through it.
    """

    def __init__(
        self, model: nn.Module, forward: Callable[[torch.Tensor], Any] | None = None, fold_batchnorm: bool = True
    ) -> None:
        self.model = model
        self.forward: Callable[[torch.Tensor], Any] = forward if forward is not None else model
        self._layout = ChannelsLastForward()  # remembers whether the model takes channels-last images
        self._folding = BatchNormFolding(model, enabled=fold_batchnorm)

    def __call__(self, x: torch.Tensor) -> Any:
        return self.run(self.forward, x)

    def run(self, forward: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Any:
        """``forward(x)`` with this instance's layout and folded BatchNorms (``forward`` calls the model)."""
        return self._layout(lambda rows: self._folding(forward, rows), x)


_MISSING = object()


@contextmanager
def fast_forward(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, ``model(x)`` runs as :class:`FastForward` does (CPU: channels-last ``x``,
    eval BatchNorms folded).

    The model's ``forward`` is replaced by an instance attribute for the block only and restored in
    ``finally`` (an instance ``forward`` the model already had is put back). Calls with more than
    one argument, or with a non-tensor, run the original ``forward``. Yields ``model``.
    ``enabled=False``: the block runs the model as it is.
    """
    if not enabled:
        yield model
        return
    saved = model.__dict__.get("forward", _MISSING)
    original = model.forward
    fast = FastForward(model, original)

    def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs or not isinstance(x, torch.Tensor):
            return original(x, *args, **kwargs)
        return fast(x)

    model.forward = forward
    try:
        yield model
    finally:
        if saved is _MISSING:
            model.__dict__.pop("forward", None)
        else:
            model.__dict__["forward"] = saved
