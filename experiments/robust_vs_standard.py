"""Does adversarial training make a model more interpretable, and how does that unfold over training?

Trains a standard and an adversarially trained model on ConceptWorld — same seed, data and
architecture — with the same observing callbacks, logs both to W&B offline in one group, and writes
a self-contained report with curves over epochs and image panels:

    python experiments/robust_vs_standard.py --config experiments/configs/robust_vs_standard_small.yaml

Prints each variant's progress per epoch, then where the report and the runs are.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import yaml

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from xai_lightning.console import quiet_lightning_tips  # noqa: E402
from xai_lightning.studies import run_comparison, write_comparison_report  # noqa: E402

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "robust_vs_standard_small.yaml"


def run_study(config_path: Path, output_dir: Path | None = None, wandb: bool = True,
              max_epochs: int | None = None) -> tuple[dict, Path]:
    """Train every variant of the study at ``config_path``; return the results and the report's path."""
    config = yaml.safe_load(Path(config_path).read_text())
    if max_epochs is not None:
        config.setdefault("trainer", {})["max_epochs"] = max_epochs
    output_dir = Path(output_dir or config.get("output_dir", Path("runs") / config["name"]))
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    results = run_comparison(config, output_dir=output_dir, wandb=wandb)
    report = write_comparison_report(results, config.get("report", {}), output_dir / "report.html", config=config)
    return results, report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="study YAML (default: the small config)")
    parser.add_argument("--output-dir", type=Path, default=None, help="overrides output_dir of the config")
    parser.add_argument("--max-epochs", type=int, default=None, help="overrides trainer.max_epochs")
    parser.add_argument("--no-wandb", action="store_true", help="file logs only (the report does not need W&B)")
    args = parser.parse_args(argv)
    quiet_lightning_tips()
    results, report = run_study(args.config, args.output_dir, wandb=not args.no_wandb, max_epochs=args.max_epochs)
    print(f"\nReport: {report}")
    for name, result in results.items():
        print(f"  {name}: {result.seconds:.0f} s; W&B run {result.wandb_dir or '-'}; images under {result.files_dir / 'xai'}")


if __name__ == "__main__":
    main(sys.argv[1:])
