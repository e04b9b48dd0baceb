"""One interface for everything a callback logs — scalars, images, tables, figures — over any logger.

:func:`sinks_for_trainer` wraps each of ``trainer.loggers`` in the matching sink: W&B
(``wandb.Image``/``wandb.Table``), TensorBoard (``add_image``/``add_figure``/``add_text``), and a
file fallback (PNG/CSV under the logger's directory) for ``CSVLogger`` and any other logger.
Scalars always go through the logger's own ``log_metrics`` with the trainer's global step.

Images are uint8 ``(H, W, 3)`` arrays. Keys are namespaced ``<callback>/<what>/<detail>``.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Sink", "SinkSet", "check_image"]


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate one image for logging: uint8, ``(H, W, 3)``."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"Sinks log uint8 (H, W, 3) images; got {image.dtype} {image.shape}")
    return image


class Sink(abc.ABC):
    """Where a callback's results go. One subclass per logger family."""

    @abc.abstractmethod
    def scalars(self, metrics: Mapping[str, float], step: int) -> None: ...

    @abc.abstractmethod
    def images(self, key: str, images: Sequence[np.ndarray], captions: Sequence[str] | None, step: int) -> None: ...

    @abc.abstractmethod
    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None: ...

    @abc.abstractmethod
    def figure(self, key: str, figure: Any, step: int) -> None:
        """Log a matplotlib figure (the caller closes it)."""

    def flush(self) -> None:
        """Make what was logged visible on disk (called after each callback run)."""

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Human-readable place where this sink's files land."""


class SinkSet(Sink):
    """Dispatch every call to several sinks (one per attached logger)."""

    def __init__(self, sinks: Iterable[Sink]) -> None:
        self.sinks = list(sinks)

    def __len__(self) -> int:
        return len(self.sinks)

    def scalars(self, metrics: Mapping[str, float], step: int) -> None:
        clean = {key: float(value) for key, value in metrics.items()}
        for sink in self.sinks:
            sink.scalars(clean, step)

    def images(self, key: str, images: Sequence[np.ndarray], captions: Sequence[str] | None, step: int) -> None:
        checked = [check_image(image) for image in images]
        if captions is not None and len(captions) != len(checked):
            raise ValueError(f"{len(captions)} captions for {len(checked)} images")
        for sink in self.sinks:
            sink.images(key, checked, captions, step)

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        for row in rows:
            if len(row) != len(columns):
                raise ValueError(f"Table {key!r}: row {list(row)} has {len(row)} cells for {len(columns)} columns")
        for sink in self.sinks:
            sink.table(key, columns, rows, step)

    def figure(self, key: str, figure: Any, step: int) -> None:
        for sink in self.sinks:
            sink.figure(key, figure, step)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    @property
    def location(self) -> str:
        return "; ".join(sink.location for sink in self.sinks) or "(no logger)"
