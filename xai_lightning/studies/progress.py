"""One progress bar over a whole study: (arm, seed, epoch), with an ETA."""

from __future__ import annotations

import math
import sys
from typing import Any

import pytorch_lightning as pl

__all__ = ["StudyProgress"]


class StudyProgress(pl.Callback):
    """Advances a study-wide ``tqdm`` bar by one per finished training epoch of the current run.

    The bar counts epochs over all runs (``total = runs × max_epochs``) and averages the rate
    over everything done so far (``smoothing=0``): runs are ordered seed by seed, so after the first
    pair the ETA reflects the mix of cheap and expensive (adversarial) epochs. The description says
    which arm and seed are training; the postfix shows validation accuracy. It reads metrics only.
    """

    def __init__(self, bar: Any, label: str, show: tuple[str, ...] = ("val/acc",)) -> None:
        super().__init__()
        self.bar = bar
        self.label = label
        self.show = show
        self.epochs_done = 0

    @staticmethod
    def make_bar(total: int, enabled: bool = True) -> Any:
        from tqdm.auto import tqdm

        return tqdm(
            total=total,
            unit="epoch",
            smoothing=0.0,
            dynamic_ncols=True,
            disable=not enabled,
            file=sys.stderr,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} epochs [{elapsed}<{remaining}]{postfix}",
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.bar.set_description(f"{self.label} · epoch 1/{trainer.max_epochs}", refresh=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs_done += 1
        shown = {}
        for key in self.show:
            value = trainer.callback_metrics.get(key)
            if value is not None and math.isfinite(float(value)):
                shown[key] = f"{float(value):.3f}"
        following = min(trainer.current_epoch + 2, trainer.max_epochs or 0)
        self.bar.set_description(f"{self.label} · epoch {following}/{trainer.max_epochs}", refresh=False)
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)

    def finish(self, max_epochs: int) -> None:
        """Count the epochs a run skipped (early stopping), so the bar's total stays right."""
        if self.epochs_done < max_epochs:
            self.bar.update(max_epochs - self.epochs_done)
