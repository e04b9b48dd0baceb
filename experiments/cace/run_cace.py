"""When do concept explanations mislead? CaCE against ground truth on BARS and coloured digits (Goyal et al. 2019).

For each confounding row and each seed, trains a small CNN on BARS (class = bar orientation, colour
drawn from ``P(colour | class)``: symmetric ``levels`` or asymmetric ``colour_given_class`` tables)
and on coloured digits (hue spread ``sigma`` around the class colour), then measures the effect of
the colour concept on the class probability five ways, all on the same trained model:

* GT-CaCE — ground truth, by re-rendering the same test images with the colour switched;
* EncDec-CaCE — counterfactuals from a conditional VAE trained on the (confounded) training
  images, encoded from the test images;
* Dec-CaCE — the same VAE's decoder on latents drawn from the prior;
* ConExp — the observational difference E[f | colour] − E[f | other colour];
* TCAV — sign-count score of the colour concept for the target class, with its p-value against
  ``num_random`` (≥ 10) random-vs-random CAVs.

Every row is reported over ≥ 3 seeds as mean ± sd with a 95 % t-interval (the plot's bands),
and each estimator's mean absolute error to the ground truth is compared with ConExp's by a
paired t-test over seeds. Each VAE variant in ``vae_variants`` adds its own EncDec/Dec columns
and the *shape shift* of its counterfactuals (how far a colour flip moves a colour-blind
orientation reading, in units of the class gap; 0 for a true intervention).

Writes into the run directory (``--output-dir``, else ``runs/cace/<name>`` under the current
directory; never into the source tree): ``cace_runs.csv`` (one row per dataset × row × seed ×
target), ``cace_summary.csv``, ``cace_table.md``, ``cace_bars.png``, ``cace_digits.png`` and a
self-contained ``report.html``:

    PYTHONPATH=. python experiments/cace/run_cace.py --config experiments/cace/small.yaml
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from xai_lightning.concepts import (
    TCAV,
    bars_colour_intervention,
    class_output,
    coloured_digits_intervention,
    compare_cace_estimators,
    fit_intervention_vae,
    vae_estimates,
)
from xai_lightning.concepts.cace_seeds import compare_paired, mean_absolute_errors, summarise_seeds
from xai_lightning.data import Bars, BarsDataModule, ColouredDigitsDataModule
from xai_lightning.data.bars import DEFAULT_GEOMETRY, colour_given_class_table, orientation_evidence
from xai_lightning.logging.html_report import HtmlReport
from xai_lightning.models import ImageClassifier, SmallCNN

DEFAULT_CONFIG = Path(__file__).parent / "small.yaml"
SOURCE_ROOT = Path(__file__).resolve().parents[2]
#: Headline estimators: column, label, colour in the plots.
ESTIMATORS = (
    ("gt_cace", "GT-CaCE", "black"),
    ("encdec_cace", "EncDec-CaCE", "tab:blue"),
    ("dec_cace", "Dec-CaCE", "tab:cyan"),
    ("conexp", "ConExp", "tab:red"),
)
RUN_COLUMNS = (
    "dataset",
    "row",
    "level",
    "seed",
    "target",
    "accuracy",
    "gt_cace",
    "gt_cace_stderr",
    "gt_cace_class0",
    "gt_cace_class1",
    "encdec_cace",
    "dec_cace",
    "shape_shift",
    "conexp",
    "tcav",
    "tcav_std",
    "tcav_p_value",
    "tcav_significant",
    "tcav_cav_accuracy",
    "seconds",
)
SUMMARY_KEYS = (
    "accuracy",
    "gt_cace",
    "gt_cace_class0",
    "gt_cace_class1",
    "encdec_cace",
    "dec_cace",
    "shape_shift",
    "conexp",
    "tcav",
    "tcav_p_value",
)


# ---------------------------------------------------------------------------- configuration
def output_directory(config: dict[str, Any], override: Path | None) -> Path:
    """``override``, else the config's ``output_dir``, else ``runs/cace/<name>``; refuses the source tree.

    Anything inside the repository must be under its git-ignored ``runs/`` folder, so a study can
    never overwrite or add tracked files.
    """
    path = Path(override or config.get("output_dir") or Path("runs") / "cace" / config["name"]).resolve()
    inside = path == SOURCE_ROOT or SOURCE_ROOT in path.parents
    if inside and not (path == SOURCE_ROOT / "runs" or SOURCE_ROOT / "runs" in path.parents):
        raise ValueError(
            f"Study outputs must not go into the source tree ({path}); use runs/... (git-ignored) or a "
            "directory outside the repository (--output-dir)."
        )
    return path


def bars_rows(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The BARS rows of a config: symmetric ``levels`` then ``asymmetric`` tables, each with its P(colour | class)."""
    rows = []
    for level in settings.get("levels", []):
        rows.append(
            {
                "row": f"confounding={level:g}",
                "table": colour_given_class_table(confounding=float(level)),
                "confounding": float(level),
                "colour_given_class": None,
            }
        )
    for entry in settings.get("asymmetric", []):
        table = colour_given_class_table(colour_given_class=entry["colour_given_class"])
        rows.append(
            {
                "row": entry.get("label", f"P(colour|class)={table.tolist()}"),
                "table": table,
                "confounding": None,
                "colour_given_class": table.tolist(),
            }
        )
    for row in rows:
        row["level"] = colour_class_correlation(row["table"])
    return rows


def colour_class_correlation(table: torch.Tensor) -> float:
    """Pearson (phi) correlation of green with vertical for balanced classes and ``P(colour | class)``."""
    p_green_h, p_green_v = float(table[0, 1]), float(table[1, 1])
    p_green = (p_green_h + p_green_v) / 2
    if p_green in (0.0, 1.0):
        return 0.0
    return (p_green_v - p_green_h) / (2 * math.sqrt(p_green * (1 - p_green)))


# ---------------------------------------------------------------------------- training
def train_classifier(
    datamodule: pl.LightningDataModule, num_classes: int, settings: dict[str, Any], seed: int
) -> ImageClassifier:
    """A SmallCNN trained with our ImageClassifier and a quiet Lightning trainer; returned in eval mode."""
    pl.seed_everything(seed, workers=True, verbose=False)
    model = ImageClassifier(SmallCNN(num_classes=num_classes, width=settings["width"]), lr=settings["lr"])
    trainer = pl.Trainer(
        max_epochs=settings["epochs"],
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=True,
    )
    trainer.fit(model, datamodule)
    return model.eval()


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    scores = torch.stack([class_output(model, images, k, output="logit") for k in range(num_classes)], dim=1)
    return float((scores.argmax(1) == labels).float().mean())


def estimate(
    model: torch.nn.Module,
    intervention: Any,
    vaes: dict[str, Any],
    tcav: TCAV,
    config: dict[str, Any],
    shape_readout: Any = None,
) -> dict[str, Any]:
    """Every estimator on one trained model; the first VAE variant fills the headline EncDec/Dec columns."""
    variants = list(vaes)
    counterfactual = vae_counterfactual(config, variants[0]) if variants else "decoded"
    row = compare_cace_estimators(
        model,
        intervention,
        vae=vaes[variants[0]] if variants else None,
        tcav=tcav,
        tcav_layers=config["tcav"]["layers"],
        counterfactual=counterfactual,
        shape_readout=shape_readout,
    )
    for name in variants[1:]:
        extra = vae_estimates(
            model,
            intervention,
            vaes[name],
            counterfactual=vae_counterfactual(config, name),
            shape_readout=shape_readout,
        )
        row.update(
            {f"{key.removesuffix('_cace')}_{name}": value for key, value in extra.items() if not key.endswith("stderr")}
        )
    return row


def vae_counterfactual(config: dict[str, Any], variant: str) -> str:
    settings = config.get("vae_variants", {}).get(variant, {})
    return settings.get("counterfactual", config.get("encdec_counterfactual", "decoded"))


def fit_vaes(train_intervention: Any, config: dict[str, Any], seed: int) -> dict[str, Any]:
    variants = config.get("vae_variants") or {"balanced": {}}
    vaes = {}
    for name, settings in variants.items():
        options = {k: v for k, v in settings.items() if k != "counterfactual"}
        vaes[name] = fit_intervention_vae(train_intervention, seed=seed, **config["vae"], **options)
    return vaes


def run_bars(config: dict[str, Any], tcav: TCAV, progress: tqdm) -> list[dict[str, Any]]:
    settings, size = config["bars"], config["image_size"]
    geometry = {**DEFAULT_GEOMETRY, **settings.get("geometry", {})}
    geometry = {k: tuple(v) if isinstance(v, list) else v for k, v in geometry.items()}
    runs = []
    for spec in bars_rows(settings):
        for seed in config["seeds"]:
            started = time.perf_counter()
            progress.set_postfix_str(f"bars {spec['row']} seed {seed}: classifier")
            datamodule = BarsDataModule(
                settings["num_train"],
                0,
                confounding=spec["confounding"],
                image_size=size,
                seed=seed,
                batch_size=config["classifier"]["batch_size"],
                colour_given_class=spec["colour_given_class"],
                **geometry,
            )
            datamodule.setup("fit")
            model = train_classifier(datamodule, 2, config["classifier"], seed)
            progress.set_postfix_str(f"bars {spec['row']} seed {seed}: VAE")
            vaes = fit_vaes(bars_colour_intervention(datamodule.train_set), config, seed)
            progress.set_postfix_str(f"bars {spec['row']} seed {seed}: estimators")
            test = Bars(
                settings["num_test"],
                spec["confounding"],
                size,
                seed=seed * 1000 + 2,
                colour_given_class=spec["colour_given_class"],
                **geometry,
            )
            row = estimate(
                model, bars_colour_intervention(test), vaes, tcav, config, shape_readout=orientation_evidence
            )
            row.update(
                dataset="bars",
                row=spec["row"],
                level=spec["level"],
                seed=seed,
                accuracy=accuracy(model, test.images, test.labels, 2),
                seconds=time.perf_counter() - started,
            )
            runs.append(row)
            progress.write(describe(row))
            progress.update()
    return runs


def run_digits(config: dict[str, Any], tcav: TCAV, progress: tqdm) -> list[dict[str, Any]]:
    settings, size = config["digits"], config["image_size"]
    runs = []
    for sigma in settings["sigmas"]:
        for seed in config["seeds"]:
            started = time.perf_counter()
            progress.set_postfix_str(f"digits sigma={sigma:g} seed {seed}: classifier")
            datamodule = ColouredDigitsDataModule(
                sigma=sigma,
                image_size=size,
                seed=seed,
                batch_size=config["classifier"]["batch_size"],
                jitter=settings.get("jitter", 0),
            )
            datamodule.setup("fit")
            model = train_classifier(datamodule, 10, config["classifier"], seed)
            train, test = datamodule.train_set, datamodule.val_set
            test_accuracy = accuracy(model, test.images, test.labels, 10)
            progress.set_postfix_str(f"digits sigma={sigma:g} seed {seed}: VAE")
            vaes = fit_vaes(coloured_digits_intervention(train, target=0, seed=seed), config, seed)
            progress.set_postfix_str(f"digits sigma={sigma:g} seed {seed}: estimators")
            for target in settings["targets"]:
                intervention = coloured_digits_intervention(test, target=target, seed=seed)
                row = estimate(model, intervention, vaes, tcav, config)
                row.update(
                    dataset="coloured_digits",
                    row=f"sigma={sigma:g}",
                    level=sigma,
                    seed=seed,
                    accuracy=test_accuracy,
                    seconds=time.perf_counter() - started,
                )
                runs.append(row)
                progress.write(describe(row))
            progress.update()
    return runs


def describe(row: dict[str, Any]) -> str:
    return (
        f"{row['dataset']:>15} {row['row']:<24} seed={row['seed']} target={row['target']} "
        f"acc={row['accuracy']:.3f}  GT={row['gt_cace']:+.3f} EncDec={row['encdec_cace']:+.3f} "
        f"Dec={row['dec_cace']:+.3f} ConExp={row['conexp']:+.3f} shift={row['shape_shift']:+.2f} "
        f"TCAV={row['tcav']:.2f} (p={row['tcav_p_value']:.2g})"
    )


# ---------------------------------------------------------------------------- summaries
def per_seed(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Average the targets of one (dataset, row, seed) into one run (coloured digits has several targets)."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["dataset"], run["row"], int(run["seed"])), []).append(run)
    merged = []
    for (dataset, row, seed), members in groups.items():
        out: dict[str, Any] = {"dataset": dataset, "row": row, "seed": seed, "level": members[0]["level"]}
        for key in members[0]:
            if key in out or isinstance(members[0][key], str):
                continue
            values = [float(m[key]) for m in members if not math.isnan(float(m[key]))]
            out[key] = float(np.mean(values)) if values else float("nan")
        merged.append(out)
    return merged


def summarise(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, row): every estimate as a :class:`SeedSummary`, TCAV p as median, significance as k/n."""
    seeds = per_seed(runs)
    extra_keys = sorted(
        {
            k
            for run in seeds
            for k in run
            if k.startswith(("encdec_", "dec_", "shape_shift_")) and k not in SUMMARY_KEYS and not k.endswith("stderr")
        }
    )
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in seeds:
        groups.setdefault((run["dataset"], run["row"]), []).append(run)
    summary = []
    for (dataset, row), members in groups.items():
        entry: dict[str, Any] = {"dataset": dataset, "row": row, "level": members[0]["level"], "seeds": len(members)}
        for key in (*SUMMARY_KEYS, *extra_keys):
            entry[key] = summarise_seeds([m.get(key, float("nan")) for m in members])
        entry["tcav_p_median"] = float(np.nanmedian([m["tcav_p_value"] for m in members]))
        entry["tcav_significant"] = sum(
            float(m["tcav_significant"]) > 0.5 for m in members if not math.isnan(float(m["tcav_significant"]))
        )
        summary.append(entry)
    return summary


def error_comparison(runs: Sequence[dict[str, Any]], dataset: str) -> list[dict[str, Any]]:
    """Per estimator: mean absolute error to GT over the rows (per seed), and its paired comparison with ConExp's."""
    seeds = [r for r in per_seed(runs) if r["dataset"] == dataset]
    if not seeds:
        return []
    candidates = ["encdec_cace", "dec_cace"] + sorted(
        {
            k
            for r in seeds
            for k in r
            if k.startswith(("encdec_", "dec_")) and not k.endswith("stderr") and k not in ("encdec_cace", "dec_cace")
        }
    )
    conexp = mean_absolute_errors(seeds, "conexp")
    table = [{"estimator": "conexp", "mae": summarise_seeds(list(conexp.values())), "vs_conexp": None}]
    for name in candidates:
        errors = mean_absolute_errors(seeds, name)
        if errors:
            table.append(
                {
                    "estimator": name,
                    "mae": summarise_seeds(list(errors.values())),
                    "vs_conexp": compare_paired(errors, conexp),
                }
            )
    return table


def write_csv(rows: Sequence[dict[str, Any]], path: Path, columns: Sequence[str]) -> None:
    extra = sorted({k for row in rows for k in row} - set(columns))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*columns, *extra], extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (v.mean if hasattr(v, "mean") and not isinstance(v, float) else v) for k, v in row.items()}
            )


def write_summary_csv(summary: Sequence[dict[str, Any]], path: Path) -> None:
    rows = []
    for entry in summary:
        flat: dict[str, Any] = {}
        for key, value in entry.items():
            if hasattr(value, "ci_low"):
                flat.update(
                    {
                        f"{key}_mean": value.mean,
                        f"{key}_sd": value.sd,
                        f"{key}_ci_low": value.ci_low,
                        f"{key}_ci_high": value.ci_high,
                    }
                )
            else:
                flat[key] = value
        rows.append(flat)
    columns = list(rows[0]) if rows else []
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def markdown(summary: Sequence[dict[str, Any]], errors: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "# Causal concept effect of colour vs its estimators",
        "",
        (
            "Effect of the colour concept on the target class probability, mean ± sd over seeds (coloured digits: "
            "averaged over targets first). Level: colour–class correlation (BARS) or hue spread sigma (digits). "
            "GT-CaCE intervenes in the generator; shift = shape shift of the VAE's counterfactuals (0 = shape "
            "untouched); TCAV is a fraction (0.5 = no direction), p its median over seeds, sig. = seeds with p < 0.05."
        ),
        "",
        "| dataset | row | level | seeds | accuracy | GT-CaCE | EncDec-CaCE | Dec-CaCE | ConExp | shift | TCAV "
        "| TCAV p | sig. |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        lines.append(
            f"| {r['dataset']} | {r['row']} | {r['level']:.2f} | {r['seeds']} | {r['accuracy'].format(signed=False)} | "
            f"{r['gt_cace'].format()} | {r['encdec_cace'].format()} | {r['dec_cace'].format()} | "
            f"{r['conexp'].format()} | "
            f"{r['shape_shift'].format(2)} | {r['tcav'].format(2, signed=False)} | {r['tcav_p_median']:.2g} | "
            f"{r['tcav_significant']}/{r['seeds']} |"
        )
    for dataset, table in errors.items():
        if not table:
            continue
        lines += [
            "",
            f"## Mean absolute error to GT-CaCE over the rows ({dataset})",
            "",
            "| estimator | MAE (mean ± sd over seeds) | minus ConExp's MAE [95 % CI] | paired p | verdict |",
            "|---|---|---|---|---|",
        ]
        for item in table:
            comparison = item["vs_conexp"]
            if comparison is None:
                lines.append(f"| {item['estimator']} | {item['mae'].format(signed=False)} | — | — | — |")
                continue
            d = comparison.difference
            lines.append(
                f"| {item['estimator']} | {item['mae'].format(signed=False)} | {d.mean:+.3f} "
                f"[{d.ci_low:+.3f}, {d.ci_high:+.3f}] | {comparison.p_value:.2g} | {comparison.verdict} |"
            )
    return "\n".join(lines) + "\n"


def plot(summary: Sequence[dict[str, Any]], dataset: str, path: Path) -> Figure | None:
    """Effect vs colour–class correlation with 95 % CI bands (GT, EncDec, Dec, ConExp) and TCAV on its own axis."""
    rows = [r for r in summary if r["dataset"] == dataset]
    if not rows:
        return None
    symmetric = sorted(
        (r for r in rows if not r["row"].startswith(("P(", "asym")) and "=" in r["row"]), key=lambda r: r["level"]
    )
    others = [r for r in rows if r not in symmetric]
    x_label = "colour–class correlation" if dataset == "bars" else "hue spread sigma (smaller = more confounded)"
    figure = Figure(figsize=(10, 3.8))
    effects, tcav_axis = figure.subplots(1, 2)
    x = [r["level"] for r in symmetric]
    for key, label, colour in ESTIMATORS:
        means = [r[key].mean for r in symmetric]
        effects.plot(x, means, marker="o", color=colour, label=label)
        low = [r[key].ci_low if not math.isnan(r[key].ci_low) else r[key].mean for r in symmetric]
        high = [r[key].ci_high if not math.isnan(r[key].ci_high) else r[key].mean for r in symmetric]
        effects.fill_between(x, low, high, color=colour, alpha=0.15, linewidth=0)
        for r in others:
            spread = [[r[key].mean - r[key].ci_low], [r[key].ci_high - r[key].mean]]
            effects.errorbar(
                [r["level"]],
                [r[key].mean],
                yerr=None if math.isnan(r[key].ci_low) else spread,
                marker="D",
                color=colour,
                capsize=3,
                linestyle="none",
            )
    for r in others:
        effects.annotate(
            r["row"], (r["level"], r["gt_cace"].mean), fontsize=6, textcoords="offset points", xytext=(4, -10)
        )
    effects.axhline(0, color="grey", lw=0.6)
    effects.set_xlabel(x_label)
    effects.set_ylabel("effect of colour on P(target)")
    effects.legend(fontsize=7, loc="upper left")
    effects.set_title("CaCE estimates (bands: 95 % CI over seeds; ◆ asymmetric rows)", fontsize=8)
    means = [r["tcav"].mean for r in symmetric]
    tcav_axis.plot(x, means, marker="s", color="tab:purple", label="TCAV")
    low = [r["tcav"].mean if math.isnan(r["tcav"].ci_low) else r["tcav"].ci_low for r in symmetric]
    high = [r["tcav"].mean if math.isnan(r["tcav"].ci_high) else r["tcav"].ci_high for r in symmetric]
    tcav_axis.fill_between(x, low, high, color="tab:purple", alpha=0.15, linewidth=0)
    for r in symmetric + others:
        tcav_axis.annotate(
            f"p={r['tcav_p_median']:.2g} ({r['tcav_significant']}/{r['seeds']})",
            (r["level"], r["tcav"].mean),
            fontsize=6,
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
        )
    for r in others:
        tcav_axis.plot([r["level"]], [r["tcav"].mean], marker="D", color="tab:purple")
    tcav_axis.axhline(0.5, color="grey", lw=0.6)
    tcav_axis.set_ylim(-0.05, 1.1)
    tcav_axis.set_xlabel(x_label)
    tcav_axis.set_ylabel("TCAV (sign count); p: median over seeds")
    if dataset == "coloured_digits":
        effects.invert_xaxis()
        tcav_axis.invert_xaxis()
    figure.suptitle(f"Effect of colour on {dataset}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return figure


def write_report(config: dict[str, Any], table: str, figures: dict[str, Figure | None], path: Path) -> Path:
    report = HtmlReport(f"CaCE study: {config['name']}")
    report.text(
        "Causal concept effect (Goyal et al. 2019) of colour against the estimators a user without a generator "
        "has. Bands are 95 % t-intervals over seeds."
    )
    for name, figure in figures.items():
        if figure is not None:
            report.figure(figure, caption=name)
    report.preformatted(table)
    report.heading("Configuration")
    report.preformatted(yaml.safe_dump(config, sort_keys=False))
    return report.write(path)


# ---------------------------------------------------------------------------- entry points
def run(config: dict[str, Any], output_dir: Path) -> dict[str, Path]:
    """Run the study; return the paths written.

    Keys: ``runs``, ``summary``, ``markdown``, ``bars_plot``, ``digits_plot``, ``html``.
    """
    if len(config.get("seeds", [])) < 1:
        raise ValueError("The config needs seeds: [...] (3 or more for error bars).")
    if config["tcav"]["num_random"] < 10:
        raise ValueError(f"tcav.num_random must be >= 10 for a meaningful t-test; got {config['tcav']['num_random']}")
    output_dir = output_directory(config, output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    try:
        settings = config["tcav"]
        tcav = TCAV(
            layers=settings["layers"],
            num_random=settings["num_random"],
            examples_per_concept=settings["examples_per_concept"],
            seed=config["seeds"][0],
        )
        runs: list[dict[str, Any]] = []
        total = len(config["seeds"]) * (
            (len(bars_rows(config["bars"])) if config.get("bars") else 0)
            + (len(config["digits"]["sigmas"]) if config.get("digits") else 0)
        )
        # One bar over every (dataset, row, seed) run, with its ETA; each finished run prints its line above it.
        with tqdm(
            total=total,
            desc=f"CaCE study {config['name']}",
            unit="run",
            disable=not config.get("progress", True),
            dynamic_ncols=True,
        ) as progress:
            if config.get("bars"):
                runs += run_bars(config, tcav, progress)
            if config.get("digits"):
                runs += run_digits(config, tcav, progress)
    finally:
        torch.set_num_threads(threads)
    summary = summarise(runs)
    errors = {dataset: error_comparison(runs, dataset) for dataset in ("bars", "coloured_digits")}
    paths = {
        "runs": output_dir / "cace_runs.csv",
        "summary": output_dir / "cace_summary.csv",
        "markdown": output_dir / "cace_table.md",
        "bars_plot": output_dir / "cace_bars.png",
        "digits_plot": output_dir / "cace_digits.png",
        "html": output_dir / "report.html",
    }
    write_csv(runs, paths["runs"], RUN_COLUMNS)
    write_summary_csv(summary, paths["summary"])
    table = markdown(summary, errors)
    paths["markdown"].write_text(table)
    figures = {
        "BARS": plot(summary, "bars", paths["bars_plot"]),
        "coloured digits": plot(summary, "coloured_digits", paths["digits_plot"]),
    }
    write_report(config, table, figures, paths["html"])
    return {key: path for key, path in paths.items() if path.exists()}


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="study YAML (default: the small config)")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="run directory (default: the config's output_dir, else runs/cace/<name>)",
    )
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.config.read_text())
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*TCAV: concept.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    paths = run(config, args.output_dir)
    print(Path(paths["markdown"]).read_text())
    for name, path in paths.items():
        print(f"{name}: {path}")
    return paths


if __name__ == "__main__":
    main(sys.argv[1:])
