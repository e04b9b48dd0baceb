"""The explained class of each slice of a batch, resolved (and checked) once per call, not once per slice.

Methods run a batch in slices of ``max_batch`` rows and need each slice's targets. Targets that
depend on the slice's logits (``"predicted"``, or any other kind :func:`resolve_targets` learns)
are resolved slice by slice from them; targets that do not (a class index, one index per example,
``"label"``) are resolved for the whole batch at the first slice — one range check per call, where
the targets live, instead of a host synchronisation per slice on an accelerator.
"""

from __future__ import annotations

import torch

from xai_lightning.core.targets import TargetSpec, resolve_targets

__all__ = ["BatchTargets"]


def _fixed(target: TargetSpec) -> bool:
    """True for targets that do not depend on the model's output."""
    if isinstance(target, str):
        return target == "label"
    return isinstance(target, (int, torch.Tensor, list, tuple))


class BatchTargets:
    """``targets(rows, logits)`` → the ``(r,)`` classes of the batch rows ``rows`` whose logits are ``logits``.

    Args:
        target: a :data:`~xai_lightning.core.TargetSpec`.
        labels: ``(B,)`` labels for ``target="label"``.
        batch: ``B``, the rows of the whole batch.
    """

    def __init__(self, target: TargetSpec, labels: torch.Tensor | None, batch: int) -> None:
        self.target = target
        self.labels = labels
        self.batch = batch
        self._whole: torch.Tensor | None = None

    def __call__(self, rows: slice, logits: torch.Tensor) -> torch.Tensor:
        if not _fixed(self.target):
            labels = None if self.labels is None else self.labels[rows]
            return resolve_targets(self.target, logits, labels)
        if self._whole is None:
            shaped = logits.new_empty(self.batch, logits.shape[1])  # only its shape and device are read
            self._whole = resolve_targets(self.target, shaped, self.labels)
        return self._whole[rows]
