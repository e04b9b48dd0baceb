"""EpochMetrics: keep the trainer's logged metrics per epoch, and print a progress line."""

from __future__ import annotations

import math
import re

import pytorch_lightning as pl

from xai_lightning.logging.steps import logging_step

__all__ = ["EpochMetrics"]


class EpochMetrics(pl.Callback):
    """Record ``trainer.callback_metrics`` (e.g. ``val/acc``) at the end of every training epoch.

    Observing callbacks keep their own ``history``; this one gives studies the module's own
    metrics on the same epoch axis, and ``step`` is the step the loggers wrote them at (as in the
    observers' histories). It reads metrics only, so training is unchanged.

    Args:
        label: prefix of the printed progress line (e.g. the study variant).
        show: regular expression of the metric keys to print each epoch (None: print nothing).
    """

    def __init__(self, label: str = "", show: str | None = r"^(train|val)/acc$") -> None:
        super().__init__()
        self.label = label
        self.show = re.compile(show) if show else None
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record = {"epoch": float(trainer.current_epoch), "step": float(logging_step(trainer))}
        for key, value in trainer.callback_metrics.items():
            try:
                record[key] = float(value)
            except (TypeError, ValueError):
                continue
        self.history.append(record)
        if self.show is not None and trainer.is_global_zero:
            shown = "  ".join(
                f"{k}={v:.3f}" for k, v in sorted(record.items()) if self.show.search(k) and not math.isnan(v)
            )
            print(f"[{self.label}] epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {shown}", flush=True)

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
