"""The TCAV paper's controlled caption experiment (Kim et al. 2018, section 4.2) on ConceptWorld.

Every training image carries a caption glyph (the digit of a class) in its corner. With caption
noise q, the caption names the image's own class with probability 1 - q and another class
otherwise. At q = 0 the caption is a perfect shortcut; at q = 1 it carries no information. For
each noise level we train a SmallCNN (class = shape) and report, for one target class:

* the model's **true reliance** on captions: validation accuracy with the captions as drawn vs
  with the captions removed (``intervene(caption=-1)``, the same images otherwise);
* **TCAV** of the *image concept* (objects of the target shape, no caption) and of the *caption
  concept* (the target class's caption glyph on objects of other shapes), with significance;
* **Grad-CAM** maps of a few validation images of the target class (does the map sit on the
  caption corner or on the object?).

TCAV should follow the true reliance: high for the caption concept where removing captions hurts.
Results (CSV, JSON, a plot and the Grad-CAM grids) go to ``runs/tcav_captions/`` by default.

    PYTHONPATH=. python experiments/tcav_captions/run.py --config experiments/tcav_captions/small.yaml
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import yaml

from xai_lightning import ConceptWorld, ImageClassifier, SmallCNN, grad_cam
from xai_lightning.concepts import TCAV
from xai_lightning.logging import display_images, heatmaps, labelled_grid, overlay, to_uint8_hwc

ROOT = Path(__file__).resolve().parents[2]


def concept_sets(world: ConceptWorld, target: int, count: int) -> dict[str, torch.Tensor]:
    """Image concept: target-shape objects without caption. Caption concept: the target's glyph on other shapes."""
    own = torch.nonzero(world.latent.shape == target).flatten()[:count]
    others = torch.nonzero(world.latent.shape != target).flatten()[:count]
    return {
        "image": world.intervene(own, caption=-1)["images"],
        "caption": world.intervene(others, caption=target)["images"],
    }


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).float().mean())


def run_level(config: dict[str, Any], noise: float, out_dir: Path) -> dict[str, Any]:
    pl.seed_everything(config["seed"])
    common = dict(label_by="shape", caption_p=1.0, caption_agreement=1.0 - noise)
    train = ConceptWorld(config["num_train"], seed=config["seed"] * 1000, **common)
    val = ConceptWorld(config["num_val"], seed=config["seed"] * 1000 + 1, **common)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*train.tensors()), batch_size=64, shuffle=True)
    model = ImageClassifier(SmallCNN(num_classes=train.num_classes, width=config["width"]), lr=3e-3)
    trainer = pl.Trainer(
        max_epochs=config["epochs"],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    trainer.fit(model, loader)
    model.eval()
    no_caption = val.intervene(torch.arange(len(val)), caption=-1)["images"]
    with_captions, without_captions = accuracy(model, val.images, val.labels), accuracy(model, no_caption, val.labels)

    target = config["target_class"]
    concept_world = ConceptWorld(
        max(1000, 6 * config["examples_per_concept"] * train.num_classes),
        seed=config["seed"] * 1000 + 2,
        label_by="shape",
    )
    concepts = concept_sets(concept_world, target, 3 * config["examples_per_concept"])
    tcav = TCAV(
        layers=[config["layer"]],
        num_random=config["num_random"],
        examples_per_concept=config["examples_per_concept"],
        seed=config["seed"],
    )
    result = tcav.attribute(
        model, val.images, val.labels, concepts, random_pool=val.images, classes=[target], class_names=val.class_names
    )
    row: dict[str, Any] = {
        "caption_noise": noise,
        "target_class": val.class_names[target],
        "accuracy_with_captions": with_captions,
        "accuracy_without_captions": without_captions,
        "reliance_on_captions": with_captions - without_captions,
    }
    for ci, concept in enumerate(result.concepts):
        row[f"tcav_{concept}"] = float(result.mean[0, ci, 0])
        row[f"tcav_{concept}_std"] = float(result.std[0, ci, 0])
        row[f"p_{concept}"] = float(result.p_values[0, ci, 0])
        row[f"significant_{concept}"] = bool(result.significant[0, ci, 0])
        row[f"cav_accuracy_{concept}"] = float(result.cav_accuracy[0, ci].mean())

    shown = torch.nonzero(val.labels == target).flatten()[: config["num_probe_gradcam"]]
    images = val.images[shown]
    maps = grad_cam(model, images, target, config["layer"]).maps[config["layer"]]
    panels = torch.stack([display_images(images), heatmaps(maps), overlay(images, maps)], dim=1)
    grid = labelled_grid(
        to_uint8_hwc(panels),
        column_titles=["image", "Grad-CAM", "overlay"],
        row_captions=[f"noise {noise:.1f}"] * len(shown),
    )
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(grid)).save(out_dir / f"gradcam_noise_{noise:.1f}.png")
    return row


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure  # the object API: no backend switch, no pyplot state

    noise = [r["caption_noise"] for r in rows]
    figure = Figure(figsize=(5.5, 3.4))
    axis = figure.subplots()
    for concept, style in (("image", "o-"), ("caption", "s-")):
        axis.errorbar(
            noise,
            [r[f"tcav_{concept}"] for r in rows],
            yerr=[r[f"tcav_{concept}_std"] for r in rows],
            fmt=style,
            capsize=3,
            label=f"TCAV {concept} concept",
        )
    axis.plot(noise, [r["reliance_on_captions"] for r in rows], "k--", label="accuracy drop without captions")
    axis.set_xlabel("caption noise (probability the caption names another class)")
    axis.set_ylim(-0.05, 1.05)
    axis.set_title(f"target class: {rows[0]['target_class']}", fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def run(config: dict[str, Any], out_dir: Path) -> list[dict[str, Any]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [run_level(config, float(noise), out_dir) for noise in config["noise_levels"]]
    with open(out_dir / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "results.json").write_text(json.dumps(rows, indent=2))
    plot(rows, out_dir / "tcav_vs_reliance.png")
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).with_name("small.yaml")))
    parser.add_argument("--out", default=str(ROOT / "runs" / "tcav_captions"))
    args = parser.parse_args(argv)
    rows = run(yaml.safe_load(Path(args.config).read_text()), Path(args.out))
    for row in rows:
        print(
            f"noise {row['caption_noise']:.1f}: accuracy {row['accuracy_with_captions']:.2f} with captions, "
            f"{row['accuracy_without_captions']:.2f} without; TCAV image {row['tcav_image']:.2f} "
            f"(p={row['p_image']:.3f}), caption {row['tcav_caption']:.2f} (p={row['p_caption']:.3f})"
        )
    print(f"results and plots in {args.out}")
    return rows


if __name__ == "__main__":
    main()
