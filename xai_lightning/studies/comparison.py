"""Comparison studies: train every arm of a study once per seed under identical conditions, observe them.

Every run gets the same data, architecture and observing callbacks; arms differ only by their
extra callbacks (for example ``AdversarialTrainingCallback``), and the runs of one seed are paired
(same initial weights, same data order; see :mod:`xai_lightning.studies.plan`). Each (arm, seed)
logs to one offline W&B run (all runs of a study in one W&B group, tagged with arm and seed) and to
CSV/PNG files under ``<output_dir>/<arm>/seed<seed>/``, which the report reads back. The whole
study is one YAML file::

    name: robust_vs_standard
    seeds: [0, 1, 2]
    epsilons: [0.5, 1.0, 2.0]                 # optional sweep of the adversarial-training radius
    output_dir: runs/robust_vs_standard
    data: {class_path: xai_lightning.ConceptWorldDataModule, init_args: {...}}
    model: {class_path: xai_lightning.ImageClassifier, init_args: {network: {class_path: ...}}}
    trainer: {max_epochs: 6}                  # plain pytorch_lightning.Trainer arguments
    observers: [{class_path: xai_lightning.GradCAMCallback, init_args: {...}}]
    variants: {standard: [], robust: [{class_path: xai_lightning.AdversarialTrainingCallback}]}
    verdict: {...}                            # see xai_lightning.studies.verdict
    report: {...}                             # see xai_lightning.studies.comparison_report
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.console import without_anonymous_setting
from xai_lightning.studies.config import instantiate
from xai_lightning.studies.plan import Arm, StudyPlan, plan_study
from xai_lightning.studies.progress import StudyProgress
from xai_lightning.studies.runs import METADATA_FILE, RunRecord, load_run

__all__ = ["StudyResult", "run_study"]


@dataclass
class StudyResult:
    """What a study left behind: its plan, output directory and every run read back from disk.

    Attributes:
        plan: the checked, expanded config.
        root: the output directory.
        runs: one :class:`~xai_lightning.studies.runs.RunRecord` per (arm, seed), in training order.
        failures: run label → messages of observers that failed during that run (training went on).
        callbacks: run label → the run's callbacks (in memory, for inspection in a notebook).
    """

    plan: StudyPlan
    root: Path
    runs: list[RunRecord]
    failures: dict[str, list[str]] = field(default_factory=dict)
    callbacks: dict[str, list[pl.Callback]] = field(default_factory=dict, repr=False)

    def run(self, arm: str, seed: int) -> RunRecord:
        return next(r for r in self.runs if r.variant == arm and r.seed == seed)

    def arm(self, name: str) -> list[RunRecord]:
        return [r for r in self.runs if r.variant == name]


def _with_argument(block: Mapping[str, Any], argument: str, value: Any) -> dict[str, Any]:
    """``block`` with ``init_args[argument] = value`` when its class takes the argument and the config
    does not set it."""
    from xai_lightning.studies.plan import _accepts, _class

    copied = copy.deepcopy(dict(block))
    args = dict(copied.get("init_args") or {})
    if argument not in args and _accepts(_class(copied["class_path"]), argument):
        args[argument] = value
        copied["init_args"] = args
    return copied


def run_study(
    config: Mapping[str, Any],
    output_dir: str | Path | None = None,
    wandb: bool = True,
    progress: bool = True,
) -> StudyResult:
    """Train every (arm, seed) of the study ``config`` in turn; return the runs read back from disk.

    Args:
        config: the study config (see the module docstring); checked before anything trains.
        output_dir: overrides the config's ``output_dir`` (default ``runs/<name>``).
        wandb: also log each run to an offline W&B run (the report needs only the CSV files).
        progress: show one progress bar over (arm, seed, epoch) with an ETA.
    """
    plan = plan_study(config)
    root = Path(output_dir or config.get("output_dir") or Path("runs") / plan.name)
    root.mkdir(parents=True, exist_ok=True)
    max_epochs = int((config.get("trainer") or {}).get("max_epochs", 1000))
    bar = StudyProgress.make_bar(len(plan.runs) * max_epochs, enabled=progress)
    result = StudyResult(plan=plan, root=root, runs=[])
    quiet = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")]
    levels = [logger.level for logger in quiet]
    try:
        for logger in quiet:
            logger.setLevel(logging.WARNING)  # "GPU available: …" once per run would bury the bar
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
            warnings.filterwarnings("ignore", ".*LeafSpec.*")
            for seed, arm in plan.runs:
                record, callbacks, failures = _run_one(plan, arm, seed, root, wandb, bar, max_epochs)
                result.runs.append(record)
                result.callbacks[record.label] = callbacks
                if failures:
                    result.failures[record.label] = failures
                    bar.write(f"[{record.label}] warning: {len(failures)} observation(s) failed; see the report.")
    finally:
        bar.close()
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    return result


def run_directory(root: Path, arm: str, seed: int) -> Path:
    return root / arm / f"seed{seed}"


def _run_one(
    plan: StudyPlan, arm: Arm, seed: int, root: Path, wandb: bool, bar: Any, max_epochs: int
) -> tuple[RunRecord, list[pl.Callback], list[str]]:
    config = plan.config
    directory = run_directory(root, arm.name, seed)
    shutil.rmtree(directory, ignore_errors=True)  # a re-run must not mix in old metrics or images
    pl.seed_everything(seed, workers=True, verbose=False)
    data_config = config["data"]
    if isinstance(data_config, Mapping) and "class_path" in data_config:
        # The data order of a pair must not depend on what else draws random numbers (PGD's starts).
        data_config = _with_argument(data_config, "shuffle_seed", seed)
    datamodule = instantiate(data_config)
    model = instantiate(config["model"])  # right after seeding: the pair's initial weights agree
    observers = [instantiate(c) for c in config.get("observers") or []]
    changers = [instantiate(_with_argument(c, "seed", seed)) for c in arm.callbacks]
    label = f"{arm.name} · seed {seed}"
    tracker = StudyProgress(bar, label)
    metadata: dict[str, Any] = {
        "study": plan.name,
        "variant": arm.name,
        "base_variant": arm.variant,
        "seed": seed,
        "epsilon": arm.epsilon,
        "config_id": plan.config_id,
        "config": plan.config,
    }
    csv_logger = CSVLogger(str(root), name=arm.name, version=f"seed{seed}")
    loggers: list[Any] = [csv_logger]
    if wandb:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        tags = [arm.name, f"seed={seed}"] + ([f"eps={arm.epsilon:g}"] if arm.epsilon is not None else [])
        wandb_logger = WandbLogger(
            project=config.get("wandb_project", "xai-lightning"),
            name=f"{arm.name}-seed{seed}",
            group=f"{plan.name}-{plan.config_id}",
            tags=tags,
            save_dir=str(root),
            offline=True,
        )
        # Before anything starts the run (log_hyperparams does): no wandb deprecation notice per run.
        without_anonymous_setting(wandb_logger)
        wandb_logger.log_hyperparams(
            {f"study/{k}": (json.dumps(v) if k == "config" else v) for k, v in metadata.items()}
        )
        loggers.insert(0, wandb_logger)
    trainer_kwargs = dict(config.get("trainer") or {})
    trainer_kwargs.setdefault("enable_model_summary", False)
    trainer_kwargs.setdefault("enable_progress_bar", False)
    trainer_kwargs["default_root_dir"] = str(directory)
    trainer = pl.Trainer(callbacks=[*changers, *observers, tracker], logger=loggers, **trainer_kwargs)
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        trainer.fit(model, datamodule)
    finally:
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        wandb_dir = None
        if wandb:
            experiment = loggers[0].experiment
            wandb_dir = str(Path(experiment.dir).parent)
            experiment.finish()
    tracker.finish(int(trainer.max_epochs or max_epochs))
    failures = [
        message.splitlines()[0]
        for callback in observers
        if isinstance(callback, ObserverCallback)
        for message in callback.failures
    ]
    metadata.update(
        seconds=round(seconds, 2),
        cpu_seconds=round(cpu_seconds, 2),
        wandb_dir=wandb_dir,
        failures=failures,
        epochs=trainer.current_epoch,
    )
    Path(csv_logger.log_dir).mkdir(parents=True, exist_ok=True)
    (Path(csv_logger.log_dir) / METADATA_FILE).write_text(json.dumps(metadata, indent=1, default=str))
    return load_run(csv_logger.log_dir), [*changers, *observers], failures
