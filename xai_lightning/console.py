"""A quiet console for our entry points: Lightning's advertising tips are not progress information.

Lightning (>= 2.5) logs "💡 Tip: ... try installing litlogger/litmodels" at every Trainer creation.
Our command-line tools and study scripts call :func:`quiet_lightning_tips` once; the library itself
never changes logging configuration (importing xai_lightning has no such side effect).
"""

from __future__ import annotations

import logging

__all__ = ["quiet_lightning_tips"]

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
