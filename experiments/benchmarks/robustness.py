"""Batching of the robustness algorithms: one batched call versus a Python loop over examples.

Times, in the same process and alternating the two settings over several repeats, PGD (L2,
ε = 0.5, 10 steps) on 64 ConceptWorld images and feature visualisation of 8 units (64 steps,
Fourier prior) on a SmallCNN, and prints the ratio of the median times (loop / batched). PGD's
results are compared (they agree up to float noise amplified over the steps); the visualisations
start from different random parameters (one draw per batch vs per unit), so they are not.

    PYTHONPATH=. python experiments/benchmarks/robustness.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from xai_lightning.data import ConceptWorld
from xai_lightning.models import SmallCNN
from xai_lightning.robustness import pgd, random_point, visualize_features


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = SmallCNN(num_classes=5, width=16).eval()
    data = ConceptWorld(num_samples=64, seed=0)
    images = torch.stack([data[i]["image"] for i in range(64)])
    labels = torch.tensor([data[i]["label"] for i in range(64)])
    start = random_point(images.shape, "l2", 0.5, generator=torch.Generator().manual_seed(0))

    def pgd_batched():
        return pgd(model, images, labels, norm="l2", eps=0.5, steps=10, start=start).adversarial

    def pgd_loop():
        return torch.cat(
            [
                pgd(
                    model, images[i : i + 1], labels[i : i + 1], norm="l2", eps=0.5, steps=10, start=start[i : i + 1]
                ).adversarial
                for i in range(64)
            ]
        )

    def vis_batched():
        return visualize_features(
            model,
            "features.13",
            units=list(range(8)),
            steps=64,
            generator=torch.Generator().manual_seed(0),
            transforms=False,
        ).images

    def vis_loop():
        return torch.cat(
            [
                visualize_features(
                    model,
                    "features.13",
                    units=[u],
                    steps=64,
                    generator=torch.Generator().manual_seed(0),
                    transforms=False,
                ).images
                for u in range(8)
            ]
        )

    for name, batched, loop in (
        ("PGD, 64 images x 10 steps", pgd_batched, pgd_loop),
        ("feature visualisation, 8 units x 64 steps", vis_batched, vis_loop),
    ):
        times = {"batched": [], "loop": []}
        outputs = {}
        for _ in range(args.repeats):
            for key, fn in (("batched", batched), ("loop", loop)):
                seconds, outputs[key] = timed(fn)
                times[key].append(seconds)
        batched, loop = statistics.median(times["batched"]), statistics.median(times["loop"])
        line = f"{name}: batched {batched:.2f} s, loop {loop:.2f} s, loop/batched = {loop / batched:.1f}x"
        if name.startswith("PGD"):
            line += f" (max |difference| {(outputs['batched'] - outputs['loop']).abs().max().item():.1e})"
        print(line)


if __name__ == "__main__":
    main()
