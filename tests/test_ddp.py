"""DDP (2 CPU processes, gloo, ddp_spawn) logs the same figures as a single process."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import quiet_trainer, small_datamodule
from pytorch_lightning.loggers import CSVLogger
from torch import nn

from xai_lightning import GradCAMCallback, ImageClassifier

pytestmark = pytest.mark.ddp


def frozen_network() -> nn.Module:
    """No BatchNorm (per-rank statistics would differ) — with lr=0 both runs keep identical weights."""
    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )
    return network


def logged_figures(tmp_path: Path, devices: int) -> list[dict[str, float]]:
    pl.seed_everything(0)
    model = ImageClassifier(frozen_network(), num_classes=5, lr=0.0, weight_decay=0.0)
    callback = GradCAMCallback(layers=["network.3", "network.6"], num_probe=13)  # 13: uneven shards
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
    rows = list(csv.DictReader(open(tmp_path / "run" / "version_0" / "metrics.csv")))
    figures = [
        {key: float(value) for key, value in row.items() if key.startswith("gradcam/") and value} for row in rows
    ]
    return [f for f in figures if f]


def test_two_process_ddp_logs_the_same_figures_as_one_process(tmp_path):
    single = logged_figures(tmp_path / "single", devices=1)
    double = logged_figures(tmp_path / "ddp", devices=2)
    assert len(single) == len(double) == 2
    for one, two in zip(single, double):
        assert one.keys() == two.keys()
        assert "gradcam/network.6/energy_in_mask" in one
        for key in one:
            assert two[key] == pytest.approx(one[key], abs=1e-5), key
    pngs = list((tmp_path / "ddp").glob("**/gradcam/grid/*.png"))
    assert len(pngs) == 2  # rank zero alone rendered and logged
