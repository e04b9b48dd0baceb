"""TensorBoard sink: ``add_image`` (HWC), ``add_figure``, tables as markdown text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xai_lightning.logging.sink import Sink

__all__ = ["TensorBoardSink"]


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


class TensorBoardSink(Sink):
    """Logs through a Lightning ``TensorBoardLogger``; several images under one key get ``/<i>`` suffixes."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def scalars(self, metrics: Mapping[str, float], step: int) -> None:
        self.logger.log_metrics(dict(metrics), step=step)

    def images(self, key: str, images: Sequence[np.ndarray], captions: Sequence[str] | None, step: int) -> None:
        writer = self.logger.experiment
        for index, image in enumerate(images):
            tag = key if len(images) == 1 else f"{key}/{index}"
            writer.add_image(tag, image, global_step=step, dataformats="HWC")
        if captions:
            writer.add_text(f"{key}/caption", "\n\n".join(captions), global_step=step)

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        self.logger.experiment.add_text(key, markdown_table(columns, rows), global_step=step)

    def figure(self, key: str, figure: Any, step: int) -> None:
        self.logger.experiment.add_figure(key, figure, global_step=step, close=False)

    def flush(self) -> None:
        self.logger.experiment.flush()

    @property
    def location(self) -> str:
        return f"TensorBoard {self.logger.log_dir}"
