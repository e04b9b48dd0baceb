"""Weights & Biases sink: ``wandb.Image`` with captions, fresh ``wandb.Table`` per call, scalars on the global step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xai_lightning.logging.figure import figure_to_array
from xai_lightning.logging.sink import Sink

__all__ = ["WandbSink"]


class WandbSink(Sink):
    """Logs through a Lightning ``WandbLogger`` so every record carries ``trainer/global_step``.

    Tables are rebuilt on every call: W&B ignores re-logging a mutated ``wandb.Table``.
    """

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def scalars(self, metrics: Mapping[str, float], step: int) -> None:
        self.logger.log_metrics(dict(metrics), step=step)

    def images(self, key: str, images: Sequence[np.ndarray], captions: Sequence[str] | None, step: int) -> None:
        kwargs = {"caption": list(captions)} if captions is not None else {}
        self.logger.log_image(key=key, images=list(images), step=step, **kwargs)

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        self.logger.log_table(key=key, columns=list(columns), data=[list(row) for row in rows], step=step)

    def figure(self, key: str, figure: Any, step: int) -> None:
        self.logger.log_image(key=key, images=[figure_to_array(figure)], step=step)

    @property
    def location(self) -> str:
        run_files = Path(self.logger.experiment.dir)
        return f"W&B run {run_files.parent} (images under {run_files / 'media' / 'images'})"
