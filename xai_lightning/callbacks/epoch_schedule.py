"""Epoch schedules for work an observer does less often than it observes (t-SNE, deep k-NN)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["epoch_listed", "every_n_or_last"]


def _last_epoch(trainer: Any) -> int | None:
    max_epochs = getattr(trainer, "max_epochs", None)
    return max_epochs - 1 if max_epochs is not None and max_epochs > 0 else None


def _fitting(trainer: Any) -> bool:
    return getattr(getattr(trainer, "state", None), "fn", "fit") == "fit"  # TrainerFn is a str enum


def epoch_listed(trainer: Any, epochs: Sequence[int]) -> bool:
    """Whether the current 0-based epoch is in ``epochs`` (negative values count from the end:
    ``-1`` is the last epoch). Outside ``fit`` (``trainer.validate``) any non-empty list matches."""
    if not epochs:
        return False
    if not _fitting(trainer):
        return True
    epoch, last = trainer.current_epoch, _last_epoch(trainer)
    return any(epoch == (e if e >= 0 else (last + 1 + e if last is not None else None)) for e in epochs)


def every_n_or_last(trainer: Any, n: int) -> bool:
    """Epochs ``n-1, 2n-1, …`` and the last one (the base's own rule); always outside ``fit``."""
    if not _fitting(trainer):
        return True
    epoch = trainer.current_epoch
    return (epoch + 1) % n == 0 or epoch == _last_epoch(trainer)
