"""What one training run left on disk, read back: scalars per epoch, image panels, tables, study metadata.

A run is either a **CSV log directory** (Lightning's ``CSVLogger``: ``metrics.csv``, with our file
sink's ``xai/<key>/step_<step>.png|.csv`` beside it) or an **offline W&B run** (``offline-run-*``
with its ``run-<id>.wandb`` file, read with ``wandb leet inspect --json``; images and tables under
``files/media``). Runs written by a study also carry its metadata — variant, seed, ε, the study
config and its fingerprint — in ``study_run.json`` (CSV) or in the W&B config (``study/*``).

Scalars are mapped to epochs through the module's own rows (Lightning writes ``epoch`` with every
metric the module logs): a callback's row at step ``s`` belongs to the epoch of the latest module
row at a step ``≤ s``.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["METADATA_FILE", "RunRecord", "find_runs", "load_run", "load_runs"]

#: The study metadata file a study writes into each run's CSV log directory.
METADATA_FILE = "study_run.json"
#: W&B config keys of the same metadata.
WANDB_PREFIX = "study/"

_STEP_FILE = re.compile(r"step_(\d+)(?:_\d+)?\.(png|csv)$")


@dataclass
class RunRecord:
    """One run's logged results.

    Attributes:
        path: the CSV log directory or the W&B run directory.
        variant: the study variant (or, outside a study, the run directory's name).
        seed: the study seed (None outside a study).
        epsilon: the adversarial-training radius of the run's arm (None: not adversarially trained).
        config_id: fingerprint of the study config without its seed list (None outside a study).
        config: the study config (None outside a study).
        scalars: key → ``[(epoch, value), ...]`` sorted by epoch (0-based; the last value of an epoch).
        images: key → ``[(epoch, png path), ...]``.
        tables: key → ``[(epoch, csv or json path), ...]``.
        seconds, cpu_seconds: wall-clock and CPU time of training (None when unknown).
        source: ``"csv"`` or ``"wandb"``.
    """

    path: Path
    variant: str
    seed: int | None = None
    epsilon: float | None = None
    config_id: str | None = None
    config: dict[str, Any] | None = None
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    images: dict[str, list[tuple[int, Path]]] = field(default_factory=dict)
    tables: dict[str, list[tuple[int, Path]]] = field(default_factory=dict)
    seconds: float | None = None
    cpu_seconds: float | None = None
    wandb_dir: Path | None = None
    source: str = "csv"

    @property
    def label(self) -> str:
        return self.variant if self.seed is None else f"{self.variant} (seed {self.seed})"

    def keys(self) -> list[str]:
        return sorted(self.scalars)

    def matching(self, pattern: str) -> list[str]:
        """Scalar keys that fully match the regular expression ``pattern``."""
        regex = re.compile(pattern)
        return sorted(key for key in self.scalars if regex.fullmatch(key))

    def series(self, key: str) -> tuple[list[int], list[float]]:
        points = self.scalars.get(key, [])
        return [p[0] for p in points], [p[1] for p in points]

    def measure(self, pattern: str) -> dict[int, float]:
        """epoch → mean over the keys matching ``pattern`` (finite values only) at that epoch."""
        sums: dict[int, list[float]] = {}
        for key in self.matching(pattern):
            for epoch, value in self.scalars[key]:
                if math.isfinite(value):
                    sums.setdefault(epoch, []).append(value)
        return {epoch: sum(values) / len(values) for epoch, values in sorted(sums.items())}

    def last(self, pattern: str) -> float | None:
        """The measure at the last epoch at which it was logged (None when never logged)."""
        values = self.measure(pattern)
        return values[max(values)] if values else None

    def matching_images(self, key: str) -> list[tuple[int, Path]]:
        return self.images.get(key, [])

    def table_rows(self, key: str) -> list[tuple[int, list[dict[str, str]]]]:
        """Each logged table of ``key``: ``(epoch, rows as dicts)``."""
        out = []
        for epoch, path in self.tables.get(key, []):
            out.append((epoch, _read_table(path)))
        return out


# ---------------------------------------------------------------------- discovery
def _is_csv_run(path: Path) -> bool:
    return (path / "metrics.csv").is_file()


def _is_wandb_run(path: Path) -> bool:
    return path.is_dir() and re.match(r"(offline-)?run-", path.name) is not None and any(path.glob("run-*.wandb"))


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run directories at or below ``paths`` (CSV log directories and offline W&B runs), sorted.

    Raises ``FileNotFoundError`` for a path that does not exist and ``ValueError`` naming what was
    looked for when a path holds no run at all.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"{str(path)!r} does not exist; give a run directory or a study's output directory."
            )
        if path.is_file():
            raise ValueError(f"{str(path)!r} is a file; give the directory that holds the run's logs.")
        here = [path] if _is_csv_run(path) or _is_wandb_run(path) else []
        here += sorted(p.parent for p in path.rglob("metrics.csv") if p.parent != path)
        here += sorted(p.parent for p in path.rglob("run-*.wandb") if _is_wandb_run(p.parent) and p.parent != path)
        if not here:
            raise ValueError(
                f"No callback logs under {str(path)!r}: looked for CSV logs (a directory with metrics.csv, as "
                "CSVLogger writes) and offline W&B runs (offline-run-*/run-*.wandb). Train with a logger attached, "
                "e.g. Trainer(logger=CSVLogger('runs')), and point the report at that directory."
            )
        found += [p for p in here if p not in found]
    return found


# ---------------------------------------------------------------------- CSV runs
def _float(text: str) -> float | None:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


class _EpochOfStep:
    """Step → epoch from the module's rows (those that carry ``epoch``): the latest at a step ≤ s."""

    def __init__(self, pairs: Iterable[tuple[int, int]]) -> None:
        latest: dict[int, int] = {}
        for step, epoch in pairs:
            latest[step] = max(epoch, latest.get(step, epoch))
        self.steps = sorted(latest)
        self.epochs = [latest[s] for s in self.steps]

    def __call__(self, step: int) -> int | None:
        index = bisect.bisect_right(self.steps, step) - 1
        if index < 0:
            return self.epochs[0] if self.epochs else None
        return self.epochs[index]


def _set_scalar(scalars: dict[str, dict[int, float]], key: str, epoch: int, value: float) -> None:
    scalars.setdefault(key, {})[epoch] = value  # later rows of an epoch win (the epoch's last value)


def _files(root: Path, suffix: str, epoch_of: _EpochOfStep) -> dict[str, list[tuple[int, Path]]]:
    """Our file sink's ``<root>/<key>/step_<step>.<suffix>`` → key → [(epoch, path)]."""
    out: dict[str, list[tuple[int, Path]]] = {}
    if not root.is_dir():
        return out
    for path in sorted(root.rglob(f"step_*.{suffix}")):
        match = _STEP_FILE.search(path.name)
        if not match:
            continue
        key = path.parent.relative_to(root).as_posix()
        epoch = epoch_of(int(match.group(1)))
        out.setdefault(key, []).append((epoch if epoch is not None else int(match.group(1)), path))
    return out


def _load_csv_run(path: Path) -> RunRecord:
    with open(path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    epoch_of = _EpochOfStep(
        (int(float(row["step"])), int(float(row["epoch"])))
        for row in rows
        if _float(row.get("epoch", "")) is not None and _float(row.get("step", "")) is not None
    )
    scalars: dict[str, dict[int, float]] = {}
    for row in rows:
        step = _float(row.get("step", ""))
        epoch_value = _float(row.get("epoch", ""))
        epoch = int(epoch_value) if epoch_value is not None else (epoch_of(int(step)) if step is not None else None)
        if epoch is None:
            continue
        for key, text in row.items():
            if key in ("epoch", "step") or key is None:
                continue
            value = _float(text)
            if value is not None:
                _set_scalar(scalars, key, epoch, value)
    record = RunRecord(path=path, variant=path.name, source="csv")
    record.scalars = {key: sorted(values.items()) for key, values in scalars.items()}
    record.images = _files(path / "xai", "png", epoch_of)
    record.tables = _files(path / "xai", "csv", epoch_of)
    metadata = path / METADATA_FILE
    if metadata.is_file():
        _apply_metadata(record, json.loads(metadata.read_text()))
    return record


def _apply_metadata(record: RunRecord, meta: Mapping[str, Any]) -> None:
    record.variant = str(meta.get("variant", record.variant))
    record.seed = None if meta.get("seed") is None else int(meta["seed"])
    record.epsilon = None if meta.get("epsilon") is None else float(meta["epsilon"])
    record.config_id = meta.get("config_id")
    config = meta.get("config")
    record.config = json.loads(config) if isinstance(config, str) else config
    record.seconds = meta.get("seconds")
    record.cpu_seconds = meta.get("cpu_seconds")
    if meta.get("wandb_dir"):
        record.wandb_dir = Path(meta["wandb_dir"])


# ---------------------------------------------------------------------- W&B runs
def _wandb_executable() -> str:
    found = shutil.which("wandb") or str(Path(sys.executable).with_name("wandb"))
    if not Path(found).exists():
        raise RuntimeError("Reading an offline W&B run needs the `wandb` command (pip install wandb).")
    return found


def _wandb_records(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [_wandb_executable(), "leet", "inspect", "--json", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"`wandb leet inspect --json {path}` failed: {result.stderr.strip()[-500:]}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip().startswith("{")]


def _load_wandb_run(path: Path) -> RunRecord:
    records = _wandb_records(path)
    config: dict[str, Any] = {}
    name = path.name
    items = []
    for record in records:
        kind = record.get("type")
        if kind == "run":
            name = record["run"].get("display_name") or name
            config.update((record["run"].get("config") or {}).get("update") or {})
        elif kind == "config":
            config.update(record["config"].get("update") or {})
        elif kind == "history":
            items.append(record["history"]["item"])
    epoch_of = _EpochOfStep(
        (int(item["trainer/global_step"]), int(item["epoch"]))
        for item in items
        if "epoch" in item and "trainer/global_step" in item
    )
    scalars: dict[str, dict[int, float]] = {}
    images: dict[str, list[tuple[int, Path]]] = {}
    tables: dict[str, list[tuple[int, Path]]] = {}
    for item in items:
        step = item.get("trainer/global_step", item.get("_step"))
        epoch = int(item["epoch"]) if "epoch" in item else (epoch_of(int(step)) if step is not None else None)
        if epoch is None:
            continue
        for key, value in item.items():
            if key.startswith("_") or key in ("epoch", "trainer/global_step"):
                continue
            if key.endswith(".filenames") and isinstance(value, list):
                for filename in value:
                    images.setdefault(key[: -len(".filenames")], []).append((epoch, path / "files" / filename))
            elif key.endswith(".path") and str(item.get(key[: -len(".path")] + "._type", "")).startswith("table"):
                tables.setdefault(key[: -len(".path")], []).append((epoch, path / "files" / value))
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and "." not in key.rsplit("/", 1)[-1]:
                _set_scalar(scalars, key, epoch, float(value))
    run = RunRecord(path=path, variant=name, source="wandb", wandb_dir=path)
    run.scalars = {key: sorted(values.items()) for key, values in scalars.items()}
    run.images, run.tables = images, tables
    meta = {key[len(WANDB_PREFIX) :]: value for key, value in config.items() if key.startswith(WANDB_PREFIX)}
    if meta:
        _apply_metadata(run, meta)
    return run


def _read_table(path: Path) -> list[dict[str, str]]:
    if path.suffix == ".csv":
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    data = json.loads(path.read_text())  # a W&B table file: {"columns": [...], "data": [[...], ...]}
    return [{str(c): str(v) for c, v in zip(data["columns"], row)} for row in data.get("data", [])]


# ---------------------------------------------------------------------- loading
def load_run(path: str | Path) -> RunRecord:
    """Read one run directory (CSV log directory or offline W&B run)."""
    path = Path(path)
    if _is_csv_run(path):
        return _load_csv_run(path)
    if _is_wandb_run(path):
        return _load_wandb_run(path)
    raise ValueError(f"{str(path)!r} holds neither metrics.csv (CSV logs) nor run-*.wandb (an offline W&B run).")


def load_runs(paths: Iterable[str | Path]) -> list[RunRecord]:
    """Every run at or below ``paths``; a study's W&B copy of a run it also logged to CSV is dropped.

    Raises ``ValueError`` naming the offending run when runs come from different study configs.
    """
    runs = [load_run(path) for path in find_runs(paths)]
    seen: set[tuple[str | None, str, int | None]] = set()
    kept = []
    for run in sorted(runs, key=lambda r: (r.source != "csv", str(r.path))):  # CSV first: it has the file panels
        identity = (run.config_id, run.variant, run.seed)
        if run.config_id is not None and identity in seen:
            continue
        seen.add(identity)
        kept.append(run)
    ids = {run.config_id for run in kept}
    if len(ids) > 1:
        first = kept[0]
        other = next(run for run in kept if run.config_id != first.config_id)
        none = "none: not a study run"
        raise ValueError(
            f"These runs come from different study configs: {str(other.path)!r} (config {other.config_id or none}) "
            f"vs {str(first.path)!r} (config {first.config_id or none}). A report compares runs of one "
            "config; pass the runs of one study (or of one plain training setup) only."
        )
    return sorted(kept, key=lambda r: (r.variant, -1 if r.seed is None else r.seed, str(r.path)))
