"""A quiet console for our entry points: advertising tips and deprecation notices are not progress.

* Lightning (>= 2.5) logs "💡 Tip: ... try installing litlogger/litmodels" at every Trainer creation.
  Our command-line tools and study scripts call :func:`quiet_lightning_tips` once; the library
  itself never changes logging configuration (importing xai_lightning has no such side effect).
* Lightning's ``WandbLogger`` passes ``anonymous=None`` to ``wandb.init``, and wandb >= 0.23 warns at
  every run start that the setting "has no effect". :func:`without_anonymous_setting` drops the
  no-op setting from a logger whose run has not started; our CLI and studies apply it to the
  loggers they create.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["quiet_lightning_tips", "without_anonymous_setting"]

_TIP_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip:" not in record.getMessage()


_FILTER = _DropTips()


def quiet_lightning_tips() -> None:
    """Drop Lightning's "💡 Tip" log records (idempotent); every other message stays."""
    for name in _TIP_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def without_anonymous_setting(logger: Any) -> Any:
    """``logger``, without the ``anonymous=None`` wandb.init setting if it is a WandbLogger not started yet."""
    init = getattr(logger, "_wandb_init", None)
    if getattr(logger, "_experiment", True) is None and isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)
    return logger
