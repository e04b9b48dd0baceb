"""File fallback sink: PNGs and CSVs under the logger's directory (CSVLogger and any other logger)."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from xai_lightning.logging.sink import Sink, is_image

__all__ = ["FileSink"]


def _key_path(root: Path, key: str) -> Path:
    parts = [re.sub(r"[^A-Za-z0-9._-]+", "_", part) for part in key.split("/") if part]
    return root.joinpath(*parts)


class FileSink(Sink):
    """Writes ``<dir>/xai/<key>/step_<step>.png|.csv``; scalars go to the logger's ``log_metrics``.

    ``<dir>`` is the logger's ``log_dir`` (or ``save_dir``, or the given ``directory``). Image
    captions are appended to ``<key>/captions.csv`` (file, step, caption). Image cells of a table
    are saved as ``step_<step>_<row>_<column>.png`` beside its CSV, which names them. Settings go
    to the logger's ``log_hyperparams`` (CSVLogger: ``hparams.yaml``), or to
    ``xai/<name>/settings.json`` without a logger.
    """

    def __init__(self, logger: Any | None = None, directory: str | Path | None = None) -> None:
        self.logger = logger
        base = directory or getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None) or "."
        self.root = Path(base) / "xai"

    def scalars(self, metrics: Mapping[str, float], step: int) -> None:
        if self.logger is not None:
            self.logger.log_metrics(dict(metrics), step=step)
        else:
            self._append_csv(
                self.root / "scalars.csv", ["step", "key", "value"], [[step, k, v] for k, v in metrics.items()]
            )

    def images(self, key: str, images: Sequence[np.ndarray], captions: Sequence[str] | None, step: int) -> None:
        folder = _key_path(self.root, key)
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for index, image in enumerate(images):
            name = f"step_{step:08d}.png" if len(images) == 1 else f"step_{step:08d}_{index:03d}.png"
            Image.fromarray(image).save(folder / name)
            if captions is not None:
                rows.append([name, step, captions[index]])
        if rows:
            self._append_csv(folder / "captions.csv", ["file", "step", "caption"], rows)

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        folder = _key_path(self.root, key)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for r, row in enumerate(rows):
            cells = []
            for c, cell in enumerate(row):
                if is_image(cell):
                    name = f"step_{step:08d}_{r:03d}_{c:02d}.png"
                    Image.fromarray(cell).save(folder / name)
                    cell = name
                cells.append(cell)
            written.append(cells)
        with open(folder / f"step_{step:08d}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows(written)

    def config(self, name: str, settings: Mapping[str, Any]) -> None:
        if self.logger is not None and hasattr(self.logger, "log_hyperparams"):
            self.logger.log_hyperparams({name: dict(settings)})
            return
        folder = _key_path(self.root, name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "settings.json").write_text(json.dumps(dict(settings), indent=2, default=repr))

    def figure(self, key: str, figure: Any, step: int) -> None:
        folder = _key_path(self.root, key)
        folder.mkdir(parents=True, exist_ok=True)
        figure.savefig(folder / f"step_{step:08d}.png", dpi=100)

    def flush(self) -> None:
        if self.logger is not None and hasattr(self.logger, "save"):
            self.logger.save()

    @staticmethod
    def _append_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(header)
            writer.writerows(rows)

    @property
    def location(self) -> str:
        return f"files under {self.root}"
