"""Weights & Biases sink: ``wandb.Image`` with captions, a fresh ``wandb.Table`` per call, config in ``run.config``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xai_lightning.logging.figure import figure_to_array
from xai_lightning.logging.sink import Sink, is_image

__all__ = ["WandbSink"]

STEP_KEY = "trainer/global_step"  # the step metric Lightning's WandbLogger defines


class WandbSink(Sink):
    """Logs into a Lightning ``WandbLogger``'s run; every record carries ``trainer/global_step``.

    ``deferred=True`` (observing callbacks): images, tables and figures are logged with
    ``commit=False`` and join the row Lightning writes next — the epoch-end metrics at the same
    step — so an observation is one row of the run's history, not one row per call.
    :meth:`commit` writes them out when no metrics row follows. With ``deferred=False`` every
    call is its own row.

    Tables are rebuilt on every call: W&B ignores re-logging a mutated ``wandb.Table``. Image
    cells (uint8 ``(H, W, 3)`` arrays) become ``wandb.Image`` cells.
    """

    def __init__(self, logger: Any, deferred: bool = False) -> None:
        self.logger = logger
        self.deferred = deferred
        self._pending_step: int | None = None

    def _log(self, data: dict[str, Any], step: int) -> None:
        record = {**data, STEP_KEY: step}
        if self.deferred:
            self.logger.experiment.log(record, commit=False)
            self._pending_step = step
        else:
            self.logger.experiment.log(record)

    def scalars(self, metrics: Mapping[str, float], step: int) -> None:
        self._log(dict(metrics), step)

    def images(self, key: str, images: Sequence[np.ndarray], captions: Sequence[str] | None, step: int) -> None:
        import wandb

        shown = [
            wandb.Image(image, caption=None if captions is None else captions[i]) for i, image in enumerate(images)
        ]
        self._log({key: shown}, step)

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        import wandb

        data = [[wandb.Image(cell) if is_image(cell) else cell for cell in row] for row in rows]
        self._log({key: wandb.Table(columns=list(columns), data=data)}, step)

    def figure(self, key: str, figure: Any, step: int) -> None:
        self.images(key, [figure_to_array(figure)], None, step)

    def html(self, key: str, html: str, step: int) -> None:
        """A ``wandb.Html`` document (called by :func:`~xai_lightning.logging.log_html`); deferred like images."""
        import wandb

        self._log({key: wandb.Html(html)}, step)

    def config(self, name: str, settings: Mapping[str, Any]) -> None:
        self.logger.experiment.config.update({name: dict(settings)}, allow_val_change=True)

    def commit(self, lightning_writes_row: bool = False) -> None:
        if self._pending_step is not None and not lightning_writes_row:
            self.logger.experiment.log({STEP_KEY: self._pending_step}, commit=True)
        self._pending_step = None

    @property
    def location(self) -> str:
        run_files = Path(self.logger.experiment.dir)
        return f"W&B run {run_files.parent} (images under {run_files / 'media' / 'images'})"
