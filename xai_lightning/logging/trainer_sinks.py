"""Pick the sink for each logger attached to a Lightning trainer."""

from __future__ import annotations

from typing import Any

from xai_lightning.logging.file_sink import FileSink
from xai_lightning.logging.sink import Sink, SinkSet
from xai_lightning.logging.tensorboard_sink import TensorBoardSink
from xai_lightning.logging.wandb_sink import WandbSink

__all__ = ["sink_for_logger", "sinks_for_trainer"]


def sink_for_logger(logger: Any, deferred: bool = False) -> Sink | None:
    """The sink for one logger; ``None`` for Lightning's ``DummyLogger`` (``fast_dev_run``), which logs nothing.

    ``deferred``: W&B media wait for the logger's next metrics row (see :class:`WandbSink`).
    """
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
    from pytorch_lightning.loggers.logger import DummyLogger

    if isinstance(logger, DummyLogger):
        return None
    if isinstance(logger, WandbLogger):
        return WandbSink(logger, deferred=deferred)
    if isinstance(logger, TensorBoardLogger):
        return TensorBoardSink(logger)
    return FileSink(logger)


def sinks_for_trainer(trainer: Any, deferred: bool = False) -> SinkSet:
    """A :class:`SinkSet` over ``trainer.loggers`` (empty when the trainer has no logger)."""
    sinks = (sink_for_logger(logger, deferred=deferred) for logger in trainer.loggers)
    return SinkSet(sink for sink in sinks if sink is not None)
