"""Overhead of GradCAMCallback on one epoch of the reference ConceptWorld training.

Trains SmallCNN for one epoch on ConceptWorld (5,000 training, 1,000 validation images) with and
without GradCAMCallback (64 probe images, two layers), in the same process, alternating the two
settings over several repeats, and prints the ratio of the median times. The timed span is
``on_train_start`` → ``on_train_end`` (training, validation, and the callback's epoch-end work);
the callback's one-time set-up (drawing the probe, resolving layers) is reported separately.

    python experiments/benchmarks/overhead.py [--repeats 3] [--logger wandb|csv]

Target (issue 2): ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from timing import Stopwatch  # this folder is on sys.path when run as a script

from xai_lightning import ConceptWorldDataModule, GradCAMCallback, ImageClassifier, SmallCNN

warnings.filterwarnings("ignore")


class TimedGradCAM(GradCAMCallback):
    """Also times its own set-up and observations, which is steadier than the end-to-end ratio."""

    run_seconds = 0.0

    def setup(self, trainer, pl_module, stage):
        start = time.perf_counter()
        super().setup(trainer, pl_module, stage)
        self.setup_seconds = time.perf_counter() - start

    def run(self, trainer, pl_module):
        start = time.perf_counter()
        try:
            return super().run(trainer, pl_module)
        finally:
            self.run_seconds += time.perf_counter() - start


def one_epoch(datamodule, with_callback: bool, logger_kind: str, root: str) -> tuple[float, float, float]:
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(SmallCNN(num_classes=5, width=32))
    watch = Stopwatch()
    callbacks: list[pl.Callback] = [watch]
    gradcam = TimedGradCAM(layers=["auto", "network.features.13"], num_probe=64) if with_callback else None
    if gradcam is not None:
        callbacks.append(gradcam)
    logger = WandbLogger(offline=True, save_dir=root, project="overhead") if logger_kind == "wandb" else CSVLogger(root)
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=callbacks,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule)
    if logger_kind == "wandb":
        logger.experiment.finish()
    return watch.elapsed, getattr(gradcam, "setup_seconds", 0.0), getattr(gradcam, "run_seconds", 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=5000)
    parser.add_argument("--logger", choices=["wandb", "csv"], default="wandb")
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    datamodule = ConceptWorldDataModule(num_train=args.num_train, num_val=1000, batch_size=64)
    datamodule.setup("fit")
    plain, observed, setups, runs = [], [], [], []
    with tempfile.TemporaryDirectory() as root:
        one_epoch(datamodule, False, args.logger, root)  # warm-up (allocator, thread pools)
        for _ in range(args.repeats):
            plain.append(one_epoch(datamodule, False, args.logger, root)[0])
            seconds, setup, run = one_epoch(datamodule, True, args.logger, root)
            observed.append(seconds)
            setups.append(setup)
            runs.append(run)
    base, with_cb = statistics.median(plain), statistics.median(observed)
    print(
        f"device: cpu x{torch.get_num_threads()} threads; logger: {args.logger}; "
        f"{args.num_train} training + 1000 validation images; 64 probe images, 2 layers"
    )
    print(f"one epoch without callback: median {base:.2f} s  ({', '.join(f'{t:.2f}' for t in plain)})")
    print(f"one epoch with GradCAMCallback: median {with_cb:.2f} s  ({', '.join(f'{t:.2f}' for t in observed)})")
    print(f"one-time callback setup: median {statistics.median(setups):.3f} s")
    print(f"time inside the callback per epoch: median {statistics.median(runs):.3f} s")
    print(f"overhead ratio (with / without), end to end: {with_cb / base:.3f}   (target <= 1.05; noisy)")
    print(f"overhead ratio from the callback's own time: {(base + statistics.median(runs)) / base:.3f}")


if __name__ == "__main__":
    main()
