"""Comparison studies: train several variants of one model under identical conditions and observe them.

Every variant gets the same seed, data, architecture and set of observing callbacks; variants
differ only by their extra callbacks (for example ``AdversarialTrainingCallback``). Each variant
logs to an offline W&B run (all in one W&B group) and to files (PNG/CSV, which the report reads),
and keeps every observer's ``history``. The whole study is described by one YAML file::

    name: robust_vs_standard
    seed: 0
    output_dir: runs/robust_vs_standard
    data: {class_path: xai_lightning.ConceptWorldDataModule, init_args: {...}}
    model: {class_path: xai_lightning.ImageClassifier, init_args: {network: {class_path: ...}}}
    trainer: {max_epochs: 6}                  # plain pytorch_lightning.Trainer arguments
    observers: [{class_path: xai_lightning.GradCAMCallback, init_args: {...}}]
    variants: {standard: [], robust: [{class_path: xai_lightning.AdversarialTrainingCallback}]}
    report: {...}                             # see xai_lightning.studies.comparison_report
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.callbacks.epoch_metrics import EpochMetrics
from xai_lightning.console import without_anonymous_setting
from xai_lightning.studies.config import instantiate

__all__ = ["VariantResult", "run_comparison"]

REQUIRED_KEYS = ("name", "data", "model", "variants")


@dataclass
class VariantResult:
    """What one trained variant left behind.

    Attributes:
        name: the variant's name in the study config.
        metrics: per-epoch ``trainer.callback_metrics`` (``val/acc`` …) from :class:`EpochMetrics`.
        observers: observer class name → its per-epoch ``history`` of scalars.
        files_dir: directory of the variant's file logs; images under ``xai/<key>/step_*.png``.
        wandb_dir: the variant's offline W&B run directory (None without W&B).
        seconds: wall-clock training time.
    """

    name: str
    metrics: list[dict[str, float]]
    observers: dict[str, list[dict[str, float]]]
    files_dir: Path
    wandb_dir: Path | None = None
    seconds: float = 0.0
    callbacks: list[pl.Callback] = field(default_factory=list, repr=False)

    def keys(self) -> set[str]:
        found = {key for record in self.metrics for key in record}
        for history in self.observers.values():
            found |= {key for record in history for key in record}
        return found - {"epoch", "step"}

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """``(epochs, values)`` of one scalar, from the module's metrics or any observer's history."""
        for history in [self.metrics, *self.observers.values()]:
            points = [(r["epoch"], r[key]) for r in history if key in r]
            if points:
                return [p[0] for p in points], [p[1] for p in points]
        return [], []

    def matching(self, pattern: str) -> list[str]:
        regex = re.compile(pattern)
        return sorted(key for key in self.keys() if regex.fullmatch(key))

    def images(self, key: str) -> list[Path]:
        """Logged PNGs of an image key (e.g. ``"gradcam/grid"``), in step order."""
        folder = self.files_dir / "xai" / Path(*key.split("/"))
        return sorted(folder.glob("step_*.png"))


def _validate(config: Mapping[str, Any]) -> None:
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise ValueError(f"The study config lacks {missing}; it needs {list(REQUIRED_KEYS)} (see xai_lightning.studies).")
    if not isinstance(config["variants"], Mapping) or not config["variants"]:
        raise ValueError("variants must map each variant's name to its list of extra callbacks (may be empty).")


def run_comparison(config: Mapping[str, Any], output_dir: str | Path | None = None, wandb: bool = True) -> dict[str, VariantResult]:
    """Train every variant of ``config`` in turn and return their results (see module docstring)."""
    _validate(config)
    name = str(config["name"])
    root = Path(output_dir or config.get("output_dir") or Path("runs") / name)
    root.mkdir(parents=True, exist_ok=True)
    group = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    results: dict[str, VariantResult] = {}
    for variant, extra in config["variants"].items():
        results[variant] = _run_variant(config, str(variant), extra or [], root, group, wandb)
    return results


def _run_variant(config: Mapping[str, Any], variant: str, extra: list, root: Path, group: str, wandb: bool) -> VariantResult:
    seed = int(config.get("seed", 0))
    shutil.rmtree(root / variant / "xai", ignore_errors=True)  # a re-run must not mix in old images
    pl.seed_everything(seed, workers=True)
    datamodule = instantiate(config["data"])
    model = instantiate(config["model"])
    observers = [instantiate(c) for c in config.get("observers", [])]
    changers = [instantiate(c) for c in extra]
    metrics = EpochMetrics(label=variant, show=config.get("progress", r"^(train|val)/acc$|.*accuracy.*"))
    loggers: list[Any] = [CSVLogger(str(root), name=variant, version="")]
    if wandb:
        os.environ.setdefault("WANDB_MODE", "offline")
        wandb_logger = WandbLogger(project=config.get("wandb_project", "xai-lightning"), group=group, name=variant,
                                   save_dir=str(root), offline=True)
        loggers.insert(0, without_anonymous_setting(wandb_logger))  # no wandb deprecation notice per run
    trainer_kwargs = dict(config.get("trainer") or {})
    trainer_kwargs.setdefault("enable_model_summary", False)
    trainer_kwargs.setdefault("default_root_dir", str(root / variant))
    trainer = pl.Trainer(callbacks=[*changers, *observers, metrics], logger=loggers, **trainer_kwargs)
    print(f"[{variant}] training: {', '.join(type(c).__name__ for c in changers) or 'standard'}; "
          f"observed by {', '.join(type(c).__name__ for c in observers) or 'nothing'}", flush=True)
    start = time.perf_counter()
    trainer.fit(model, datamodule)
    seconds = time.perf_counter() - start
    wandb_dir = None
    if wandb:
        experiment = loggers[0].experiment
        wandb_dir = Path(experiment.dir).parent
        experiment.finish()
    histories: dict[str, list[dict[str, float]]] = {}
    for callback in observers + changers:
        history = getattr(callback, "history", None)
        if isinstance(history, list):
            histories[type(callback).__name__] = list(history)
        if isinstance(callback, ObserverCallback) and callback.failures:
            print(f"[{variant}] warning: {type(callback).__name__} failed {len(callback.failures)} time(s)", flush=True)
    return VariantResult(
        name=variant, metrics=metrics.history, observers=histories, files_dir=Path(loggers[-1].log_dir),
        wandb_dir=wandb_dir, seconds=seconds, callbacks=[*changers, *observers],
    )
