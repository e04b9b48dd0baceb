"""Epoch overhead of the training-dynamics callbacks at their default settings.

Trains SmallCNN (width 32) on ConceptWorld (``--num-train``/``--num-val``: 2,000 training and 500 validation
images, as the dynamics experiment; ConceptWorldDataModule's defaults are 5,000 and 1,000; batch 64)
for ``--epochs`` epochs bare and with each of FrequencyCallback, EmbeddingCallback,
MarginCallback and InformationPlaneCallback attached alone, at their defaults (every epoch,
256 probe images; t-SNE at its epochs — by default the last — and deep k-NN every 5th epoch and at the last), the
settings interleaved over ``--repeats`` repeats in one process so that load drifts hit all alike.
Per epoch it times ``on_train_epoch_start`` → ``on_train_epoch_end`` (training, validation and the
callbacks' epoch-end work) and, separately, the time spent inside the callback's observation.

Reported per callback: the ratio of its *regular* epochs (every epoch but the first, which
warms up, and the last, which carries t-SNE / deep k-NN) to the bare epochs (all but the first),
as median and range over the repeats, end to end (median over the regular epochs) and from the
callback's own time (its *mean* over the regular epochs: the figures, drawn every 5th
observation by default, are then counted at their share — with the default 7 epochs the regular
epochs 1-5 hold one figure epoch, 5, as every 5 epochs of a longer run do); and the last epoch's
ratio. Targets (issue 19): Frequency ≤ 1.05, Embedding (PCA) ≤ 1.05, Margin ≤ 1.3,
InformationPlane ≤ 1.2. The reference is the bare epoch of the same run.

    PYTHONPATH=. python experiments/benchmarks/dynamics_overhead.py [--repeats 3] [--epochs 7] [--clock cpu]

Timings on a shared machine are noisy: re-measure on a quiet one before quoting them. ``--clock cpu``
times the process's CPU seconds (``time.process_time``) instead of wall seconds: on a CPU run with
one thread and no loader workers that leaves out the time other processes take the core away, so
ratios measured on a busy machine come close to the quiet machine's (not for CUDA runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from timing import synchronize  # this folder is on sys.path when run as a script

from xai_lightning import (
    ConceptWorldDataModule,
    EmbeddingCallback,
    FrequencyCallback,
    ImageClassifier,
    InformationPlaneCallback,
    MarginCallback,
    SmallCNN,
)

warnings.filterwarnings("ignore")

TARGETS = {"frequency": 1.05, "embedding": 1.05, "margin": 1.3, "information_plane": 1.2}
FACTORIES = {
    "frequency": FrequencyCallback,
    "embedding": lambda: EmbeddingCallback(factor="colour"),
    "margin": MarginCallback,
    "information_plane": InformationPlaneCallback,
}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class EpochClock(pl.Callback):
    """Time (by ``clock``) of every training epoch, validation and epoch-end callbacks included
    (attach last); the model's device synchronised at both ends."""

    def __init__(self, clock=time.perf_counter) -> None:
        self.seconds: list[float] = []
        self.clock = clock

    def on_train_epoch_start(self, trainer, pl_module):
        synchronize(pl_module.device)
        self.start = self.clock()

    def on_train_epoch_end(self, trainer, pl_module):
        synchronize(pl_module.device)
        self.seconds.append(self.clock() - self.start)


def time_observations(callback, clock=time.perf_counter) -> list[float]:
    """Wrap ``callback.run`` to record the seconds (by ``clock``) each observation takes (the model's
    device synchronised at both ends); returns the list it fills."""
    seconds: list[float] = []
    original = callback.run

    def run(trainer, pl_module):
        synchronize(pl_module.device)
        start = clock()
        try:
            return original(trainer, pl_module)
        finally:
            synchronize(pl_module.device)
            seconds.append(clock() - start)

    callback.run = run
    return seconds


def fit(
    datamodule, name: str | None, epochs: int, root: str, device: str = "cpu", clock_name: str = "wall"
) -> tuple[list[float], list[float]]:
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(SmallCNN(num_classes=5, width=32))
    clock = EpochClock(CLOCKS[clock_name])
    callbacks: list[pl.Callback] = []
    observed: list[float] = []
    if name is not None:
        callback = FACTORIES[name]()
        observed = time_observations(callback, CLOCKS[clock_name])
        callbacks.append(callback)
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[*callbacks, clock],
        logger=CSVLogger(root),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        accelerator=device,
        devices=1,
    )
    trainer.fit(model, datamodule)
    return clock.seconds, observed


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


@dataclass
class Overheads:
    """Per repeat: the bare epoch (s) and, per callback, the ratios the table reports."""

    bare: list[float] = field(default_factory=list)
    regular: dict[str, list[float]] = field(default_factory=dict)
    last: dict[str, list[float]] = field(default_factory=dict)
    own: dict[str, list[float]] = field(default_factory=dict)  # mean over regular epochs: figures, k-NN at their share
    own_median: dict[str, list[float]] = field(default_factory=dict)  # the typical epoch without them


def measure(
    names: list[str],
    repeats: int,
    epochs: int,
    num_train: int,
    device: str = "cpu",
    clock_name: str = "wall",
    num_val: int = 500,
) -> Overheads:
    """Bare fits and fits with each callback of ``names`` alone, interleaved over ``repeats``."""
    datamodule = ConceptWorldDataModule(num_train=num_train, num_val=num_val, batch_size=64)
    datamodule.setup("fit")
    found = Overheads(
        regular={n: [] for n in names},
        last={n: [] for n in names},
        own={n: [] for n in names},
        own_median={n: [] for n in names},
    )
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(repeats):
            seconds, _ = fit(datamodule, None, epochs, root, device, clock_name)
            base = statistics.median(seconds[1:])
            found.bare.append(base)
            for name in names:
                seconds, observed = fit(datamodule, name, epochs, root, device, clock_name)
                found.regular[name].append(statistics.median(seconds[1:-1]) / base)
                found.last[name].append(seconds[-1] / base)
                found.own[name].append((base + statistics.mean(observed[1:-1])) / base)
                found.own_median[name].append((base + statistics.median(observed[1:-1])) / base)
            print(f"repeat {repeat + 1}/{repeats} done", flush=True)
    return found


def print_table(
    found: Overheads, names: list[str], repeats: int, epochs: int, num_train: int, where: str, num_val: int = 500
) -> None:
    """The ratio table of :func:`measure`'s result; ``where`` names the device (e.g. ``cpu x1 threads``)."""
    print(
        f"device: {where}; SmallCNN width 32; {num_train} training + {num_val} "
        f"validation images, batch 64; {epochs} epochs per fit, {repeats} repeat(s), interleaved"
    )
    print(f"bare epoch: median {summary(found.bare)} s")
    headers = ("regular epoch ratio", "own time, mean", "own time, median", "last epoch ratio")
    print(f"{'callback':>18}  " + "  ".join(f"{h:>26}" for h in headers) + "  target")
    for name in names:
        print(
            f"{name:>18}  {summary(found.regular[name]):>26}  {summary(found.own[name]):>26}  "
            f"{summary(found.own_median[name]):>26}  {summary(found.last[name]):>26}  <= {TARGETS[name]}"
        )
    print(
        "Ratios are median [min, max] over repeats; own time = (bare epoch + the callback's seconds) / bare epoch, its "
        "mean over the regular epochs counting figures and deep k-NN at their share, its median the typical epoch "
        "without them. A shared machine makes them noisy — re-measure on a quiet one."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=7, help=">= 3: warm-up, regular epochs, last epoch")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=500)
    parser.add_argument("--only", nargs="*", choices=sorted(FACTORIES), default=sorted(FACTORIES))
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall seconds, or the process's CPU seconds (busy machines)",
    )
    args = parser.parse_args()
    if args.epochs < 3:
        parser.error("--epochs must be >= 3 (the first warms up, the last carries t-SNE / deep k-NN)")
    found = measure(args.only, args.repeats, args.epochs, args.num_train, clock_name=args.clock, num_val=args.num_val)
    print_table(
        found,
        args.only,
        args.repeats,
        args.epochs,
        args.num_train,
        f"cpu x{torch.get_num_threads()} threads, {args.clock} clock",
        args.num_val,
    )


if __name__ == "__main__":
    main()
