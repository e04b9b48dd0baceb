"""UncertaintyCallback under DDP (2 CPU processes, gloo, ddp_spawn) logs the same figures as one process."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import quiet_trainer, small_datamodule
from pytorch_lightning.loggers import CSVLogger
from torch import nn

from xai_lightning import ImageClassifier, UncertaintyCallback

pytestmark = pytest.mark.ddp


def frozen_dropout_network() -> nn.Module:
    """No BatchNorm (per-rank statistics would differ); with lr=0 both runs keep identical weights. Dropout
    makes MC dropout available: its masks are keyed by image, so sharding must not change them."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(16, 5),
    )


def logged_figures(tmp_path: Path, devices: int) -> tuple[list[dict[str, float]], list[Path]]:
    pl.seed_everything(0)
    model = ImageClassifier(frozen_dropout_network(), num_classes=5, lr=0.0, weight_decay=0.0)
    # 13 and 11: uneven shards of both probes; familiarity trains on each rank's batches, gradients averaged.
    callback = UncertaintyCallback(num_probe=13, num_ood=11, mc_passes=5, familiarity="input", max_images=3)
    logger = CSVLogger(str(tmp_path), name="run", version=0)
    trainer = quiet_trainer(
        max_epochs=2,
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        callbacks=[callback],
        logger=logger,
        enable_checkpointing=False,
        deterministic=False,
    )
    trainer.fit(model, small_datamodule(num_train=128, num_val=40))
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    figures = [
        {key: float(value) for key, value in row.items() if key.startswith("uncertainty/") and value} for row in rows
    ]
    return [f for f in figures if f], sorted((tmp_path / "run").glob("**/uncertainty/*/*.png"))


def test_two_process_ddp_logs_the_same_figures_as_one_process(tmp_path):
    single, _ = logged_figures(tmp_path / "single", devices=1)
    double, pngs = logged_figures(tmp_path / "ddp", devices=2)
    assert len(single) == len(double) == 2
    for one, two in zip(single, double):
        assert one.keys() == two.keys()
        assert "uncertainty/ood/mc_dropout_mi/auroc" in one and "uncertainty/temperature" in one
        for key in one:
            if "reconstruction_error" in key or "familiarity" in key:
                # The autoencoder learns from per-rank half batches (averaged gradients) in the 2-process
                # run, from whole batches in one process: a different, equally valid trajectory.
                continue
            assert two[key] == pytest.approx(one[key], abs=1e-5), key
        assert two["uncertainty/familiarity/steps"] == one["uncertainty/familiarity/steps"] / 2
        assert 0 <= two["uncertainty/ood/reconstruction_error/auroc"] <= 1
    assert len(pngs) == 2 * 3  # rank zero alone rendered: reliability, most and least certain, per epoch
