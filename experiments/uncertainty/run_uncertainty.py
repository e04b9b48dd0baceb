"""Can I trust this prediction? Standard vs MC dropout vs deep ensemble vs Bayes by Backprop on ConceptWorld.

For every seed, trains four variants of one small CNN on ConceptWorld shapes — a standard network,
the same network with dropout (scored with MC dropout), a deep ensemble (EnsembleClassifier) and a
Bayes-by-Backprop network (VariationalClassifier) — each observed every epoch by
UncertaintyCallback with **unseen colours** as the out-of-distribution probe. Per epoch it records
calibration (ECE, NLL, Brier, the fitted temperature and the ECE after temperature scaling) and,
for each score the variant provides, the OOD AUROC and FPR at 95 % TPR.

Across seeds it reports means with 95 % t-intervals (mean ± t₀.₉₇₅,ₙ₋₁·s/√n), curves over epochs,
and for each variant the paired difference between its epistemic score's AUROC and the
max-softmax baseline of the same runs: its t-interval, a paired t-test Holm-corrected across the
variants, and a verdict ("higher"/"lower" only when the corrected p < 0.05 and the interval excludes 0;
the study statistics of :mod:`xai_lightning.studies.statistics`).

Writes into the config's ``output_dir``: ``history.csv`` (variant, seed, epoch, metrics),
``summary.csv`` and ``summary.md`` (last epoch, mean and CI per variant), ``curves.png`` and
``report.html`` (self-contained, with the curves and the tables):

    PYTHONPATH=. python experiments/uncertainty/run_uncertainty.py --config experiments/uncertainty/small.yaml

``history.csv`` is rewritten after every run, so an interrupted study keeps what it finished;
``--from-history`` rebuilds the summary, curves and report from it without training.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytorch_lightning as pl
import torch
import yaml
from matplotlib.figure import Figure
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from xai_lightning.callbacks import UncertaintyCallback
from xai_lightning.data import ConceptWorldDataModule
from xai_lightning.logging import HtmlReport
from xai_lightning.models import EnsembleClassifier, ImageClassifier, SmallCNN, VariationalClassifier
from xai_lightning.studies.statistics import (
    VERDICT_RULE,
    holm,
    paired_comparison,
    t_interval,
    verdict_word,
)

DEFAULT_CONFIG = Path(__file__).parent / "small.yaml"
#: The score that carries each variant's epistemic uncertainty; the standard network has one only through
#: a familiarity autoencoder (``familiarity: input`` in its settings).
EPISTEMIC = {
    "standard": "reconstruction_error",
    "mc_dropout": "mc_dropout_mi",
    "ensemble": "ensemble_disagreement",
    "bayesian": "bayesian_std",
}


def epistemic_score(variant: str, rows: list[dict[str, Any]]) -> str | None:
    """The variant's epistemic score, if its runs report it."""
    score = EPISTEMIC[variant]
    return score if any(f"ood/{score}/auroc" in r for r in rows if r["variant"] == variant) else None


CALIBRATION = (
    "calibration/accuracy",
    "calibration/ece",
    "calibration/nll",
    "calibration/brier",
    "temperature",
    "scaled/ece",
)


def build_model(variant: str, settings: dict[str, Any], width: int, lr: float) -> pl.LightningModule:
    """The LightningModule of one variant (constructed after seeding, so initialisation follows the seed)."""
    if variant == "standard":
        return ImageClassifier(SmallCNN(num_classes=5, width=width, dropout=0.0), lr=lr)
    if variant == "mc_dropout":
        return ImageClassifier(SmallCNN(num_classes=5, width=width, dropout=settings.get("dropout", 0.3)), lr=lr)
    if variant == "ensemble":
        return EnsembleClassifier(SmallCNN(num_classes=5, width=width), num_members=settings.get("members", 5), lr=lr)
    if variant == "bayesian":
        return VariationalClassifier(
            SmallCNN(num_classes=5, width=width),
            lr=lr,
            bayesian_layers=settings.get("layers", "all"),
            prior_sigma=settings.get("prior_sigma", 1.0),
            kl_weight=settings.get("kl_weight", 1.0),
        )
    raise ValueError(f"Unknown variant {variant!r}; choose from {sorted(EPISTEMIC)}")


def run_one(config: dict[str, Any], variant: str, seed: int, output_dir: Path, wandb: bool) -> list[dict[str, Any]]:
    """Train one variant with one seed; return the callback's history rows (one per epoch)."""
    data = config["data"]
    datamodule = ConceptWorldDataModule(
        num_train=data["num_train"],
        num_val=data["num_val"],
        seed=seed,
        image_size=data.get("image_size", 32),
        batch_size=data["batch_size"],
    )
    pl.seed_everything(seed, workers=True, verbose=False)
    settings = config["variants"][variant] or {}
    model = build_model(variant, settings, config["width"], config["lr"])
    observer = config["callback"]
    callback = UncertaintyCallback(
        num_probe=observer["num_probe"],
        num_ood=observer.get("num_ood"),
        ood="colour",
        mc_passes=observer.get("mc_passes", 20),
        bayesian_samples=observer.get("bayesian_samples", 20),
        familiarity=settings.get("familiarity"),
        max_batch=observer.get("max_batch"),
        probe_seed=seed,
        every_n_epochs=observer.get("every_n_epochs", 1),
        on_error="raise",
    )
    name = f"{variant}_seed{seed}"
    logger = (
        WandbLogger(offline=True, save_dir=str(output_dir), project=config["name"], name=name, group=config["name"])
        if wandb
        else CSVLogger(str(output_dir / "logs"), name=name)
    )
    trainer = pl.Trainer(
        max_epochs=config["epochs"],
        accelerator=config.get("accelerator", "cpu"),
        devices=1,
        logger=logger,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule)
    if wandb:
        logger.experiment.finish()
    seconds = time.perf_counter() - start
    rows = []
    for record in callback.history:
        row: dict[str, Any] = {"variant": variant, "seed": seed, "epoch": int(record["epoch"])}
        row.update(
            {key.removeprefix("uncertainty/"): value for key, value in record.items() if key.startswith("uncertainty/")}
        )
        rows.append(row)
    last = rows[-1]
    epistemic = epistemic_score(variant, rows)
    print(
        f"{name:>22}: {seconds:5.0f} s  acc={last['calibration/accuracy']:.3f} ECE={last['calibration/ece']:.3f} "
        f"T={last['temperature']:.2f}  AUROC max-softmax={last['ood/max_softmax/auroc']:.3f}"
        + (f" {epistemic}={last[f'ood/{epistemic}/auroc']:.3f}" if epistemic else ""),
        flush=True,
    )
    return rows


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """``(mean, low, high)``: the 95 % t-interval over seeds of the values that exist (a metric a run did not
    log is NaN in its row); NaN bounds for fewer than 2 values."""
    present = [float(v) for v in values if not math.isnan(float(v))]
    if not present:
        return math.nan, math.nan, math.nan
    result = t_interval(present)
    return result.estimate, result.low, result.high


def summarise(rows: list[dict[str, Any]], variants: Sequence[str]) -> list[dict[str, Any]]:
    """Last-epoch mean and 95 % interval of every metric per variant, plus the paired comparison of each variant's
    epistemic-score AUROC with the max-softmax AUROC of the same runs (paired t-test, Holm-corrected across the
    variants compared together; the verdict rule of :mod:`xai_lightning.studies.statistics`)."""
    summary = []
    for variant in variants:
        runs = [r for r in rows if r["variant"] == variant]
        if not runs:
            continue
        last_epoch = max(r["epoch"] for r in runs)
        last = sorted((r for r in runs if r["epoch"] == last_epoch), key=lambda r: r["seed"])
        metrics = sorted({key for r in last for key in r if key not in ("variant", "seed", "epoch")})
        entry: dict[str, Any] = {"variant": variant, "epoch": last_epoch, "seeds": len(last)}
        for metric in metrics:
            entry[metric] = interval([float(r.get(metric, math.nan)) for r in last])
        epistemic = epistemic_score(variant, runs)
        if epistemic is not None:
            paired = [r for r in last if not math.isnan(float(r.get(f"ood/{epistemic}/auroc", math.nan)))]
            comparison = paired_comparison(
                [float(r[f"ood/{epistemic}/auroc"]) for r in paired],
                [float(r["ood/max_softmax/auroc"]) for r in paired],
            )
            entry["epistemic"] = epistemic
            entry["auroc_difference"] = (
                comparison.difference.estimate,
                comparison.difference.low,
                comparison.difference.high,
            )
            entry["comparison"] = comparison
        summary.append(entry)
    compared = [entry for entry in summary if "comparison" in entry]
    adjusted = holm([entry["comparison"].p_value for entry in compared])
    for entry, p_holm in zip(compared, adjusted):
        comparison = entry.pop("comparison")
        entry["p_value"], entry["p_holm"] = comparison.p_value, float(p_holm)
        entry["verdict"] = verdict_word(
            float(p_holm), comparison.difference, comparison.n, treatment=entry["epistemic"]
        )
    return summary


def _cell(value: tuple[float, float, float]) -> str:
    mean, low, high = value
    if math.isnan(low):
        return f"{mean:.3f}"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


SUMMARY_COLUMNS = (
    ("accuracy", "calibration/accuracy"),
    ("ECE", "calibration/ece"),
    ("NLL", "calibration/nll"),
    ("T", "temperature"),
    ("ECE after T", "scaled/ece"),
    ("OOD acc", "ood/accuracy"),
    ("AUROC max-softmax", "ood/max_softmax/auroc"),
    ("FPR95 max-softmax", "ood/max_softmax/fpr95"),
)


def summary_table(summary: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    columns = (
        ["variant", "seeds"]
        + [label for label, _ in SUMMARY_COLUMNS]
        + [
            "epistemic score",
            "AUROC epistemic",
            "FPR95 epistemic",
            "AUROC epistemic − max-softmax (paired)",
            "p (Holm)",
            "verdict",
        ]
    )
    rows = []
    for entry in summary:
        row = [entry["variant"], str(entry["seeds"])] + [
            _cell(entry[key]) if key in entry else "-" for _, key in SUMMARY_COLUMNS
        ]
        epistemic = entry.get("epistemic")
        if epistemic:
            row += [
                epistemic,
                _cell(entry[f"ood/{epistemic}/auroc"]),
                _cell(entry[f"ood/{epistemic}/fpr95"]),
                _cell(entry["auroc_difference"]),
                f"{entry['p_holm']:.3g}",
                entry["verdict"],
            ]
        else:
            row += ["-"] * 6
        rows.append(row)
    return columns, rows


def curves(rows: list[dict[str, Any]], variants: Sequence[str]) -> Figure:
    """ECE and OOD AUROC (epistemic score solid, max-softmax dashed) over epochs: mean and 95 % band over seeds."""
    figure = Figure(figsize=(11, 3.6), dpi=100)
    ece_axis, scaled_axis, auroc_axis = figure.subplots(1, 3)
    colours = {"standard": "tab:grey", "mc_dropout": "tab:blue", "ensemble": "tab:green", "bayesian": "tab:purple"}

    def band(axis, variant: str, metric: str, **style) -> None:
        runs = [r for r in rows if r["variant"] == variant and metric in r]
        epochs = sorted({r["epoch"] for r in runs})
        if not epochs:
            return
        stats_per_epoch = [interval([r[metric] for r in runs if r["epoch"] == e]) for e in epochs]
        means = [s[0] for s in stats_per_epoch]
        axis.plot([e + 1 for e in epochs], means, color=colours.get(variant), **style)
        lows, highs = [s[1] for s in stats_per_epoch], [s[2] for s in stats_per_epoch]
        if not any(math.isnan(v) for v in lows):
            axis.fill_between([e + 1 for e in epochs], lows, highs, color=colours.get(variant), alpha=0.15)

    for variant in variants:
        band(ece_axis, variant, "calibration/ece", label=variant, marker="o", markersize=3)
        band(scaled_axis, variant, "scaled/ece", label=variant, marker="o", markersize=3)
        band(auroc_axis, variant, "ood/max_softmax/auroc", linestyle="--", linewidth=1)
        epistemic = epistemic_score(variant, rows)
        if epistemic:
            band(
                auroc_axis, variant, f"ood/{epistemic}/auroc", label=f"{variant}: {epistemic}", marker="o", markersize=3
            )
    ece_axis.set_title("ECE (15 bins)", fontsize=10)
    scaled_axis.set_title("ECE after temperature scaling", fontsize=10)
    auroc_axis.set_title("OOD AUROC, unseen colours\n(solid: epistemic score, dashed: max-softmax)", fontsize=9)
    auroc_axis.axhline(0.5, color="black", linewidth=0.6, linestyle=":")
    for axis in (ece_axis, scaled_axis, auroc_axis):
        axis.set_xlabel("epoch")
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def write_history(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per variant, seed and observed epoch; a metric a run did not log is an empty cell."""
    keys = ["variant", "seed", "epoch"] + sorted({k for r in rows for k in r} - {"variant", "seed", "epoch"})
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def write_outputs(config: dict[str, Any], rows: list[dict[str, Any]], output_dir: Path) -> dict[str, Path]:
    variants = [v for v in config["variants"] if any(r["variant"] == v for r in rows)]
    paths = {
        "history": output_dir / "history.csv",
        "summary": output_dir / "summary.csv",
        "markdown": output_dir / "summary.md",
        "curves": output_dir / "curves.png",
        "report": output_dir / "report.html",
    }
    write_history(rows, paths["history"])
    summary = summarise(rows, variants)
    with paths["summary"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "seeds", "metric", "mean", "ci_low", "ci_high"])
        for entry in summary:
            for key, value in entry.items():
                if isinstance(value, tuple):
                    writer.writerow([entry["variant"], entry["seeds"], key, *value])
                elif key in ("p_value", "p_holm"):  # the paired t-test's p, raw and Holm-corrected
                    writer.writerow([entry["variant"], entry["seeds"], key, value, "", ""])
    columns, table = summary_table(summary)
    lines = [
        f"# {config['name']}: uncertainty on ConceptWorld, OOD = unseen colours",
        "",
        f"Last epoch ({config['epochs']} epochs), mean over seeds {config['seeds']} with 95 % t-intervals.",
        "",
        VERDICT_RULE.format(
            treatment="epistemic AUROC", reference="max-softmax AUROC", alpha=0.05, min_seeds=3, min_wilcoxon=6
        ),
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    paths["markdown"].write_text("\n".join(lines) + "\n")
    figure = curves(rows, variants)
    figure.savefig(paths["curves"], dpi=100)
    report = HtmlReport(f"Can I trust this prediction? ({config['name']})")
    report.text(
        f"ConceptWorld shapes, {config['data']['num_train']} training images, SmallCNN width "
        f"{config['width']}, {config['epochs']} epochs, seeds {config['seeds']}. OOD probe: the same world "
        f"with unseen colours (cyan, magenta, purple, white). Means with 95 % t-intervals over seeds."
    )
    report.heading("Calibration and OOD detection over training")
    report.figure(figure, "mean over seeds with 95 % bands")
    report.heading("Last epoch")
    report.table(columns, table)
    report.preformatted(yaml.safe_dump(config, sort_keys=False))
    report.write(paths["report"])
    return paths


def run(config: dict[str, Any], output_dir: Path, wandb: bool = False) -> dict[str, Path]:
    """Run the study; return the paths written (``history``, ``summary``, ``markdown``, ``curves``, ``report``)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    threads = torch.get_num_threads()
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    try:
        rows = []
        for seed in config["seeds"]:
            for variant in config["variants"]:
                rows += run_one(config, variant, seed, output_dir, wandb)
                write_history(rows, output_dir / "history.csv")  # an interrupted study keeps its finished runs
        return write_outputs(config, rows, output_dir)
    finally:
        torch.set_num_threads(threads)


def read_history(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``history.csv`` written by :func:`write_outputs` (empty cells: metrics a run did not log)."""
    with path.open() as handle:
        rows = []
        for record in csv.DictReader(handle):
            row: dict[str, Any] = {
                "variant": record.pop("variant"),
                "seed": int(record.pop("seed")),
                "epoch": int(record.pop("epoch")),
            }
            row.update({key: float(value) for key, value in record.items() if value != ""})
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--output-dir", type=Path, default=None, help="overrides output_dir of the config")
    parser.add_argument("--wandb", action="store_true", help="also write W&B offline runs (one per variant and seed)")
    parser.add_argument(
        "--from-history",
        action="store_true",
        help="do not train: rebuild the summary, curves and report from the output_dir's history.csv",
    )
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.config.read_text())
    output_dir = args.output_dir or Path(config["output_dir"])
    if args.from_history:
        paths = write_outputs(config, read_history(output_dir / "history.csv"), output_dir)
    else:
        paths = run(config, output_dir, wandb=args.wandb)
    print(paths["markdown"].read_text())
    print(f"Report: {paths['report']}")


if __name__ == "__main__":
    main(sys.argv[1:])
