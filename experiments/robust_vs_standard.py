"""Does adversarial training make a model more interpretable, and how does that unfold over training?

Trains a standard and an adversarially trained model on ConceptWorld once per seed — the two runs of
a seed share initial weights and data order — with the same observing callbacks, logs every run to
W&B offline in one group, and writes a self-contained report whose first table is the verdict: per
measure, mean ± 95 % CI over seeds for each arm, the paired difference, Holm-corrected p and a
plain-words verdict. With ``epsilons: [...]`` in the config it also sweeps the adversarial radius
and draws every measure against ε:

    python experiments/robust_vs_standard.py --config experiments/configs/robust_vs_standard_small.yaml

Shows one progress bar over (arm, seed, epoch) with an ETA, then prints the verdict table and where
the report and the runs are.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from xai_lightning.console import quiet_lightning_tips  # noqa: E402
from xai_lightning.studies.comparison import StudyResult, run_study
from xai_lightning.studies.comparison_report import study_verdict, write_study_report
from xai_lightning.studies.config import load_study_config
from xai_lightning.studies.report_command import format_verdict
from xai_lightning.studies.verdict import verdict_columns

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "robust_vs_standard_small.yaml"


def load_config(config_path: Path, max_epochs: int | None = None, seeds: list[int] | None = None) -> dict[str, Any]:
    config = load_study_config(config_path)
    if max_epochs is not None:
        config.setdefault("trainer", {})["max_epochs"] = max_epochs
    if seeds is not None:
        config.pop("seed", None)
        config["seeds"] = seeds
    return config


def run(
    config: dict[str, Any], output_dir: Path | None = None, wandb: bool = True, progress: bool = True
) -> tuple[StudyResult, Path]:
    """Train every (arm, seed) of ``config``; return the study result and the report's path."""
    output_dir = Path(output_dir or config.get("output_dir", Path("runs") / config["name"]))
    result = run_study(config, output_dir=output_dir, wandb=wandb, progress=progress)
    report = write_study_report(result.runs, output_dir / "report.html", config=config, failures=result.failures)
    return result, report


def run_study_file(
    config_path: Path,
    output_dir: Path | None = None,
    wandb: bool = True,
    max_epochs: int | None = None,
    progress: bool = True,
) -> tuple[StudyResult, Path]:
    """:func:`run` on the config at ``config_path``."""
    return run(load_config(config_path, max_epochs), output_dir, wandb=wandb, progress=progress)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="study YAML (default: the small config)")
    parser.add_argument("--output-dir", type=Path, default=None, help="overrides output_dir of the config")
    parser.add_argument("--max-epochs", type=int, default=None, help="overrides trainer.max_epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="overrides the config's seeds")
    parser.add_argument("--no-wandb", action="store_true", help="file logs only (the report does not need W&B)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    quiet_lightning_tips()
    config = load_config(args.config, args.max_epochs, args.seeds)
    result, report = run(config, args.output_dir, wandb=not args.no_wandb, progress=not args.no_progress)
    verdict = study_verdict(result.runs, config)
    if verdict is not None:
        spec, rows = verdict
        print("\n" + format_verdict(verdict_columns(spec), [row.cells() for row in rows]))
    total = sum(run.seconds or 0 for run in result.runs)
    print(
        f"\nReport: {report}\nRuns under {result.root} ({len(result.runs)} runs, {total / 60:.1f} min of training); "
        f"rebuild the report with `xai-lightning report {result.root}`."
    )


if __name__ == "__main__":
    main(sys.argv[1:])
