"""Progress bars for long steps (dissection passes, syntheses), shown only where someone watches.

A bar appears on an interactive terminal (stderr is a TTY) and nowhere else: not in logs, CI or
pytest output. ``XAI_LIGHTNING_PROGRESS=0`` turns them off, ``=1`` forces them on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["progress"]

T = TypeVar("T")


def _enabled() -> bool:
    setting = os.environ.get("XAI_LIGHTNING_PROGRESS", "").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return False
    if setting in ("1", "true", "yes", "on"):
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress(iterable: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """``iterable``, with a tqdm bar labelled ``description`` when :func:`_enabled`; it disappears when done."""
    if not _enabled():
        yield from iterable
        return
    from tqdm import tqdm

    yield from tqdm(iterable, desc=description, total=total, leave=False, dynamic_ncols=True)
