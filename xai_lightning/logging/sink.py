"""One interface for everything a callback logs — scalars, images, tables, figures — over any logger.

:func:`sinks_for_trainer` wraps each of ``trainer.loggers`` in the matching sink: W&B
(``wandb.Image``/``wandb.Table``), TensorBoard (``add_image``/``add_figure``/``add_text``), and a
file fallback (PNG/CSV under the logger's directory) for ``CSVLogger`` and any other logger.
Observing callbacks log their scalars through Lightning (``LightningModule.log``); ``scalars``
here is for code outside Lightning's hooks, and goes through each logger's own ``log_metrics``.

Images are uint8 ``(H, W, 3)`` arrays. Keys are namespaced ``<callback>/<what>/<detail>``. Table
cells are numbers, strings or images (uint8 ``(H, W, 3)`` arrays): W&B shows them as images, the
file sink saves them as PNGs beside the CSV, TensorBoard's text tables name them.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Sink", "SinkSet", "check_image", "is_image"]


def is_image(value: Any) -> bool:
    """Whether a table cell is an image: a uint8 ``(H, W, 3)`` array."""
    return isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 3 and value.shape[-1] == 3


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

    def config(self, name: str, settings: Mapping[str, Any]) -> None:  # noqa: B027 - optional
        """Record a component's settings (e.g. a callback's constructor arguments) with the run."""

    def commit(self, lightning_writes_row: bool = False) -> None:  # noqa: B027 - optional
        """Write out a row whose media were held back for the logger's next metrics (W&B).

        ``lightning_writes_row``: Lightning is about to write that row (metrics were logged through
        ``LightningModule.log``); only stop holding.
        """

    def flush(self) -> None:  # noqa: B027 - optional
        """Make what was logged visible on disk (called after each callback run)."""

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Human-readable place where this sink's files land."""


class SinkSet(Sink):
    """Dispatch every call to several sinks (one per attached logger)."""

    def __init__(self, sinks: Iterable[Sink]) -> None:
        self.sinks = list(sinks)
        self._step: int | None = None

    def __len__(self) -> int:
        return len(self.sinks)

    @contextlib.contextmanager
    def at_step(self, step: int) -> Iterator[None]:
        """Within the block, every call logs at ``step``, whatever step it is given: an observing
        callback's images then land on the step of its scalars, in every logger."""
        previous, self._step = self._step, step
        try:
            yield
        finally:
            self._step = previous

    def _at(self, step: int) -> int:
        return step if self._step is None else self._step

    def scalars(self, metrics: Mapping[str, float], step: int) -> None:
        clean = {key: float(value) for key, value in metrics.items()}
        for sink in self.sinks:
            sink.scalars(clean, self._at(step))

    def images(self, key: str, images: Sequence[np.ndarray], captions: Sequence[str] | None, step: int) -> None:
        checked = [check_image(image) for image in images]
        if captions is not None and len(captions) != len(checked):
            raise ValueError(f"{len(captions)} captions for {len(checked)} images")
        for sink in self.sinks:
            sink.images(key, checked, captions, self._at(step))

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        for row in rows:
            if len(row) != len(columns):
                raise ValueError(f"Table {key!r}: row {list(row)} has {len(row)} cells for {len(columns)} columns")
        for sink in self.sinks:
            sink.table(key, columns, rows, self._at(step))

    def figure(self, key: str, figure: Any, step: int) -> None:
        for sink in self.sinks:
            sink.figure(key, figure, self._at(step))

    def config(self, name: str, settings: Mapping[str, Any]) -> None:
        for sink in self.sinks:
            sink.config(name, settings)

    def commit(self, lightning_writes_row: bool = False) -> None:
        for sink in self.sinks:
            sink.commit(lightning_writes_row)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    @property
    def location(self) -> str:
        return "; ".join(sink.location for sink in self.sinks) or "(no logger)"
