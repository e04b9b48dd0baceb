"""Epoch-time overhead of every observing callback, at its default settings, in one process.

Trains ``SmallCNN`` (width 32, the model's default) for one epoch on ConceptWorld (2,000 training
and 500 validation images, batch 64) without a callback and with each callback alone, the runs of
all settings interleaved (plain, A, B, …, plain, A, B, …) so that load drifting on a shared
machine hits all alike, and prints per callback the ratio of median epoch times (with / without)
and its range over the repeats, plus the time spent inside the callback (its ``run`` and, for the
explainer, its training steps) as a steadier second estimate. The timed span is
``on_train_start`` → ``on_train_end`` (training, validation and the callback's epoch-end work);
the one-time ``setup`` (probe drawing, layer checks, the concepts' images) is not in it.

    PYTHONPATH=. python experiments/benchmarks/callback_overhead.py [--repeats 5] [--threads 1]
        [--only tcav dissection ...] [--device cpu|cuda]

Settings (each callback's defaults unless a layer or concept must be named):

* ``gradcam``       GradCAMCallback(layers=["auto", "network.features.13"])
* ``attribution``   AttributionCallback(methods=["saliency", "integrated_gradients", "gradcam"])
* ``tcav``          TCAVCallback(layers=["network.features.13"], concepts=["striped", "dotted", "red"])
* ``dissection``    DissectionCallback(layers=["network.features.13", "network.features.20"])
* ``explainer``     ExplainerNetworkCallback("network.features.13", "network.features.20")
* ``robustness``    RobustnessCallback() — a one-epoch run is its synthesis epoch (morph, inversion,
                    feature visualisation run at the last epoch), so this is the synthesis-epoch ratio

Targets (issue 21): Grad-CAM ≤ 1.05, Attribution ≤ 1.10, TCAV ≤ 1.10, Dissection ≤ 1.10,
Explainer ≤ 1.3, Robustness synthesis epoch ≤ 1.5.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from timing import Stopwatch, synchronize  # this folder is on sys.path when run as a script

from xai_lightning import (
    AttributionCallback,
    ConceptWorldDataModule,
    DissectionCallback,
    ExplainerNetworkCallback,
    GradCAMCallback,
    ImageClassifier,
    RobustnessCallback,
    SmallCNN,
    TCAVCallback,
)

warnings.filterwarnings("ignore")
for _name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
    logging.getLogger(_name).setLevel(logging.ERROR)

TARGETS = {"gradcam": 1.05, "attribution": 1.10, "tcav": 1.10, "dissection": 1.10, "explainer": 1.3, "robustness": 1.5}


def make_callback(name: str) -> pl.Callback:
    if name == "gradcam":
        return GradCAMCallback(layers=["auto", "network.features.13"])
    if name == "attribution":
        return AttributionCallback(methods=["saliency", "integrated_gradients", "gradcam"])
    if name == "tcav":
        return TCAVCallback(layers=["network.features.13"], concepts=["striped", "dotted", "red"])
    if name == "dissection":
        return DissectionCallback(layers=["network.features.13", "network.features.20"])
    if name == "explainer":
        return ExplainerNetworkCallback("network.features.13", "network.features.20")
    if name == "robustness":
        return RobustnessCallback()
    raise ValueError(name)


class InsideTime(pl.Callback):
    """Wraps an observing callback's ``run`` (and the explainer's ``train_step``) to time them
    (``device`` synchronised at both ends: CUDA kernels still queued count where they were launched)."""

    def __init__(self, callback: pl.Callback, device: str = "cpu") -> None:
        self.seconds = 0.0
        self.device = device
        for method in ("run", "train_step"):
            original = getattr(callback, method, None)
            if original is not None:
                setattr(callback, method, self._timed(original))

    def _timed(self, function):
        def timed(*args, **kwargs):
            synchronize(self.device)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                synchronize(self.device)
                self.seconds += time.perf_counter() - start

        return timed


def one_epoch(datamodule, name: str | None, width: int, root: str, accelerator: str) -> tuple[float, float]:
    """``(epoch seconds, seconds inside the callback)`` of one epoch with callback ``name`` (None: none)."""
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(SmallCNN(num_classes=5, width=width))
    watch = Stopwatch()
    callbacks: list[pl.Callback] = [watch]
    inside = None
    if name is not None:
        callback = make_callback(name)
        inside = InsideTime(callback, accelerator)
        callbacks.append(callback)
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=callbacks,
        logger=CSVLogger(root),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        accelerator=accelerator,
        devices=1,
    )
    trainer.fit(model, datamodule)  # the Stopwatch synchronises the device at both ends
    return watch.elapsed, inside.seconds if inside is not None else 0.0


def machine_line(device: str) -> str:
    if device == "cuda":
        where = torch.cuda.get_device_name()
    else:
        where = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"machine: {where}; torch {torch.__version__}; {torch.get_num_threads()} torch threads; "
        f"load average at start {load:.1f}"
    )


Timings = dict[str | None, list[float]]  # per setting (None: no callback), one value per repeat


def measure(names: list[str], repeats: int, num_train: int, width: int, device: str) -> tuple[Timings, Timings]:
    """``(epoch seconds, seconds inside the callback)`` per setting: no callback, then each of ``names``
    alone, after one warm-up epoch each (allocator, thread pools, first-call imports), interleaved."""
    datamodule = ConceptWorldDataModule(num_train=num_train, num_val=500, batch_size=64)
    datamodule.setup("fit")
    settings: list[str | None] = [None, *names]
    epochs: Timings = {name: [] for name in settings}
    inside: Timings = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as root:
        for name in settings:
            one_epoch(datamodule, name, width, root, device)
        for _ in range(repeats):
            for name in settings:
                seconds, own = one_epoch(datamodule, name, width, root, device)
                epochs[name].append(seconds)
                inside[name].append(own)
    return epochs, inside


def print_table(epochs: Timings, inside: Timings, names: list[str], repeats: int, num_train: int, width: int) -> None:
    """The ratio table of :func:`measure`'s timings, headed by what was trained."""
    plain = statistics.median(epochs[None])
    print(
        f"SmallCNN(width={width}), {num_train} training + 500 validation ConceptWorld images, batch 64, "
        f"one epoch; medians of {repeats} interleaved repeats"
    )
    print(f"without callback: {plain:.2f} s (range {min(epochs[None]):.2f}-{max(epochs[None]):.2f})")
    print()
    print(
        "| callback | epoch (s) | ratio (median) | ratio range | inside callback (s) | (plain + inside) / plain "
        "| target |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in names:
        ratios = [seconds / base for seconds, base in zip(epochs[name], epochs[None])]
        own = statistics.median(inside[name])
        print(
            f"| {name} | {statistics.median(epochs[name]):.2f} | {statistics.median(epochs[name]) / plain:.3f} | "
            f"{min(ratios):.3f}-{max(ratios):.3f} | {own:.2f} | {(plain + own) / plain:.3f} | "
            f"≤ {TARGETS[name]} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--only", nargs="*", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args.device))
    epochs, inside = measure(args.only, args.repeats, args.num_train, args.width, args.device)
    print_table(epochs, inside, args.only, args.repeats, args.num_train, args.width)


if __name__ == "__main__":
    main()
