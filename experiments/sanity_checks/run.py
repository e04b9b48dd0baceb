"""Sanity checks for saliency maps (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, NeurIPS 2018) on ConceptWorld.

1. **Model-parameter randomisation.** Train a SmallCNN on ConceptWorld (class = shape); re-initialise
   its layers from the logits down, cascading (and/or independently), and compare each method's
   maps of the randomised copies with the trained model's by Spearman rank correlation (absolute
   and signed), SSIM and HOG-Pearson. Methods: gradient, SmoothGrad, Integrated Gradients, Guided
   Backprop, Grad-CAM, Guided Grad-CAM. Curves: mean over probe images and re-initialisation seeds,
   with 95 % t-intervals over the seeds.
2. **Data randomisation.** Train the same network on the same images with permuted labels (it can
   only memorise) and compare its maps with the real model's. A method whose maps stay similar
   does not depend on what the model learned.

With ``signed_maps: true`` the gradient-type methods are compared on their signed channel sum (the
absolute value for ``spearman_abs``, SSIM and HOG), as in the paper; Grad-CAM maps are ReLU'd.
Writes ``results.json``, ``curves_<mode>.png`` and a self-contained ``report.html`` (curves, map
grids, tables):

    PYTHONPATH=. python experiments/sanity_checks/run.py --config experiments/sanity_checks/small.yaml
"""

from __future__ import annotations

import argparse
import importlib.util
import json
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
from xai_lightning.attribution.maps import reduce_to_map
from xai_lightning.evaluation.sanity import map_similarity, model_parameter_randomisation, randomisable_layers
from xai_lightning.logging import HtmlReport, display_images, heatmaps, labelled_grid, to_uint8_hwc

ROOT = Path(__file__).resolve().parents[2]
# Training and the t-interval live with the ROAR experiment: one home for both studies.
_spec = importlib.util.spec_from_file_location(
    "concept_world_training", ROOT / "experiments" / "roar" / "concept_world_training.py"
)
_training = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_training)
train, accuracy, interval = _training.train, _training.accuracy, _training.confidence_interval
#: study name → (registry name, options for signed maps)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "gradient": ("saliency", {"abs": False}),
    "smoothgrad": ("smoothgrad", {}),
    "integrated_gradients": ("integrated_gradients", {}),
    "guided_backprop": ("guided_backprop", {}),
    "gradcam": ("gradcam", {}),
    "guided_gradcam": ("guided_gradcam", {}),
}
TITLES = {
    "gradient": "Gradient",
    "smoothgrad": "SmoothGrad",
    "integrated_gradients": "Integrated Gradients",
    "guided_backprop": "Guided Backprop",
    "gradcam": "Grad-CAM",
    "guided_gradcam": "Guided Grad-CAM",
}


class Explainer:
    """``(model, inputs, targets) -> (B, H, W)`` maps of one method: signed channel sums or the method's heatmap."""

    def __init__(self, name: str, options: dict[str, Any], signed: bool, seed: int) -> None:
        registry_name, signed_options = METHODS[name]
        self.method = get_method(
            registry_name, seed=seed, max_batch=256, **({**signed_options, **options} if signed else options)
        )
        self.signed = signed

    def __call__(self, model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        attribution = self.method.attribute(model, inputs, targets)
        if self.signed and attribution.dim() == 4:
            return reduce_to_map(attribution, "sum")
        return self.method.to_map(attribution)


def run(config: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Run both sanity checks; returns the curves, the data-randomisation similarities and the run time."""
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(config.get("threads", threads)))
    try:
        result, figures = _study(config)
    finally:
        torch.set_num_threads(threads)
    result["seconds"] = time.perf_counter() - start
    _write(result, figures, config, out_dir)
    return result


def _study(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    data, settings, seed = config["data"], config["classifier"], config["seed"]
    train_world = ConceptWorld(data["num_train"], image_size=data["image_size"], seed=seed * 1000)
    val_world = ConceptWorld(data["num_val"], image_size=data["image_size"], seed=seed * 1000 + 1)
    train_x, train_y = train_world.tensors()
    val_x, val_y = val_world.tensors()
    model = train(train_x, train_y, settings, seed)
    probe_x, probe_y = val_x[: config["num_probe"]], val_y[: config["num_probe"]]
    result: dict[str, Any] = {
        "accuracy": accuracy(model, val_x, val_y),
        "layers": randomisable_layers(model),
        "curves": {},
        "intervals": {},
        "data_randomisation": {},
    }
    print(f"trained model: validation accuracy {result['accuracy']:.3f}", flush=True)
    options = config.get("method_options", {})
    explainers = {
        name: Explainer(name, options.get(name, {}), config["signed_maps"], seed) for name in config["methods"]
    }
    figures: dict[str, Any] = {"probe": probe_x, "maps": {}, "random_label_maps": {}}
    for mode in config["modes"]:
        for name, explainer in explainers.items():
            per_seed = []
            for randomisation_seed in config["randomisation_seeds"]:
                outcome = model_parameter_randomisation(
                    model,
                    probe_x,
                    probe_y,
                    explainer,
                    mode=mode,
                    similarities=config["similarities"],
                    seed=randomisation_seed,
                    keep_maps=randomisation_seed == config["randomisation_seeds"][0],
                )
                per_seed.append(outcome)
                if outcome.maps is not None:
                    figures["maps"][(mode, name)] = torch.cat([outcome.original.unsqueeze(0), outcome.maps])
            for similarity in config["similarities"]:
                curves = [outcome.curve(similarity).tolist() for outcome in per_seed]  # seeds × L
                key = f"{mode}/{name}/{similarity}"
                result["curves"][key] = [statistics.mean(step) for step in zip(*curves)]
                result["intervals"][key] = [interval(list(step)) for step in zip(*curves)]
            curve = result["curves"].get(f"{mode}/{name}/spearman_abs", [float("nan")])
            print(f"{mode:>11} {name:>21}: spearman_abs after all layers {curve[-1]:+.2f}", flush=True)
    if config.get("data_randomisation"):
        generator = torch.Generator().manual_seed(seed + 7)
        permuted = train_y[torch.randperm(len(train_y), generator=generator)]
        random_settings = {**settings, **config["data_randomisation"]}
        subset = int(random_settings.pop("num_train", len(train_y)))  # fewer images memorise in fewer epochs
        random_model = train(train_x[:subset], permuted[:subset], random_settings, seed)
        result["random_label_train_accuracy"] = accuracy(random_model, train_x[:subset], permuted[:subset])
        result["random_label_val_accuracy"] = accuracy(random_model, val_x, val_y)
        print(
            f"random-label model: train accuracy {result['random_label_train_accuracy']:.3f} (memorised), "
            f"validation {result['random_label_val_accuracy']:.3f}",
            flush=True,
        )
        for name, explainer in explainers.items():
            real = explainer(model, probe_x, probe_y)
            memorised = explainer(random_model, probe_x, probe_y)
            figures["random_label_maps"][name] = (real, memorised)
            result["data_randomisation"][name] = {
                similarity: float(map_similarity(similarity, real, memorised).mean())
                for similarity in config["similarities"]
            }
    return result, figures


def _curve_figure(result: dict[str, Any], config: dict[str, Any], mode: str) -> Figure:
    similarities = config["similarities"]
    figure = Figure(figsize=(3.4 * len(similarities), 3.4))
    axes = figure.subplots(1, len(similarities), squeeze=False)[0]
    layers = result["layers"]
    steps = np.arange(len(layers) + 1)
    for axis, similarity in zip(axes, similarities):
        for name in config["methods"]:
            values = [1.0, *result["curves"][f"{mode}/{name}/{similarity}"]]
            errors = [0.0, *result["intervals"][f"{mode}/{name}/{similarity}"]]
            axis.errorbar(steps, values, yerr=errors, marker="o", markersize=3, capsize=2, label=TITLES[name])
        axis.axhline(0, color="grey", linewidth=0.6)
        axis.set_xticks(steps, ["trained", *(layer.split(".", 1)[-1] for layer in layers)], rotation=90, fontsize=6)
        axis.set_ylim(-1.05, 1.05)
        axis.set_title(similarity, fontsize=9)
    axes[0].set_ylabel(f"similarity to the trained model's maps ({mode})")
    axes[-1].legend(fontsize=7)
    figure.tight_layout()
    return figure


def _write(result: dict[str, Any], figures: dict[str, Any], config: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps({**result, "config": config}, indent=2))
    report = HtmlReport("Sanity checks for saliency maps on ConceptWorld")
    report.text(
        f"SmallCNN (width {config['classifier']['width']}) trained on {config['data']['num_train']} ConceptWorld "
        f"images (class = shape): validation accuracy {result['accuracy']:.3f}. Probe: "
        f"{config['num_probe']} validation images; re-initialisation seeds {config['randomisation_seeds']} "
        "(error bars: 95 % t-intervals over those seeds; none with one seed). Adebayo et al. (2018) found that "
        "gradients, Integrated Gradients and Grad-CAM change as the top layers are randomised, while Guided "
        "Backprop and Guided Grad-CAM stay similar."
    )
    probe = figures["probe"]
    shown = min(config.get("max_images", 2), len(probe))
    for mode in config["modes"]:
        report.heading(f"Model-parameter randomisation ({mode})")
        figure = _curve_figure(result, config, mode)
        figure.savefig(out_dir / f"curves_{mode}.png", dpi=100)
        report.figure(figure, f"similarity vs randomised layer ({mode})")
        rows = [
            [
                TITLES[name],
                *[f"{statistics.mean(result['curves'][f'{mode}/{name}/{s}']):.3f}" for s in config["similarities"]],
            ]
            for name in config["methods"]
        ]
        report.table(["method", *config["similarities"]], rows, caption="mean similarity over the randomisation curve")
        layers = [layer.split(".", 1)[-1] for layer in result["layers"]]
        for index in range(shown):
            panels = [
                torch.cat(
                    [display_images(probe[index : index + 1]), heatmaps(figures["maps"][(mode, name)][:, index].abs())]
                )
                for name in config["methods"]
            ]
            grid = labelled_grid(
                to_uint8_hwc(torch.stack(panels)),
                row_captions=[TITLES[n] for n in config["methods"]],
                column_titles=["image", "trained", *layers],
                scale=2,
            )
            report.image(np.ascontiguousarray(grid), f"probe image {index}: |map| after randomising up to each layer")
    if result["data_randomisation"]:
        report.heading("Data randomisation (labels permuted)")
        report.text(
            f"The same network trained on permuted labels reaches training accuracy "
            f"{result['random_label_train_accuracy']:.3f} (memorisation) and validation accuracy "
            f"{result['random_label_val_accuracy']:.3f} (chance: {1 / 5:.2f}). Similarity of its maps to the "
            "real model's (mean over the probe images):"
        )
        report.table(
            ["method", *config["similarities"]],
            [
                [TITLES[name], *[result["data_randomisation"][name][s] for s in config["similarities"]]]
                for name in config["methods"]
            ],
        )
        for index in range(shown):
            panels = []
            for name in config["methods"]:
                real, memorised = figures["random_label_maps"][name]
                panels.append(
                    torch.cat([heatmaps(real[index : index + 1].abs()), heatmaps(memorised[index : index + 1].abs())])
                )
            grid = labelled_grid(
                to_uint8_hwc(torch.stack(panels)),
                row_captions=[TITLES[n] for n in config["methods"]],
                column_titles=["true labels", "permuted labels"],
                scale=2,
            )
            report.image(np.ascontiguousarray(grid), f"probe image {index}")
    report.preformatted(yaml.safe_dump(config, sort_keys=False) + f"\nrun time: {result['seconds']:.0f} s")
    report.write(out_dir / "report.html")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).with_name("small.yaml")))
    parser.add_argument("--out", default=None, help="output directory (default: runs/sanity_checks/<config name>)")
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    out = Path(args.out) if args.out else ROOT / "runs" / "sanity_checks" / config.get("name", "sanity_checks")
    result = run(config, out)
    print(f"done in {result['seconds']:.0f} s; report: {out / 'report.html'}")
    return result


if __name__ == "__main__":
    main()
