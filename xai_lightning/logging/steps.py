"""The step a callback's results are logged at: the step of the epoch's validation metrics.

Lightning logs epoch-end metrics (``val/acc``, and everything ``LightningModule.log`` receives in an
epoch-end hook) at ``fit_loop.epoch_loop._batches_that_stepped`` *before* the last batch of the
epoch is counted: with 4 batches an epoch, at steps 3, 7, 11, while ``trainer.global_step`` reads
4, 8, 12 there. Images and tables logged at ``global_step`` would sit one row after the scalars they
belong to; :func:`logging_step` is the step Lightning itself uses.
"""

from __future__ import annotations

from typing import Any

__all__ = ["logging_step"]


def logging_step(trainer: Any) -> int:
    """The step at which Lightning's loggers write what is logged now (duck-typed trainer).

    During a validation run (mid-epoch or at an epoch's end) and in ``trainer.validate``:
    ``_batches_that_stepped``. In ``on_train_epoch_end``: one less, because the epoch's last batch
    has been counted but Lightning logs the epoch's metrics at the step before.
    """
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    stepped = getattr(loop, "_batches_that_stepped", None)
    if stepped is None:  # not a Lightning trainer we know: the global step is the best guess
        return int(getattr(trainer, "global_step", 0))
    state = getattr(trainer, "state", None)
    training_epoch_end = getattr(state, "fn", None) == "fit" and not getattr(trainer, "validating", False)
    return max(int(stepped) - 1, 0) if training_epoch_end else int(stepped)
