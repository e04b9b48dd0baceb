"""Which class an explanation explains, per example, and how to find logits in a model's output."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Union

import torch

__all__ = ["TargetSpec", "class_scores", "resolve_targets", "select_logits"]

#: ``"label"``: the ground-truth class; ``"predicted"``: the model's arg-max; an ``int``: that
#: class for every example; a sequence/tensor of length B: one class per example.
TargetSpec = Union[Literal["label", "predicted"], int, Sequence[int], torch.Tensor]


def select_logits(output: object, output_key: str | int | None = None) -> torch.Tensor:
    """Return the ``(B, num_classes)`` logits from a model output.

    Models returning a dict or tuple (e.g. ``{"logits": ..., "features": ...}``) need
    ``output_key`` — the dict key or tuple index of the logits.
    """
    if isinstance(output, torch.Tensor) and output_key is None:
        logits = output
    elif output_key is None:
        kind = type(output).__name__
        keys = list(output.keys()) if isinstance(output, Mapping) else f"indices 0..{len(output) - 1}"
        raise TypeError(
            f"The model returned a {kind}, not a tensor of logits. Pass output_key= naming where the "
            f"logits are (available: {keys})."
        )
    else:
        try:
            logits = output[output_key]  # type: ignore[index]
        except (KeyError, IndexError, TypeError) as error:
            raise TypeError(f"output_key={output_key!r} does not select anything in the model output") from error
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"output_key={output_key!r} selects a {type(logits).__name__}, not a tensor")
    if logits.dim() != 2:
        raise ValueError(f"Expected logits of shape (B, num_classes); got {tuple(logits.shape)}")
    return logits


def resolve_targets(
    target: TargetSpec, logits: torch.Tensor, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Turn a :data:`TargetSpec` into a ``(B,)`` long tensor of class indices on ``logits.device``."""
    batch, num_classes = logits.shape
    if isinstance(target, str):
        if target == "predicted":
            return logits.detach().argmax(dim=1)
        if target == "label":
            if labels is None:
                raise ValueError("target='label' needs labels; pass them or use target='predicted'.")
            resolved = torch.as_tensor(labels).long().reshape(-1)
        else:
            raise ValueError(f"Unknown target {target!r}; use 'label', 'predicted', a class index or one per example.")
    elif isinstance(target, int):
        # Checked in Python: no tensor, no synchronisation with the device.
        _check_class_range(target, target, num_classes)
        return torch.full((batch,), target, dtype=torch.long, device=logits.device)
    else:
        resolved = torch.as_tensor(target).long().reshape(-1)
    if resolved.numel() != batch:
        raise ValueError(f"Got {resolved.numel()} targets for a batch of {batch} examples.")
    if resolved.numel():
        # Checked where the targets live: targets given on the CPU cost the device no synchronisation
        # (a device tensor of targets costs one, here, once per call).
        _check_class_range(int(resolved.min()), int(resolved.max()), num_classes)
    # A fresh tensor on the logits' device: labels created under torch.inference_mode cannot be
    # saved for backward.
    return resolved.to(logits.device).clone()


def _check_class_range(smallest: int, largest: int, num_classes: int) -> None:
    if smallest < 0 or largest >= num_classes:
        raise ValueError(
            f"Target class {largest if largest >= num_classes else smallest} is out of "
            f"range: the model has {num_classes} classes (valid 0..{num_classes - 1})."
        )


def class_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The ``(B,)`` logits of each example's target class."""
    return logits.gather(1, targets.view(-1, 1)).squeeze(1)
