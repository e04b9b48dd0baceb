"""Epoch overhead of ExplanationQualityCallback on the reference ConceptWorld training.

One epoch of SmallCNN (width 32) on ConceptWorld (5,000 training, 1,000 validation images), with
and without ``ExplanationQualityCallback(methods=["saliency", "gradcam"], metrics=["deletion_auc",
"insertion_auc"], num_probe=16)`` at its default settings (16 steps per curve, 2 random maps), in the
same process, alternating the two settings over several repeats. The timed span is
``on_train_start`` → ``on_train_end`` (training, validation and the callback's epoch-end work); the
callback's own time per epoch is also reported, which is steadier than the end-to-end ratio.

    PYTHONPATH=. python experiments/benchmarks/quality_overhead.py [--repeats 3] [--threads 1]

Goal (issue 15): ratio <= 1.15.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from timing import Stopwatch  # this folder is on sys.path when run as a script

from xai_lightning import ConceptWorldDataModule, ExplanationQualityCallback, ImageClassifier, SmallCNN

warnings.filterwarnings("ignore")


class TimedQuality(ExplanationQualityCallback):
    """Also times its own observations."""

    run_seconds = 0.0

    def run(self, trainer, pl_module):
        start = time.perf_counter()
        try:
            return super().run(trainer, pl_module)
        finally:
            self.run_seconds += time.perf_counter() - start


def one_epoch(datamodule, with_callback: bool, root: str) -> tuple[float, float]:
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(SmallCNN(num_classes=5, width=32))
    watch = Stopwatch()
    callbacks: list[pl.Callback] = [watch]
    quality = (
        TimedQuality(methods=["saliency", "gradcam"], metrics=["deletion_auc", "insertion_auc"], num_probe=16)
        if with_callback
        else None
    )
    if quality is not None:
        callbacks.append(quality)
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=callbacks,
        logger=CSVLogger(root),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule)
    return watch.elapsed, getattr(quality, "run_seconds", 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-train", type=int, default=5000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    datamodule = ConceptWorldDataModule(num_train=args.num_train, num_val=1000, batch_size=64)
    datamodule.setup("fit")
    plain, observed, inside = [], [], []
    with tempfile.TemporaryDirectory() as root:
        one_epoch(datamodule, True, root)  # warm-up (allocator, thread pools, first-call costs)
        for _ in range(args.repeats):
            plain.append(one_epoch(datamodule, False, root)[0])
            seconds, callback = one_epoch(datamodule, True, root)
            observed.append(seconds)
            inside.append(callback)
    base = statistics.median(plain)
    ratios = [o / p for o, p in zip(observed, plain)]
    print(
        f"cpu x{args.threads} thread(s); {args.num_train} training + 1000 validation images; SmallCNN width 32; "
        "2 methods (saliency, gradcam) x 2 metrics (deletion_auc, insertion_auc), 16 probes, defaults"
    )
    print(f"one epoch without callback: median {base:.2f} s  ({', '.join(f'{t:.2f}' for t in plain)})")
    print(
        f"one epoch with the callback: median {statistics.median(observed):.2f} s  "
        f"({', '.join(f'{t:.2f}' for t in observed)})"
    )
    print(f"time inside the callback per epoch: median {statistics.median(inside):.3f} s")
    print(
        f"overhead ratio end to end: median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-"
        f"{max(ratios):.3f})   goal <= 1.15"
    )
    print(f"overhead ratio from the callback's own time: {(base + statistics.median(inside)) / base:.3f}")


if __name__ == "__main__":
    main()
