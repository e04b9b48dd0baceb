"""Run "the rest of the network" from a layer: replace one layer's output and finish the forward.

The explainer's "Δ error" (Zhang et al. 2018) is the performer's error when its upper layers run
on the explainer's *reconstructed* features instead of its own. Cutting an arbitrary network in
two is architecture-specific (residual connections, functional code in ``forward``); replacing the
layer's output with a forward hook is not: the hook returns the substitute tensor, PyTorch passes
it on to everything downstream, and the hook is removed in ``finally``. The layers below still run
(their result is discarded), which costs one lower-part forward and works for any model.
"""

from __future__ import annotations

import torch
from torch import nn

from xai_lightning.core import batch_slices, get_layer

__all__ = ["forward_with_layer_output"]


def forward_with_layer_output(
    model: nn.Module,
    layer: str,
    replacement: torch.Tensor,
    inputs: torch.Tensor,
    max_batch: int | None = None,
) -> torch.Tensor:
    """``model(inputs)`` with the output of ``layer`` replaced by ``replacement``.

    Args:
        model: the network (run as it is: call inside :func:`~xai_lightning.core.observe` for
            eval mode and no disturbance of training).
        layer: dotted module name whose output is replaced.
        replacement: ``(N, ...)`` the substitute output, same shape as the layer's output on
            ``inputs (N, ...)``.
        max_batch: run in slices of at most this many inputs.

    Returns:
        The model's output: as the model returns it for a single slice, concatenated over slices
        when there are several (which needs tensor outputs).

    Raises:
        ValueError: when the layer's output shape differs from ``replacement``'s (both shown), or
            when the layer does not run during the forward.
    """
    module = get_layer(model, layer)
    if replacement.shape[0] != inputs.shape[0]:
        raise ValueError(f"replacement has {replacement.shape[0]} rows for {inputs.shape[0]} inputs")
    outputs = []
    for rows in batch_slices(inputs.shape[0], max_batch):
        substitute = replacement[rows]
        used: list[bool] = []

        # Defaults bind this slice's replacement: the hook is registered and removed within the iteration.
        def hook(
            _module: nn.Module,
            _inputs: object,
            output: object,
            substitute: torch.Tensor = substitute,
            used: list[bool] = used,
        ) -> torch.Tensor:
            if not isinstance(output, torch.Tensor) or output.shape != substitute.shape:
                got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise ValueError(
                    f"Cannot replace the output of layer {layer!r}: it is {got}, the replacement is "
                    f"{tuple(substitute.shape)}"
                )
            used.append(True)
            return substitute.to(dtype=output.dtype, device=output.device)

        handle = module.register_forward_hook(hook)
        try:
            outputs.append(model(inputs[rows]))
        finally:
            handle.remove()
        if not used:
            raise ValueError(f"Layer {layer!r} did not run in the forward pass, so its output could not be replaced")
    if len(outputs) == 1:
        return outputs[0]
    if not all(isinstance(output, torch.Tensor) for output in outputs):
        raise TypeError("The model returns non-tensor outputs; call with max_batch=None to get them as they are")
    return torch.cat(outputs)
