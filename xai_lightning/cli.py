"""The ``xai-lightning`` console entry point.

    xai-lightning --help                                   # commands and the configs that ship
    xai-lightning fit --config concept_world_gradcam       # a shipped config, by name
    xai-lightning fit --config my_run.yaml --trainer.max_epochs=10

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI: any LightningModule and
LightningDataModule can be named by ``class_path``, and our callbacks take plain typed arguments,
so each of them is configurable from the ``trainer.callbacks`` list. After ``fit`` and ``validate``
the CLI prints where each logger and each observing callback wrote its results.

Configs are trusted code, as in LightningCLI: ``class_path`` imports and calls what it names.

Further commands register in one line, e.g. ``register_subcommand("report", "write a study's report",
"xai_lightning.studies.report:main")``; the target (a callable, or ``"module:function"`` imported
only when the command runs) receives the remaining arguments and returns an exit code.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytorch_lightning as pl
    from pytorch_lightning.cli import LightningCLI

__all__ = [
    "CONFIG_DIR",
    "LIGHTNING_COMMANDS",
    "SUBCOMMANDS",
    "build_cli",
    "help_text",
    "main",
    "register_subcommand",
    "report_locations",
    "resolve_config",
    "shipped_configs",
]

#: The LightningCLI configs that ship inside the package.
CONFIG_DIR = Path(__file__).with_name("configs")

#: LightningCLI's subcommands.
LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train a model with the callbacks of a config (then print where the results are)",
    "validate": "run validation once (observing callbacks explain once)",
    "test": "run the test loop",
    "predict": "run prediction",
}


@dataclass(frozen=True)
class Subcommand:
    help: str
    target: Callable[[list[str]], int | None] | str  # a callable or "module:function"

    def run(self, args: list[str]) -> int:
        target = self.target
        if isinstance(target, str):
            module, _, name = target.partition(":")
            target = getattr(importlib.import_module(module), name)
        code = target(args)
        return 0 if code is None else int(code)


#: Commands besides LightningCLI's, in the order ``--help`` lists them.
SUBCOMMANDS: dict[str, Subcommand] = {}


def register_subcommand(name: str, help: str, target: Callable[[list[str]], int | None] | str) -> None:
    """Add ``xai-lightning <name> ...``: ``target(remaining_args) -> exit code``; listed by ``--help``."""
    if name in LIGHTNING_COMMANDS:
        raise ValueError(f"{name!r} is a LightningCLI command; choose another name")
    SUBCOMMANDS[name] = Subcommand(help, target)


def shipped_configs() -> dict[str, Path]:
    """``{name: path}`` of the configs in ``xai_lightning/configs`` (name = file name without ``.yaml``)."""
    return {path.stem: path for path in sorted(CONFIG_DIR.glob("*.yaml"))}


def _config_summary(path: Path) -> str:
    """The first comment line of a config (what it does)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def help_text() -> str:
    """What ``xai-lightning --help`` prints: the commands and the shipped configs."""
    width = max(len(name) for name in [*LIGHTNING_COMMANDS, *SUBCOMMANDS, *shipped_configs(), "configs"]) + 2
    lines = [
        "usage: xai-lightning <command> [options]",
        "",
        "Train with interpretability callbacks (LightningCLI) and look at what they logged.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}{text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines += [f"  {name:<{width}}{command.help}" for name, command in SUBCOMMANDS.items()]
    lines += ["", f"configs that ship (use the name or a path: xai-lightning fit --config NAME), in {CONFIG_DIR}:"]
    lines += [f"  {name:<{width}}{_config_summary(path)}" for name, path in shipped_configs().items()]
    lines += [
        "",
        "xai-lightning <command> --help shows every option of a command; any option of the config can be",
        "overridden on the command line, e.g. --trainer.max_epochs=10. Configs are trusted code: class_path",
        "imports and calls what it names, as in LightningCLI.",
    ]
    return "\n".join(lines)


def resolve_config(args: Sequence[str]) -> list[str]:
    """``--config NAME`` (or ``--config=NAME``) of a shipped config → its path; paths are kept."""
    configs = shipped_configs()
    out: list[str] = []
    expect_config = False
    for arg in args:
        if expect_config:
            arg = _config_path(arg, configs)
            expect_config = False
        elif arg == "--config":
            expect_config = True
        elif arg.startswith("--config="):
            arg = "--config=" + _config_path(arg.partition("=")[2], configs)
        out.append(arg)
    return out


def _config_path(value: str, configs: dict[str, Path]) -> str:
    if os.path.exists(value) or value not in configs:
        return value
    return str(configs[value])


def report_locations(trainer: pl.Trainer) -> list[str]:
    """Lines naming where the run's loggers and observing callbacks put their files."""
    from xai_lightning.callbacks.base import ObserverCallback

    lines = []
    for logger in trainer.loggers:
        where = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
        experiment: Any = getattr(logger, "experiment", None)
        if hasattr(experiment, "dir") and hasattr(experiment, "id"):
            where = os.path.dirname(experiment.dir)
        lines.append(f"{type(logger).__name__}: {where}")
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
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


@functools.cache
def _cli_class() -> type[LightningCLI]:
    """Defined on first use: ``xai-lightning --help`` must not wait for Lightning to import."""
    from pytorch_lightning.cli import LightningCLI

    class XaiLightningCLI(LightningCLI):
        """LightningCLI that reports where results landed after ``fit`` and ``validate``."""

        def _report(self) -> None:
            if self.trainer.is_global_zero:
                print("\n".join(["", "Where to look:"] + [f"  {line}" for line in report_locations(self.trainer)]))
                if any(type(logger).__name__ == "WandbLogger" for logger in self.trainer.loggers):
                    print(
                        "  (browse offline runs with `wandb leet <run dir>`, upload later with `wandb sync <run dir>`)"
                    )

        def before_fit(self) -> None:
            from xai_lightning.console import without_anonymous_setting

            for logger in self.trainer.loggers:  # before the W&B run starts (at fit's setup)
                without_anonymous_setting(logger)

        def before_validate(self) -> None:
            self.before_fit()

        def after_fit(self) -> None:
            self._report()

        def after_validate(self) -> None:
            self._report()

    return XaiLightningCLI


def build_cli(args: list[str] | None = None) -> Any:
    """Parse ``args`` (default: ``sys.argv``), run the LightningCLI subcommand, and return the CLI
    (``.trainer``, ``.model``, …). Shipped configs may be given by name."""
    import pytorch_lightning as pl

    from xai_lightning.console import quiet_lightning_tips

    os.environ.setdefault("WANDB_MODE", "offline")  # offline unless the user explicitly asks otherwise
    quiet_lightning_tips()
    if args is None:  # from the command line: LightningCLI reads sys.argv (and warns if given both)
        sys.argv[1:] = resolve_config(sys.argv[1:])
    return _cli_class()(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=None if args is None else resolve_config(args),
    )


def __getattr__(name: str) -> Any:
    if name == "XaiLightningCLI":  # the LightningCLI subclass, without importing Lightning at import time
        return _cli_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(args: list[str] | None = None) -> int | None:
    """Console entry point: ``sys.exit(main())``. Returns None (exit 0) after a LightningCLI command."""
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text())
        return None if argv else 2
    if argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]].run(argv[1:])
    if argv[0] not in LIGHTNING_COMMANDS and not argv[0].startswith("-"):
        print(f"xai-lightning: unknown command {argv[0]!r}\n\n{help_text()}", file=sys.stderr)
        return 2
    build_cli(None if args is None else argv)
    return None


def _list_configs(args: list[str]) -> int:
    """``xai-lightning configs [NAME]``: the shipped configs, or one of them printed."""
    configs = shipped_configs()
    if args:
        name = args[0]
        if name not in configs:
            print(f"No shipped config {name!r}; available: {', '.join(configs)}", file=sys.stderr)
            return 2
        print(configs[name].read_text(encoding="utf-8"), end="")
        return 0
    for name, path in configs.items():
        print(f"{name}\t{path}\t{_config_summary(path)}")
    return 0


register_subcommand("configs", "list the shipped configs (or print one: configs NAME)", _list_configs)

register_subcommand(
    "report",
    "build the HTML report (curves, panels, verdict) of logged runs: report RUN_DIR [RUN_DIR...]",
    "xai_lightning.studies.report_command:main",
)


if __name__ == "__main__":
    sys.exit(main())
