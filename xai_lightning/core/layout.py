"""Memory layout of image batches for forward passes that only observe: channels-last on a CPU.

PyTorch's CPU convolutions run faster on channels-last (NHWC) memory: SmallCNN, 64 images, one
thread: forward ~1.4×, forward + input gradient ~1.25× (our measurement; see the README's speed
section). Explanations, TCAV activations and dissection forwards therefore run on a channels-last
copy of the images on a CPU. The copy is part of the autograd graph, so ``∂/∂x`` still reaches
``x``; results equal the NCHW ones up to float reassociation. On CUDA the layout is left as the
caller gave it (cuDNN picks its own kernels; converting would cost a copy per pass).

A model that cannot take that layout (one that ``.view()``s its input, say) raises a RuntimeError
on the first try; :class:`ChannelsLastForward` then remembers to use NCHW for that model. An error
that channels-last does not cause (NCHW works, and channels-last works on a second try) is raised,
never retried away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["ChannelsLastForward"]

Result = TypeVar("Result")


class ChannelsLastForward:
    """Call ``forward(x)`` with ``x`` channels-last when ``x`` is a 4-D CPU batch and the model allows it.

    One instance per model (it remembers whether the layout worked). ``enabled=False`` always
    passes ``x`` as it is.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.works: bool | None = None if enabled else False  # None: not tried yet

    def wants(self, x: torch.Tensor) -> bool:
        return x.dim() == 4 and x.device.type == "cpu" and self.works is not False

    def __call__(self, forward: Callable[[torch.Tensor], Result], x: torch.Tensor) -> Result:
        if not self.wants(x):
            return forward(x)
        try:
            result = forward(x.contiguous(memory_format=torch.channels_last))
        except RuntimeError as first:
            if self.works:  # the layout worked before: this is a genuine error
                raise
            result = forward(x)  # NCHW; its own error, if any, is the one to see
            with torch.no_grad():  # does channels-last fail again, i.e. is the layout the cause?
                try:
                    forward(x.contiguous(memory_format=torch.channels_last))
                except RuntimeError:
                    self.works = False
                    return result
            raise first  # a one-off failure of the model, not of the layout: never hide it
        self.works = True
        return result
