"""TensorBoard sink: ``add_image`` (HWC), ``add_figure``, tables as markdown text."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xai_lightning.logging.sink import Sink, is_image

__all__ = ["TensorBoardSink"]


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; image cells read ``(image HxW)``."""

    def text(cell: Any) -> str:
        return f"(image {cell.shape[0]}x{cell.shape[1]})" if is_image(cell) else str(cell)

    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(text(cell) for cell in row) + " |" for row in rows]
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

    def config(self, name: str, settings: Mapping[str, Any]) -> None:
        # As text rather than log_hyperparams: each hparams call would open another HParams session.
        body = json.dumps(dict(settings), indent=2, default=repr)
        self.logger.experiment.add_text(f"{name}/settings", f"```\n{body}\n```", global_step=0)

    def flush(self) -> None:
        self.logger.experiment.flush()

    @property
    def location(self) -> str:
        return f"TensorBoard {self.logger.log_dir}"
