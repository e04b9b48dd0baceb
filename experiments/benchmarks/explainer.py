"""Cost of ExplainerNetworkCallback (Zhang et al. 2018) and of knowledge_consistency (Liang et al. 2019).

1. Training: one epoch of SmallCNN (width 16) on ConceptWorld with and without
   ExplainerNetworkCallback (input ``features.13``, target ``features.20``, 16 filters,
   ``steps_per_batch`` explainer steps per training step, 64 probe images), in the same process,
   alternating the two settings over several repeats after a warm-up; prints the ratio of the
   median times. The timed span is ``on_train_start`` → ``on_train_end`` (training, validation and
   the callback's epoch-end evaluation); the time spent inside the callback's training steps and
   inside its evaluation is also reported, as a steadier ratio.
2. Evaluation: one evaluation of the explainer on the probe set (``evaluate_explainer``: the
   performer's forward with the layer captured, the explainer, the performer's upper layers on the
   reconstruction, peaks, location instability) against a bare forward pass of the performer on
   the same images; and the callback's whole observation (``run``: evaluation, the activation-map
   image and the per-filter table).
3. Knowledge consistency: a typical call, ``knowledge_consistency`` of two SmallCNNs at
   ``features.13`` (order 2, 400 Adam steps, 512 fitting and 256 held-out images), against a bare
   forward pass of both models on those images.

    python experiments/benchmarks/explainer.py [--repeats 3] [--steps-per-batch 1] [--logger csv|wandb]

Target (issue 7): training ratio <= 1.5 at steps_per_batch=1.
"""

from __future__ import annotations

import argparse
import logging
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
from timing import Stopwatch, median_seconds  # this folder is on sys.path when run as a script

from xai_lightning import ConceptWorld, ConceptWorldDataModule, ExplainerNetworkCallback, ImageClassifier, SmallCNN
from xai_lightning.explainer import evaluate_explainer, knowledge_consistency

warnings.filterwarnings("ignore")
for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
    logging.getLogger(name).setLevel(logging.ERROR)
INPUT, TARGET = "network.features.13", "network.features.20"


class TimedExplainer(ExplainerNetworkCallback):
    """Also times its own training steps and observations."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_seconds = 0.0
        self.run_seconds = 0.0

    def train_step(self, trainer, features, target):
        start = time.perf_counter()
        try:
            super().train_step(trainer, features, target)
        finally:
            self.train_seconds += time.perf_counter() - start

    def run(self, trainer, pl_module):
        start = time.perf_counter()
        try:
            return super().run(trainer, pl_module)
        finally:
            self.run_seconds += time.perf_counter() - start


def one_epoch(datamodule, steps_per_batch: int | None, logger_kind: str, root: str):
    """Seconds for one epoch; with a callback (``steps_per_batch`` not None) also the callback and trainer."""
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(SmallCNN(num_classes=5, width=16), lr=3e-3)
    watch = Stopwatch()
    callbacks: list[pl.Callback] = [watch]
    explainer = None
    if steps_per_batch is not None:
        explainer = TimedExplainer(INPUT, TARGET, num_filters=16, steps_per_batch=steps_per_batch, num_probe=64)
        callbacks.append(explainer)
    logger = (
        WandbLogger(offline=True, save_dir=root, project="explainer-benchmark")
        if logger_kind == "wandb"
        else CSVLogger(root)
    )
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=callbacks,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule)
    if logger_kind == "wandb":
        logger.experiment.finish()
    return watch.elapsed, explainer, trainer, model


def training(args, root: str):
    datamodule = ConceptWorldDataModule(num_train=args.num_train, num_val=500, batch_size=64)
    datamodule.setup("fit")
    one_epoch(datamodule, None, args.logger, root)  # warm-up (allocator, thread pools)
    one_epoch(datamodule, args.steps_per_batch, args.logger, root)
    plain, observed, inside_train, inside_run = [], [], [], []
    for _ in range(args.repeats):
        plain.append(one_epoch(datamodule, None, args.logger, root)[0])
        seconds, explainer, trainer, model = one_epoch(datamodule, args.steps_per_batch, args.logger, root)
        observed.append(seconds)
        inside_train.append(explainer.train_seconds)
        inside_run.append(explainer.run_seconds)
    base, with_cb = statistics.median(plain), statistics.median(observed)
    steps = explainer.steps
    print(
        f"1. training: SmallCNN width 16, {args.num_train} training + 500 validation ConceptWorld images, batch 64, "
        f"one epoch; explainer {INPUT} -> {TARGET}, 16 filters, steps_per_batch={args.steps_per_batch} "
        f"({steps} explainer steps), 64 probe images; logger {args.logger}"
    )
    print(f"   one epoch without callback: median {base:.2f} s  ({', '.join(f'{t:.2f}' for t in plain)})")
    print(
        f"   one epoch with ExplainerNetworkCallback: median {with_cb:.2f} s  "
        f"({', '.join(f'{t:.2f}' for t in observed)})"
    )
    train_seconds, run_seconds = statistics.median(inside_train), statistics.median(inside_run)
    print(
        f"   inside the callback: training steps {train_seconds:.2f} s ({1000 * train_seconds / steps:.1f} ms per "
        f"explainer step), evaluation {run_seconds:.2f} s"
    )
    print(f"   ratio (with / without), end to end: {with_cb / base:.3f}   (target <= 1.5 at steps_per_batch=1; noisy)")
    print(f"   ratio from the callback's own time: {(base + train_seconds + run_seconds) / base:.3f}")
    return explainer, trainer, model


def evaluation(explainer, trainer, model, repeats: int) -> None:
    probe = explainer.probe
    module = model.eval()

    def bare_forward():
        with torch.no_grad():
            module(probe.images)

    def evaluate():
        evaluate_explainer(
            module,
            explainer.explainer,
            INPUT,
            TARGET,
            probe.images,
            labels=probe.labels,
            landmarks=explainer.landmarks,
            top_k=explainer.top_k,
        )

    forward = median_seconds(bare_forward, repeats)
    evaluated = median_seconds(evaluate, repeats)
    observation = median_seconds(lambda: explainer.run(trainer, model), repeats)
    print(f"2. evaluation on the {len(probe)} probe images")
    print(
        f"   bare forward {1000 * forward:.1f} ms; evaluate_explainer {1000 * evaluated:.1f} ms "
        f"(ratio {evaluated / forward:.1f}); the callback's whole observation (with image and table) "
        f"{1000 * observation:.1f} ms"
    )


def consistency(repeats: int) -> None:
    torch.manual_seed(0)
    model_a, model_b = SmallCNN(num_classes=5, width=16).eval(), SmallCNN(num_classes=5, width=16).eval()
    images = ConceptWorld(num_samples=768, seed=3).images
    fit, held_out = images[:512], images[512:]
    layer = "features.13"

    def bare_forward():
        with torch.no_grad():
            for network in (model_a, model_b):
                network(images)

    def measure():
        knowledge_consistency(model_a, layer, model_b, layer, fit, eval_images=held_out, order=2, steps=400)

    forward = median_seconds(bare_forward, repeats)
    seconds = median_seconds(measure, max(1, repeats - 1))
    print(
        f"3. knowledge_consistency: two SmallCNNs (width 16) at {layer} (32 x 16 x 16), order 2, 400 steps of "
        f"batch 64, 512 fitting + 256 held-out images"
    )
    print(
        f"   {seconds:.2f} s ({1000 * seconds / 400:.1f} ms per step); bare forward of both models on the 768 "
        f"images {1000 * forward:.0f} ms (ratio {seconds / forward:.0f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--steps-per-batch", type=int, default=1)
    parser.add_argument("--logger", choices=["wandb", "csv"], default="csv")
    parser.add_argument("--skip", nargs="*", default=[], choices=["training", "consistency"])
    args = parser.parse_args()
    print(f"device: cpu x{torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as root:
        if "training" not in args.skip:
            explainer, trainer, model = training(args, root)
            evaluation(explainer, trainer, model, args.repeats)
        if "consistency" not in args.skip:
            consistency(args.repeats)


if __name__ == "__main__":
    main()
