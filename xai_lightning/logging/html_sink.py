"""Log an HTML document through every sink: ``wandb.Html`` to W&B, an ``.html`` file elsewhere.

An addition beside the :class:`~xai_lightning.logging.Sink` interface (which has no HTML method):
:func:`log_html` dispatches on the sink's kind. A sink that has an ``html(key, html, step)``
method is called through it (:class:`~xai_lightning.logging.WandbSink` logs a ``wandb.Html``),
so the interface can grow one without changing the callers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xai_lightning.logging.file_sink import FileSink, _key_path
from xai_lightning.logging.sink import Sink, SinkSet
from xai_lightning.logging.tensorboard_sink import TensorBoardSink

__all__ = ["html_file", "log_html"]


def html_file(root: Path, key: str, html: str, step: int) -> Path:
    """Write ``<root>/<key>/step_<step>.html`` and return its path."""
    folder = _key_path(root, key)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:08d}.html"
    path.write_text(html, encoding="utf-8")
    return path


def _log_one(sink: Sink, key: str, html: str, step: int) -> Path | None:
    custom = getattr(sink, "html", None)
    if callable(custom):
        custom(key, html, step)
        return None
    if isinstance(sink, TensorBoardSink):
        path = html_file(Path(sink.logger.log_dir) / "xai", key, html, step)
        sink.logger.experiment.add_text(key, f"HTML written to `{path}`", global_step=step)
        return path
    if isinstance(sink, FileSink):
        return html_file(sink.root, key, html, step)
    root: Any = getattr(sink, "root", None)
    return html_file(Path(root), key, html, step) if root is not None else None


def log_html(sinks: Sink, key: str, html: str, step: int) -> list[Path]:
    """Log ``html`` under ``key`` to every sink of ``sinks``; returns the files written.

    Like the other media of an observation, it lands on the step a :class:`SinkSet` is held at
    (:meth:`SinkSet.at_step`) and, on W&B, joins the observation's row."""
    if isinstance(sinks, SinkSet):
        step = sinks._at(step)
    members = sinks.sinks if isinstance(sinks, SinkSet) else [sinks]
    written = [_log_one(sink, key, html, step) for sink in members]
    return [path for path in written if path is not None]
