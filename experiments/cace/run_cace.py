"""When does TCAV mislead? CaCE against ground truth on BARS and coloured digits (Goyal et al. 2019).

For each confounding level, trains a small CNN on BARS (class = bar orientation, colour tied to the
class with probability ``level``) and on coloured digits (hue spread ``sigma`` around the class
colour), then measures the effect of the colour concept on the class probability four ways:

* GT-CaCE — ground truth, by re-rendering the same test images with the colour switched;
* EncDec-CaCE — from a conditional VAE trained on the (confounded) training images;
* ConExp — the observational difference E[f | colour] − E[f | other colour];
* TCAV — sign-count score of the colour concept for the target class, with its p-value.

Writes ``cace_table.csv`` (one row per dataset × level × target), ``cace_table.md`` (mean over
targets) and ``cace_bars.png`` / ``cace_digits.png`` into the config's ``output_dir``:

    PYTHONPATH=. python experiments/cace/run_cace.py --config experiments/cace/small.yaml
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from xai_lightning.concepts import (  # noqa: E402
    CACE_COLUMNS,
    TCAV,
    bars_colour_intervention,
    class_output,
    coloured_digits_intervention,
    compare_cace_estimators,
    fit_conditional_vae,
)
from xai_lightning.data import Bars, BarsDataModule, ColouredDigitsDataModule  # noqa: E402
from xai_lightning.models import ImageClassifier, SmallCNN  # noqa: E402

DEFAULT_CONFIG = Path(__file__).parent / "small.yaml"
TABLE_COLUMNS = ("dataset", "level_name", "level", "accuracy", *CACE_COLUMNS)
ESTIMATORS = (("gt_cace", "GT-CaCE"), ("encdec_cace", "EncDec-CaCE"), ("conexp", "ConExp"))


def train_classifier(datamodule: pl.LightningDataModule, num_classes: int, settings: dict[str, Any],
                     seed: int) -> ImageClassifier:
    """A SmallCNN trained with our ImageClassifier and a quiet Lightning trainer; returned in eval mode."""
    pl.seed_everything(seed, workers=True, verbose=False)
    model = ImageClassifier(SmallCNN(num_classes=num_classes, width=settings["width"]), lr=settings["lr"])
    trainer = pl.Trainer(max_epochs=settings["epochs"], accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, deterministic=True)
    trainer.fit(model, datamodule)
    return model.eval()


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    scores = torch.stack([class_output(model, images, k, output="logit") for k in range(num_classes)], dim=1)
    return float((scores.argmax(1) == labels).float().mean())


def bars_rows(config: dict[str, Any], tcav: TCAV) -> list[dict[str, Any]]:
    settings, size, seed = config["bars"], config["image_size"], config["seed"]
    rows = []
    for level in settings["levels"]:
        datamodule = BarsDataModule(settings["num_train"], 0, confounding=level, image_size=size, seed=seed,
                                    batch_size=config["classifier"]["batch_size"])
        datamodule.setup("fit")
        model = train_classifier(datamodule, 2, config["classifier"], seed)
        train = datamodule.train_set
        vae = fit_conditional_vae(train.images, train.colours, 2, seed=seed, **config["vae"])
        test = Bars(settings["num_test"], confounding=level, image_size=size, seed=seed * 1000 + 2)
        row = compare_cace_estimators(model, bars_colour_intervention(test), vae=vae, tcav=tcav,
                                      tcav_layers=config["tcav"]["layers"])
        row.update(dataset="bars", level_name="confounding", level=level,
                   accuracy=accuracy(model, test.images, test.labels, 2))
        rows.append(row)
        print(_describe(row), flush=True)
    return rows


def digits_rows(config: dict[str, Any], tcav: TCAV) -> list[dict[str, Any]]:
    settings, size, seed = config["digits"], config["image_size"], config["seed"]
    rows = []
    for sigma in settings["sigmas"]:
        datamodule = ColouredDigitsDataModule(sigma=sigma, image_size=size, seed=seed,
                                              batch_size=config["classifier"]["batch_size"])
        datamodule.setup("fit")
        model = train_classifier(datamodule, 10, config["classifier"], seed)
        train, test = datamodule.train_set, datamodule.val_set
        vae = fit_conditional_vae(train.images, train.hue_bins, 10, seed=seed, **config["vae"])
        test_accuracy = accuracy(model, test.images, test.labels, 10)
        for target in settings["targets"]:
            intervention = coloured_digits_intervention(test, target=target, seed=seed)
            row = compare_cace_estimators(model, intervention, vae=vae, tcav=tcav, tcav_layers=config["tcav"]["layers"])
            row.update(dataset="coloured_digits", level_name="sigma", level=sigma, accuracy=test_accuracy)
            rows.append(row)
            print(_describe(row), flush=True)
    return rows


def _describe(row: dict[str, Any]) -> str:
    return (f"{row['dataset']:>15} {row['level_name']}={row['level']:<5} target={row['target']} acc={row['accuracy']:.3f}  "
            f"GT={row['gt_cace']:+.3f} EncDec={row['encdec_cace']:+.3f} ConExp={row['conexp']:+.3f} "
            f"TCAV={row['tcav']:.2f} (p={row['tcav_p_value']:.3g})")


def mean_by_level(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Average the numeric columns over targets for each (dataset, level); significance as a fraction."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["level"]), []).append(row)
    summary = []
    for (dataset, level), members in groups.items():
        merged = {"dataset": dataset, "level_name": members[0]["level_name"], "level": level,
                  "targets": len(members)}
        for key in ("accuracy", "gt_cace", "encdec_cace", "conexp", "tcav", "tcav_p_value"):
            values = [float(m[key]) for m in members if not math.isnan(float(m[key]))]
            merged[key] = sum(values) / len(values) if values else float("nan")
        merged["tcav_significant"] = sum(bool(m["tcav_significant"]) for m in members) / len(members)
        summary.append(merged)
    return summary


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=TABLE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_markdown(summary: list[dict[str, Any]], path: Path) -> None:
    lines = [
        "# Causal concept effect of colour vs its estimators",
        "",
        "Effect of the colour concept on the target class probability (mean over targets). "
        "GT-CaCE intervenes in the generator; TCAV is a fraction (0.5 = no direction), "
        "'significant' is the fraction of targets with p < alpha.",
        "",
        "| dataset | level | accuracy | GT-CaCE | EncDec-CaCE | ConExp | TCAV | TCAV p | significant |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        lines.append(
            f"| {row['dataset']} | {row['level_name']}={row['level']} | {row['accuracy']:.3f} | {row['gt_cace']:+.3f} | "
            f"{row['encdec_cace']:+.3f} | {row['conexp']:+.3f} | {row['tcav']:.2f} | {row['tcav_p_value']:.3g} | "
            f"{row['tcav_significant']:.2f} |"
        )
    path.write_text("\n".join(lines) + "\n")


def plot(summary: list[dict[str, Any]], dataset: str, path: Path) -> None:
    rows = sorted((r for r in summary if r["dataset"] == dataset), key=lambda r: r["level"])
    if not rows:
        return
    levels = [r["level"] for r in rows]
    figure, (effects, tcav_axis) = plt.subplots(1, 2, figsize=(9, 3.4))
    for key, label in ESTIMATORS:
        effects.plot(levels, [r[key] for r in rows], marker="o", label=label)
    effects.axhline(0, color="grey", lw=0.6)
    effects.set_xlabel(rows[0]["level_name"])
    effects.set_ylabel("effect of colour on P(target)")
    effects.legend(fontsize=8)
    tcav_axis.plot(levels, [r["tcav"] for r in rows], marker="s", color="tab:purple", label="TCAV")
    for level, row in zip(levels, rows):
        tcav_axis.annotate(f"p={row['tcav_p_value']:.2g}", (level, row["tcav"]), fontsize=7,
                           textcoords="offset points", xytext=(0, 6), ha="center")
    tcav_axis.axhline(0.5, color="grey", lw=0.6)
    tcav_axis.set_ylim(-0.05, 1.1)
    tcav_axis.set_xlabel(rows[0]["level_name"])
    tcav_axis.set_ylabel("TCAV (sign count)")
    if dataset == "coloured_digits":  # smaller sigma = stronger confounding: read right to left
        effects.invert_xaxis()
        tcav_axis.invert_xaxis()
    figure.suptitle(f"CaCE of colour on {dataset}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run(config: dict[str, Any], output_dir: Path) -> dict[str, Path]:
    """Run the study; return the paths written (``csv``, ``markdown``, ``bars_plot``, ``digits_plot``)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    try:
        settings = config["tcav"]
        tcav = TCAV(layers=settings["layers"], num_random=settings["num_random"],
                    examples_per_concept=settings["examples_per_concept"], seed=config["seed"])
        rows = []
        if config.get("bars"):
            rows += bars_rows(config, tcav)
        if config.get("digits"):
            rows += digits_rows(config, tcav)
    finally:
        torch.set_num_threads(threads)
    summary = mean_by_level(rows)
    paths = {"csv": output_dir / "cace_table.csv", "markdown": output_dir / "cace_table.md",
             "bars_plot": output_dir / "cace_bars.png", "digits_plot": output_dir / "cace_digits.png"}
    write_csv(rows, paths["csv"])
    write_markdown(summary, paths["markdown"])
    plot(summary, "bars", paths["bars_plot"])
    plot(summary, "coloured_digits", paths["digits_plot"])
    return paths


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="study YAML (default: the small config)")
    parser.add_argument("--output-dir", type=Path, default=None, help="overrides output_dir of the config")
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.config.read_text())
    output_dir = args.output_dir or Path(config.get("output_dir", Path("runs") / "cace" / config["name"]))
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*TCAV: concept.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    paths = run(config, output_dir)
    print(Path(paths["markdown"]).read_text())
    for name, path in paths.items():
        print(f"{name}: {path}")
    return paths


if __name__ == "__main__":
    main(sys.argv[1:])
