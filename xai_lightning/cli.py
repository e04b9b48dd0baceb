"""The ``xai-lightning`` console entry point: LightningCLI with callbacks configured in YAML.

    xai-lightning fit --config experiments/configs/concept_world_gradcam.yaml

Any LightningModule/LightningDataModule can be named by ``class_path``; our callbacks take
plain typed arguments, so every one of them is configurable from the ``trainer.callbacks`` list.
After ``fit`` the CLI prints where each logger and each observing callback wrote its results.
"""

from __future__ import annotations

import os
import sys

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI

from xai_lightning.callbacks.base import ObserverCallback

__all__ = ["XaiLightningCLI", "build_cli", "main", "report_locations"]


def report_locations(trainer: pl.Trainer) -> list[str]:
    """Lines naming where the run's loggers and observing callbacks put their files."""
    lines = []
    for logger in trainer.loggers:
        where = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "dir") and hasattr(experiment, "id"):
            where = os.path.dirname(experiment.dir)
        lines.append(f"{type(logger).__name__}: {where}")
    for callback in trainer.callbacks:
        if isinstance(callback, ObserverCallback):
            ran = len(callback.history)
            lines.append(f"{type(callback).__name__}: {ran} observation(s) logged to {callback.location}")
            for failure in callback.failures:
                lines.append(f"  warning: {failure.splitlines()[0]}")
    checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", None) or getattr(
        trainer.checkpoint_callback, "last_model_path", None
    )
    if checkpoint:
        lines.append(f"checkpoint: {checkpoint}")
    return lines


class XaiLightningCLI(LightningCLI):
    """LightningCLI that reports where results landed after ``fit`` and ``validate``."""

    def _report(self) -> None:
        if self.trainer.is_global_zero:
            print("\n".join(["", "Where to look:"] + [f"  {line}" for line in report_locations(self.trainer)]))
            if any(type(logger).__name__ == "WandbLogger" for logger in self.trainer.loggers):
                print("  (browse offline runs with `wandb leet <run dir>`, upload later with `wandb sync <run dir>`)")

    def after_fit(self) -> None:
        self._report()

    def after_validate(self) -> None:
        self._report()


def build_cli(args: list[str] | None = None) -> XaiLightningCLI:
    """Parse ``args`` (default: ``sys.argv``), run the subcommand, and return the CLI (trainer, model, …)."""
    os.environ.setdefault("WANDB_MODE", "offline")  # offline unless the user explicitly asks otherwise
    return XaiLightningCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main(args: list[str] | None = None) -> None:
    """Console entry point. Returns None: the console-script wrapper exits with ``sys.exit(main())``."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["report"]:  # `xai-lightning report RUN_DIR...`: see xai_lightning.studies.report_command
        from xai_lightning.studies.report_command import main as report_main

        report_main(argv[1:])
        return
    build_cli(args)


if __name__ == "__main__":
    main()
