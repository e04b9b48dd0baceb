"""Pick the sink for each logger attached to a Lightning trainer."""

from __future__ import annotations

from typing import Any

from xai_lightning.logging.file_sink import FileSink
from xai_lightning.logging.sink import Sink, SinkSet
from xai_lightning.logging.tensorboard_sink import TensorBoardSink
from xai_lightning.logging.wandb_sink import WandbSink

__all__ = ["sink_for_logger", "sinks_for_trainer"]


def sink_for_logger(logger: Any) -> Sink | None:
    """The sink for one logger; ``None`` for Lightning's ``DummyLogger`` (``fast_dev_run``), which logs nothing."""
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
    from pytorch_lightning.loggers.logger import DummyLogger

    if isinstance(logger, DummyLogger):
        return None
    if isinstance(logger, WandbLogger):
        return WandbSink(logger)
    if isinstance(logger, TensorBoardLogger):
        return TensorBoardSink(logger)
    return FileSink(logger)


def sinks_for_trainer(trainer: Any) -> SinkSet:
    """A :class:`SinkSet` over ``trainer.loggers`` (empty when the trainer has no logger)."""
    return SinkSet(sink for sink in map(sink_for_logger, trainer.loggers) if sink is not None)
