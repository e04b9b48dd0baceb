"""Grad-CAM on ViT blocks vs attention rollout vs Chefer relevance, over the epochs of a ViT's training.

A small VisionTransformer (xai_lightning.models) learns ConceptWorld shapes; after every epoch, on a
fixed probe set of validation images, each map method explains the true class:

* **Grad-CAM** at the residual stream entering each block (``blocks.<i>.norm1:input@vit``, the last
  one is what ``"auto"`` picks);
* **attention rollout** (Abnar & Zuidema 2020) and **Chefer relevance** (Chefer et al. 2021);
* **random maps** (seeded, on the patch grid): the chance level every method must beat;

all bilinearly upsampled to the image and scored against ConceptWorld's object masks:

* **energy in mask** — fraction of a map's positive mass on the object (higher is better; a uniform
  map scores the object's area);
* **deletion AUC** (Petsiuk et al. 2018, lower is better; ``xai_lightning.evaluation.deletion_auc``
  at its defaults: 32 steps, zero baseline, probability of the explained class).

Several seeds train independently; the final epoch's scores are reported as mean ± 95 % t-interval;
every method is compared with the random reference, with every other method, and with itself at
the first epoch, by paired t-tests over seeds with Holm–Bonferroni within each family ("higher" /
"lower" only when the corrected p < 0.05 and the interval of the paired difference excludes 0). Outputs in
``runs/vit_attention/`` (or ``--out``): ``results.csv`` (seed × epoch × method), ``summary.json``,
``energy_over_epochs.png``, ``maps.png`` and a self-contained ``report.html``; with ``wandb: true``
each seed's training also carries :class:`~xai_lightning.AttentionCallback` into an offline W&B run.

    PYTHONPATH=. python experiments/vit_attention/run.py --config experiments/vit_attention/small.yaml
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml

from xai_lightning import AttentionCallback, ConceptWorld, ImageClassifier, VisionTransformer, grad_cam
from xai_lightning.attribution import attention_maps
from xai_lightning.core import observe
from xai_lightning.evaluation import deletion_auc, energy_in_mask, nanmean, uniform_energy_in_mask
from xai_lightning.logging import HtmlReport, display_images, labelled_grid, overlay, to_uint8_hwc

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ("seed", "epoch", "val_acc", "method", "energy_in_mask", "energy_in_mask_uniform", "deletion_auc")


def mean_deletion_auc(model: torch.nn.Module, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean deletion AUC (Petsiuk et al. 2018; lower is better) of ``maps (B, H, W)`` for ``targets`` over the
    probe images."""
    return float(deletion_auc(model, images, maps, targets).float().mean())


def random_maps(count: int, grid: tuple[int, int], size: tuple[int, int], seed: int) -> torch.Tensor:
    """Seeded uniform noise on the patch grid, upsampled like the attention maps: the chance reference."""
    noise = torch.rand(count, 1, *grid, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(noise, size=size, mode="bilinear", align_corners=False)[:, 0]


def method_maps(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, depth: int, seed: int
) -> dict[str, torch.Tensor]:
    """``(N, H, W)`` maps of every method for the true class."""
    size = tuple(images.shape[-2:])
    blocks = [f"blocks.{i}.norm1:input@vit" for i in range(depth)]
    cams = grad_cam(model, images, labels, blocks).maps
    maps = {f"gradcam_block{i}": cams[name] for i, name in enumerate(blocks)}
    attention = attention_maps(model, images, labels, kinds=("rollout", "relevance"))
    for kind in ("rollout", "relevance"):
        grid_maps = getattr(attention, kind)
        maps[kind] = F.interpolate(grid_maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    maps["random"] = random_maps(images.shape[0], tuple(attention.rollout.shape[-2:]), size, seed)
    return maps


class MapStudy(pl.Callback):
    """After every training epoch: every method's maps on the probe set, scored (inside the observer guard)."""

    def __init__(self, probe: ConceptWorld, depth: int, seed: int) -> None:
        self.images, self.labels = probe.images, probe.labels
        self.masks = probe.masks(slice(None))[:, probe.concept_names.index("object")].bool()
        self.depth, self.seed = depth, seed
        self.rows: list[dict[str, Any]] = []
        self.last_maps: dict[str, torch.Tensor] = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        network = pl_module.network
        with observe(network, trainer=trainer, seed=self.seed):
            maps = method_maps(network, self.images, self.labels, self.depth, self.seed)
            with torch.no_grad():
                accuracy = float((network(self.images).argmax(1) == self.labels).float().mean())
            uniform = float(uniform_energy_in_mask(self.masks).mean())
            for method, values in maps.items():
                self.rows.append(
                    {
                        "seed": self.seed,
                        "epoch": trainer.current_epoch,
                        "val_acc": accuracy,
                        "method": method,
                        "energy_in_mask": nanmean(energy_in_mask(values, self.masks)),
                        "energy_in_mask_uniform": uniform,
                        "deletion_auc": mean_deletion_auc(network, self.images, values, self.labels),
                    }
                )
        self.last_maps = maps


def train_seed(config: dict[str, Any], seed: int, out_dir: Path) -> MapStudy:
    pl.seed_everything(seed)
    train = ConceptWorld(config["num_train"], seed=seed * 1000, image_size=32)
    val = ConceptWorld(config["num_val"], seed=seed * 1000 + 1, image_size=32)
    probe = ConceptWorld(config["num_probe"], seed=seed * 1000 + 2, image_size=32)
    network = VisionTransformer(
        num_classes=train.num_classes,
        dim=config["dim"],
        depth=config["depth"],
        heads=config["heads"],
        patch_size=config["patch_size"],
        mean=(0.44,) * 3,
        std=(0.16,) * 3,
    )
    model = ImageClassifier(
        network, lr=config["lr"], weight_decay=config["weight_decay"], cosine_epochs=config["epochs"]
    )
    study = MapStudy(probe, config["depth"], seed)
    callbacks: list[pl.Callback] = [study]
    logger: Any = False
    if config.get("wandb", False):
        from pytorch_lightning.loggers import WandbLogger

        logger = WandbLogger(offline=True, save_dir=str(out_dir), project="vit_attention", name=f"seed{seed}")
        callbacks.append(AttentionCallback(num_probe=16, max_images=8))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*train.tensors()), batch_size=64, shuffle=True)
    val_loader = torch.utils.data.DataLoader(val, batch_size=128)
    trainer = pl.Trainer(
        max_epochs=config["epochs"],
        accelerator="cpu",
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        callbacks=callbacks,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, loader, val_loader)
    if logger:
        logger.experiment.finish()
    return study


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % t-interval (NaN half-width for fewer than 2 values)."""
    from scipy import stats

    array = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if array.size == 0:
        return float("nan"), float("nan")
    if array.size < 2:
        return float(array.mean()), float("nan")
    return float(array.mean()), float(stats.t.ppf(0.975, array.size - 1) * array.std(ddof=1) / math.sqrt(array.size))


def paired(differences: list[float]) -> dict[str, Any]:
    """Mean paired difference over seeds, its 95 % t-interval, the paired t-test's p and the verdict
    (REFERENCE.md: "higher"/"lower" only when p < 0.05 and the interval excludes 0)."""
    from scipy import stats

    mean, half = t_interval(differences)
    p = float(stats.ttest_1samp(differences, 0.0).pvalue) if len(differences) >= 2 else float("nan")
    if len(differences) < 3:
        verdict = "too few seeds"
    elif p < 0.05 and mean - half > 0:
        verdict = "higher"
    elif p < 0.05 and mean + half < 0:
        verdict = "lower"
    else:
        verdict = "no significant difference"
    return {"difference": mean, "ci95": half, "p": p, "verdict": verdict}


def holm(family: dict[str, dict[str, Any]]) -> None:
    """Holm–Bonferroni over a family of paired comparisons (REFERENCE.md): adds ``p_holm`` and redoes
    each verdict with it, in place."""
    ranked = sorted((entry["p"], name) for name, entry in family.items() if not math.isnan(entry["p"]))
    running = 0.0
    for rank, (p, name) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - rank) * p))  # step-down, kept monotone
        entry = family[name]
        entry["p_holm"] = running
        if entry["verdict"] in ("higher", "lower") and running >= 0.05:
            entry["verdict"] = "no significant difference"


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Final-epoch scores per method (mean ± 95 % CI over seeds), paired comparisons with the random
    maps and between methods, and each method's change from the first to the last epoch."""
    first_epoch, last = min(row["epoch"] for row in rows), max(row["epoch"] for row in rows)
    final = [row for row in rows if row["epoch"] == last]
    seeds = sorted({row["seed"] for row in final})
    methods = list(dict.fromkeys(row["method"] for row in final))
    by = {(row["method"], row["seed"]): row for row in final}
    start = {(row["method"], row["seed"]): row for row in rows if row["epoch"] == first_epoch}
    summary: dict[str, Any] = {
        "epoch": last,
        "seeds": seeds,
        "methods": {},
        "vs_random": {},
        "pairs": {},
        "over_training": {},
    }
    for method in methods:
        energy = [by[(method, s)]["energy_in_mask"] for s in seeds]
        mean, half = t_interval(energy)
        entry = {"energy_in_mask": mean, "energy_in_mask_ci95": half}
        deletion = [by[(method, s)]["deletion_auc"] for s in seeds if by[(method, s)]["deletion_auc"] is not None]
        if deletion:
            entry["deletion_auc"], entry["deletion_auc_ci95"] = t_interval(deletion)
        summary["methods"][method] = entry
        if method != "random":
            summary["vs_random"][method] = paired(
                [by[(method, s)]["energy_in_mask"] - by[("random", s)]["energy_in_mask"] for s in seeds]
            )
        summary["over_training"][method] = paired(
            [by[(method, s)]["energy_in_mask"] - start[(method, s)]["energy_in_mask"] for s in seeds]
        )
    compared = [m for m in methods if m != "random"]
    for i, one in enumerate(compared):
        for other in compared[i + 1 :]:
            summary["pairs"][f"{one} - {other}"] = paired(
                [by[(one, s)]["energy_in_mask"] - by[(other, s)]["energy_in_mask"] for s in seeds]
            )
    for family in ("vs_random", "pairs", "over_training"):
        holm(summary[family])
    for method, versus in summary["vs_random"].items():
        verdict = (
            versus["verdict"]
            if versus["verdict"] in ("too few seeds", "no significant difference")
            else f"{versus['verdict']} than random"
        )
        summary["methods"][method].update(
            {
                "vs_random_difference": versus["difference"],
                "vs_random_ci95": versus["ci95"],
                "vs_random_p": versus.get("p_holm", versus["p"]),
                "verdict": verdict,
            }
        )
    summary["val_acc"] = t_interval([by[(methods[0], s)]["val_acc"] for s in seeds])
    summary["energy_in_mask_uniform"] = final[0]["energy_in_mask_uniform"]
    return summary


def plot(rows: list[dict[str, Any]], path: Path):
    from matplotlib.figure import Figure

    methods = list(dict.fromkeys(row["method"] for row in rows))
    epochs = sorted({row["epoch"] for row in rows})
    figure = Figure(figsize=(6.4, 3.8))
    axis = figure.add_subplot()
    for method in methods:
        means, halves = zip(
            *[
                t_interval([r["energy_in_mask"] for r in rows if r["method"] == method and r["epoch"] == e])
                for e in epochs
            ]
        )
        means, halves = np.asarray(means), np.nan_to_num(np.asarray(halves))
        style = "k--" if method == "random" else "-o"
        axis.plot(epochs, means, style, label=method, markersize=3)
        axis.fill_between(epochs, means - halves, means + halves, alpha=0.15)
    axis.axhline(rows[0]["energy_in_mask_uniform"], color="grey", linewidth=0.8, label="uniform map (object area)")
    axis.set_xlabel("epoch")
    axis.set_ylabel("energy in object mask")
    axis.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return figure


def maps_grid(study: MapStudy, shown: int = 6) -> np.ndarray:
    images = study.images[:shown]
    methods = [m for m in study.last_maps if m != "random"]
    panels = [display_images(images)] + [overlay(images, study.last_maps[m][:shown]) for m in methods]
    return labelled_grid(to_uint8_hwc(torch.stack(panels, dim=1)), column_titles=["image", *methods])


def read_results(path: Path) -> list[dict[str, Any]]:
    """``results.csv`` back as rows with numbers (for re-summarising without retraining)."""
    rows = []
    with path.open() as handle:
        for row in csv.DictReader(handle):
            rows.append(
                {
                    "seed": int(row["seed"]),
                    "epoch": int(row["epoch"]),
                    "val_acc": float(row["val_acc"]),
                    "method": row["method"],
                    "energy_in_mask": float(row["energy_in_mask"]),
                    "energy_in_mask_uniform": float(row["energy_in_mask_uniform"]),
                    "deletion_auc": float(row["deletion_auc"]) if row["deletion_auc"] else None,
                }
            )
    return rows


def run(config: dict[str, Any], out_dir: Path, from_results: bool = False) -> dict[str, Path]:
    """Train and score every seed (or, ``from_results``, re-summarise an earlier run's results.csv)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": out_dir / "results.csv",
        "summary": out_dir / "summary.json",
        "plot": out_dir / "energy_over_epochs.png",
        "maps": out_dir / "maps.png",
        "report": out_dir / "report.html",
    }
    rows: list[dict[str, Any]] = []
    study = None
    if from_results:
        rows = read_results(paths["csv"])
    else:
        for seed in config["seeds"]:
            study = train_seed(config, int(seed), out_dir)
            rows.extend(study.rows)
        with paths["csv"].open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
    summary = summarise(rows)
    paths["summary"].write_text(json.dumps(summary, indent=2))
    figure = plot(rows, paths["plot"])
    from PIL import Image

    if study is not None:
        Image.fromarray(maps_grid(study)).save(paths["maps"])
    grid = np.asarray(Image.open(paths["maps"]).convert("RGB")) if paths["maps"].exists() else None
    report = HtmlReport("ViT: Grad-CAM on blocks vs attention rollout vs Chefer relevance")
    report.text(
        f"ConceptWorld shapes, {len(config['seeds'])} seed(s), {config['epochs']} epochs; validation accuracy "
        f"at the end {summary['val_acc'][0]:.3f} ± {summary['val_acc'][1]:.3f} (95 % CI). Energy in the object "
        f"mask on {config['num_probe']} probe images; a uniform map scores {summary['energy_in_mask_uniform']:.3f}."
    )
    report.figure(figure, caption="energy in mask over epochs (mean, 95 % CI band over seeds)")
    columns = [
        "method",
        "energy in mask",
        "± 95 % CI",
        "minus random",
        "± 95 % CI",
        "p (Holm)",
        "verdict",
        "deletion AUC",
    ]
    table = []
    for method, entry in summary["methods"].items():
        table.append(
            [
                method,
                entry["energy_in_mask"],
                entry["energy_in_mask_ci95"],
                entry.get("vs_random_difference", ""),
                entry.get("vs_random_ci95", ""),
                entry.get("vs_random_p", ""),
                entry.get("verdict", "reference"),
                entry.get("deletion_auc", "n/a"),
            ]
        )
    report.table(columns, table, caption=f"final epoch ({summary['epoch']}), paired over seeds")
    pair_columns = ["comparison", "difference", "± 95 % CI", "p", "p (Holm)", "verdict"]
    report.table(
        pair_columns,
        [
            [name, e["difference"], e["ci95"], e["p"], e.get("p_holm", ""), e["verdict"]]
            for name, e in summary["pairs"].items()
        ],
        caption="energy in mask, method vs method at the final epoch (paired over seeds)",
    )
    report.table(
        pair_columns,
        [
            [name, e["difference"], e["ci95"], e["p"], e.get("p_holm", ""), e["verdict"]]
            for name, e in summary["over_training"].items()
        ],
        caption="energy in mask, last epoch minus first epoch (paired over seeds): does the map become "
        "object-aligned while the ViT trains?",
    )
    if grid is not None:
        report.image(grid, caption="last seed, final epoch: maps of the true class")
    report.preformatted(yaml.safe_dump(config))
    report.write(paths["report"])
    return paths


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).with_name("small.yaml")))
    parser.add_argument("--out", default=str(ROOT / "runs" / "vit_attention"))
    parser.add_argument("--from-results", action="store_true", help="re-summarise <out>/results.csv, no training")
    args = parser.parse_args(argv)
    paths = run(yaml.safe_load(Path(args.config).read_text()), Path(args.out), from_results=args.from_results)
    summary = json.loads(paths["summary"].read_text())
    for method, entry in summary["methods"].items():
        print(
            f"{method:16s} energy in mask {entry['energy_in_mask']:.3f} ± {entry['energy_in_mask_ci95']:.3f}  "
            f"{entry.get('verdict', 'reference')}"
        )
    print(f"results in {args.out}")
    return paths


if __name__ == "__main__":
    main()
