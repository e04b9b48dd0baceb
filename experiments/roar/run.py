"""ROAR — RemOve And Retrain (Hooker, Erhan, Kindermans & Kim, NeurIPS 2019) on ConceptWorld.

Does an attribution method rank the pixels the model needs? Train a SmallCNN on ConceptWorld
(class = shape); rank every training and test pixel by each method's map of that trained model;
replace the top ``t`` % by the per-channel mean of the training images; *retrain* a fresh model
on the modified training set and measure its accuracy on the modified test set. The faster the
accuracy falls with ``t``, the better the ranking. Retraining is what makes the comparison fair:
without it, the removal pattern itself is out of distribution.

Rankings: ``gradient`` (saliency), ``integrated_gradients``, ``smoothgrad_sq`` (SmoothGrad²),
``gradcam``, ``random`` (the chance ranking) and ``ground_truth`` — the object's mask first, an
oracle only ConceptWorld can give (ties inside and outside the mask broken at random).

Writes ``results.csv``, ``results.json``, ``accuracy_vs_removed.png`` and a self-contained
``report.html`` (plot, table, removed-pixel examples) into the output directory:

    PYTHONPATH=. python experiments/roar/run.py --config experiments/roar/small.yaml [--out runs/roar/small]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from matplotlib.figure import Figure

from xai_lightning import ConceptWorld
from xai_lightning.attribution import get_method
from xai_lightning.logging import HtmlReport, display_images, labelled_grid, to_uint8_hwc

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "concept_world_training", Path(__file__).with_name("concept_world_training.py")
)
_training = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_training)
train, accuracy, confidence_interval = _training.train, _training.accuracy, _training.confidence_interval
#: method name in the study → (registry name, options); "random" and "ground_truth" are not methods.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "gradient": ("saliency", {}),
    "integrated_gradients": ("integrated_gradients", {"steps": 16}),
    "smoothgrad_sq": ("smoothgrad", {"variant": "smoothgrad_sq", "n_samples": 16}),
    "gradcam": ("gradcam", {}),
}
ORACLES = ("random", "ground_truth")


def ranking_scores(
    name: str,
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    seed: int,
    chunk: int = 256,
) -> torch.Tensor:
    """``(N, H, W)`` scores; the highest are removed first."""
    generator = torch.Generator().manual_seed(seed)
    if name == "random":
        return torch.rand(masks.shape, generator=generator)
    if name == "ground_truth":
        return masks.float() + 0.5 * torch.rand(masks.shape, generator=generator)
    registry_name, options = METHODS[name]
    method = get_method(registry_name, seed=seed, max_batch=256, **options)
    parts = [
        method.to_map(method.attribute(model, images[i : i + chunk], labels[i : i + chunk]))
        for i in range(0, len(images), chunk)
    ]
    return torch.cat(parts).float()


def remove_top(images: torch.Tensor, scores: torch.Tensor, fraction: float, fill: torch.Tensor) -> torch.Tensor:
    """Replace the ``fraction`` highest-scoring pixels of each image (all channels) by ``fill`` ``(C,)``."""
    count = math.floor(fraction * scores[0].numel() + 1e-6)
    order = scores.flatten(1).argsort(dim=1, descending=True, stable=True)
    removed = torch.zeros_like(order, dtype=torch.bool).scatter_(1, order[:, :count], True).view_as(scores)
    return torch.where(removed.unsqueeze(1), fill.view(1, -1, 1, 1), images)


def run(config: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Run the study; returns ``{"rows": [...], "summary": {method: {fraction: mean accuracy}}, "seconds": s}``."""
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(config.get("threads", threads)))
    try:
        rows, examples, base_accuracy = _study(config)
    finally:
        torch.set_num_threads(threads)
    summary: dict[str, dict[float, float]] = {}
    for row in rows:
        summary.setdefault(row["method"], {}).setdefault(row["fraction"], [])  # type: ignore[arg-type]
        summary[row["method"]][row["fraction"]].append(row["accuracy"])  # type: ignore[union-attr]
    intervals = {m: {f: confidence_interval(v) for f, v in per.items()} for m, per in summary.items()}  # type: ignore[arg-type]
    means = {m: {f: statistics.mean(v) for f, v in per.items()} for m, per in summary.items()}  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    result = {
        "rows": rows,
        "summary": means,
        "intervals": intervals,
        "base_accuracy": base_accuracy,
        "seconds": seconds,
        "config": config,
    }
    _write(result, examples, out_dir)
    return result


def _study(config: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor], float]:
    data, settings, seed = config["data"], config["classifier"], config["seed"]
    train_world = ConceptWorld(data["num_train"], image_size=data["image_size"], seed=seed * 1000)
    test_world = ConceptWorld(data["num_test"], image_size=data["image_size"], seed=seed * 1000 + 2)
    train_x, train_y = train_world.tensors()
    test_x, test_y = test_world.tensors()
    train_masks = train_world.masks(torch.arange(len(train_world)))[:, 0]
    test_masks = test_world.masks(torch.arange(len(test_world)))[:, 0]
    fill = train_x.mean(dim=(0, 2, 3))
    base = train(train_x, train_y, settings, seed)
    base_accuracy = accuracy(base, test_x, test_y)
    print(f"trained model: test accuracy {base_accuracy:.3f}", flush=True)
    rows: list[dict[str, Any]] = []
    examples: dict[str, torch.Tensor] = {}
    for name in config["methods"]:
        if name not in METHODS and name not in ORACLES:
            raise ValueError(f"Unknown ranking {name!r}; use some of {[*METHODS, *ORACLES]}")
        train_scores = ranking_scores(name, base, train_x, train_y, train_masks, seed)
        test_scores = ranking_scores(name, base, test_x, test_y, test_masks, seed + 1)
        shown = min(4, len(test_x))
        examples[name] = torch.stack(
            [remove_top(test_x[:shown], test_scores[:shown], f, fill) for f in config["fractions"]], dim=1
        )
        for fraction in config["fractions"]:
            modified_train = remove_top(train_x, train_scores, fraction, fill)
            modified_test = remove_top(test_x, test_scores, fraction, fill)
            for repeat in range(config.get("retrain_seeds", 1)):
                model = train(modified_train, train_y, settings, seed + 100 * (repeat + 1))
                value = accuracy(model, modified_test, test_y)
                rows.append({"method": name, "fraction": float(fraction), "seed": repeat, "accuracy": value})
                print(f"{name:>22} t={fraction:.0%} seed {repeat}: accuracy {value:.3f}", flush=True)
    return rows, examples, base_accuracy


def _write(result: dict[str, Any], examples: dict[str, torch.Tensor], out_dir: Path) -> None:
    rows, means, intervals = result["rows"], result["summary"], result["intervals"]
    with open(out_dir / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["method", "fraction", "seed", "accuracy"])
        writer.writeheader()
        writer.writerows(rows)
    serialisable = {
        **result,
        "summary": {m: {str(f): v for f, v in per.items()} for m, per in means.items()},
        "intervals": {m: {str(f): v for f, v in per.items()} for m, per in intervals.items()},
    }
    (out_dir / "results.json").write_text(json.dumps(serialisable, indent=2))

    figure = Figure(figsize=(6.5, 3.8))
    axis = figure.subplots()
    for index, (name, per) in enumerate(means.items()):
        fractions = sorted(per)
        colour = f"C{index}"
        axis.plot([100 * f for f in fractions], [per[f] for f in fractions], marker="o", color=colour, label=name)
        seeds = [(100 * row["fraction"], row["accuracy"]) for row in rows if row["method"] == name]
        axis.scatter(*zip(*seeds), s=9, color=colour, alpha=0.45)  # every retraining seed
    axis.axhline(result["base_accuracy"], color="grey", linestyle="--", linewidth=0.8, label="no removal")
    axis.set_xlabel("pixels removed and retrained (t, %)")
    axis.set_ylabel("test accuracy after retraining")
    axis.set_ylim(0, 1.02)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(out_dir / "accuracy_vs_removed.png", dpi=110)

    report = HtmlReport("ROAR on ConceptWorld: accuracy after removing the top-ranked pixels and retraining")
    report.text(
        "Hooker et al. (2019): rank each image's pixels by an attribution map of the trained model, replace "
        "the top t % by the per-channel training mean in the training and the test images, retrain from "
        "scratch, and measure test accuracy. A ranking that finds what the model needs makes accuracy fall "
        "fastest; 'random' is chance, 'ground_truth' removes the object first (an oracle). Lines: means over "
        "retraining seeds; dots: single seeds. Table: mean ± half-width of the 95 % t-interval over the seeds "
        "(0 with one seed)."
    )
    report.figure(figure, "test accuracy vs removed fraction")
    fractions = sorted({row["fraction"] for row in rows})
    table = [[name, *[f"{means[name][f]:.3f} ± {intervals[name][f]:.3f}" for f in fractions]] for name in means]
    report.table(
        ["ranking", *[f"t = {f:.0%}" for f in fractions]],
        table,
        caption=f"mean test accuracy (trained model without removal: {result['base_accuracy']:.3f})",
    )
    report.heading("Removed pixels (test images)")
    names = list(examples)
    for index in range(next(iter(examples.values())).shape[0]):
        panels = torch.stack([display_images(examples[name][index]) for name in names])  # (methods, T, H, W, 3)
        grid = labelled_grid(
            to_uint8_hwc(panels),
            row_captions=names,
            column_titles=[f"t={f:.0%}" for f in result["config"]["fractions"]],
            scale=2,
        )
        report.image(np.ascontiguousarray(grid), f"test image {index}")
    report.preformatted(yaml.safe_dump(result["config"], sort_keys=False) + f"\nrun time: {result['seconds']:.0f} s")
    report.write(out_dir / "report.html")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).with_name("small.yaml")))
    parser.add_argument("--out", default=None, help="output directory (default: runs/roar/<config name>)")
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    out = Path(args.out) if args.out else ROOT / "runs" / "roar" / config.get("name", "roar")
    result = run(config, out)
    print(f"done in {result['seconds']:.0f} s; report: {out / 'report.html'}")
    return result


if __name__ == "__main__":
    main()
