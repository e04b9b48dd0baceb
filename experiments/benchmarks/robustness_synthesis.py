"""Convergence of RobustnessCallback's syntheses: how many steps each needs, and what they cost.

Trains a SmallCNN (width 32, the callback benchmark's model) on ConceptWorld for ``--epochs``
epochs, then runs the callback's three syntheses on its first 8 probe-like images at several step
counts and prints, per step count, the synthesis's quality measure and its CPU/GPU time:

* targeted morph (Santurkar et al. 2019): success rate of the 8 × 5 (image, class) morphs;
* representation inversion (Mahendran & Vedaldi 2015): mean relative representation error
  ``‖Φ(x*) − Φ₀‖² / ‖Φ₀‖²`` (lower is better);
* feature visualisation of the 5 class logits (Fourier prior): mean logit reached (its objective).

Each quality is also given relative to the longest run (the old default step count), so the table
shows where the result has converged. Seeds are fixed; ``--seeds`` repeats with other model seeds.

    PYTHONPATH=. python experiments/benchmarks/robustness_synthesis.py [--epochs 2] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import time
import warnings

import pytorch_lightning as pl
import torch

from xai_lightning import ConceptWorld, ConceptWorldDataModule, ImageClassifier, SmallCNN
from xai_lightning.robustness import invert_representation, morph_to_every_class, visualize_features

warnings.filterwarnings("ignore")

STEPS = {"morph": (10, 20, 30, 60), "inversion": (25, 50, 100, 200), "visualization": (32, 64, 128, 256)}


def trained_model(seed: int, epochs: int) -> torch.nn.Module:
    pl.seed_everything(seed, verbose=False)
    module = ImageClassifier(SmallCNN(num_classes=5, width=32))
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, ConceptWorldDataModule(num_train=2000, num_val=200, batch_size=64))
    return module.eval()


def run(kind: str, model: torch.nn.Module, images: torch.Tensor, steps: int) -> float:
    generator = torch.Generator().manual_seed(0)
    if kind == "morph":
        _, result = morph_to_every_class(model, images, 5, steps=steps)
        return float(result.success.float().mean())
    if kind == "inversion":
        return float(invert_representation(model, images, steps=steps, generator=generator).representation_error.mean())
    features = visualize_features(
        model, "logits", prior="fourier", image_shape=tuple(images.shape[1:]), steps=steps, generator=generator
    )
    return float(features.activation.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = ConceptWorld(num_samples=8, seed=123).images
    print(
        f"{torch.get_num_threads()} thread(s); SmallCNN(width=32) trained {args.epochs} epochs on 2,000 "
        "ConceptWorld images; 8 images; CPU seconds"
    )
    print("| synthesis | seed | steps | quality | relative to the longest | CPU s |")
    print("|---|---|---|---|---|---|")
    for seed in args.seeds:
        model = trained_model(seed, args.epochs)
        for kind, counts in STEPS.items():
            rows = []
            for steps in counts:
                start = time.process_time()
                quality = run(kind, model, images, steps)
                rows.append((steps, quality, time.process_time() - start))
            longest = rows[-1][1]
            for steps, quality, seconds in rows:
                relative = quality / longest if longest else float("nan")
                print(f"| {kind} | {seed} | {steps} | {quality:.4f} | {relative:.3f} | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
