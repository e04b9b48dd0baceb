"""DissectionCallback: observing without disturbing, what lands in W&B, resume, DDP, bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import (
    assert_bit_identical,
    quiet_trainer,
    read_wandb_history,
    small_classifier,
    small_datamodule,
    train_weights,
    wandb_run_dir,
)
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from torch import nn

from xai_lightning import ConceptWorld, DigitsDataModule, DissectionCallback, ImageClassifier
from xai_lightning.dissection import ConceptLabels, dissect, vocabulary_from_dataset

LAYER = "network.features.13"


def test_training_with_dissection_gives_bit_identical_weights(tmp_path):
    callback = DissectionCallback(layers=[LAYER, "network.features.6"], num_probe=24, max_batch=10)
    with_callback = train_weights(tmp_path / "a", [callback], epochs=2, dropout=0.3)
    without = train_weights(tmp_path / "b", [], epochs=2, dropout=0.3)
    assert len(callback.history) == 2 and not callback.failures  # it did run, twice
    assert_bit_identical(with_callback, without)


def test_logged_scalars_table_and_images_read_back_from_wandb(tmp_path, wandb_dir):
    pl.seed_everything(0)
    model = small_classifier(width=8)
    datamodule = small_datamodule(num_train=128, num_val=48)
    callback = DissectionCallback(layers=LAYER, num_probe=40, top_units=3, top_images=2)
    logger = WandbLogger(offline=True, save_dir=str(wandb_dir), project="dissection")
    trainer = quiet_trainer(max_epochs=2, callbacks=[callback], logger=logger, enable_checkpointing=False)
    trainer.fit(model, datamodule)
    logger.experiment.finish()
    history = read_wandb_history(wandb_run_dir(wandb_dir))
    prefix = f"dissection/{LAYER}"
    scalar_rows = [h for h in history if f"{prefix}/mean_best_iou" in h]
    assert len(scalar_rows) == 2
    for category in ("object", "texture", "colour", "scene", "part"):
        assert f"{prefix}/interpretable_fraction/{category}" in scalar_rows[-1]
    for key, value in callback.history[-1].items():
        if key.startswith(prefix):
            assert scalar_rows[-1][key] == pytest.approx(value), key
    tables = [h for h in history if f"{prefix}/units._type" in h]
    assert (
        len(tables) == 2 and tables[-1][f"{prefix}/units.nrows"] == 16
    )  # one row per unit of features.13 (2 x width 8)
    images = [h for h in history if f"{prefix}/top_units.filenames" in h]
    assert len(images) == 2 and "top units by IoU" in images[-1][f"{prefix}/top_units.captions"][0]
    grid = np.asarray(Image.open(wandb_run_dir(wandb_dir) / "files" / images[-1][f"{prefix}/top_units.filenames"][0]))
    assert np.all(grid[..., :3] == (255, 230, 0), axis=-1).any()  # the thresholded masks are outlined

    # Independent check: dissecting the final model directly on the same probe gives the logged numbers.
    probe = callback.probe
    vocabulary, channels = vocabulary_from_dataset(trainer.datamodule.val_dataloader().dataset)
    model.eval()
    direct = dissect(
        model, LAYER, probe.images, ConceptLabels.from_masks(probe.masks[:, channels], vocabulary), vocabulary
    )[LAYER]
    assert torch.equal(direct.iou, callback.results[LAYER].iou)
    assert scalar_rows[-1][f"{prefix}/mean_best_iou"] == pytest.approx(float(direct.best_iou.mean()))
    assert scalar_rows[-1][f"{prefix}/interpretable"] == float(direct.interpretable.sum())


@pytest.mark.parametrize(
    "options, method",
    [
        (dict(threshold_method="sketch"), "sketch"),
        (dict(max_kept_mib=0.0), "sketch"),  # auto: nothing fits
        (dict(), "exact"),
    ],
)  # auto: 40 images fit easily
def test_threshold_methods_give_what_dissect_gives_with_that_method(tmp_path, options, method):
    pl.seed_everything(0)
    model = small_classifier(width=8)
    callback = DissectionCallback(layers=[LAYER, "network.features.6"], num_probe=40, max_batch=16, **options)
    trainer = quiet_trainer(
        max_epochs=1, callbacks=[callback], logger=CSVLogger(str(tmp_path)), enable_checkpointing=False
    )
    trainer.fit(model, small_datamodule(num_train=64, num_val=48))
    assert not callback.failures
    probe = callback.probe
    vocabulary, channels = vocabulary_from_dataset(trainer.datamodule.val_dataloader().dataset)
    labels = ConceptLabels.from_masks(probe.masks[:, channels], vocabulary)
    model.eval()
    for layer in (LAYER, "network.features.6"):
        logged = callback.results[layer]
        assert logged.method == method
        direct = dissect(model, layer, probe.images, labels, vocabulary, method=method)[layer]
        assert torch.equal(direct.thresholds, logged.thresholds) and torch.equal(direct.iou, logged.iou)
    exact = dissect(model, LAYER, probe.images, labels, vocabulary, method="exact")[LAYER]
    if method == "sketch":
        # A probe this small: each unit's top q·n values take less memory than the sketch's buckets, so
        # the first pass keeps those (threshold_estimator) and the thresholds are exact.
        assert torch.equal(exact.thresholds, callback.results[LAYER].thresholds)


def test_history_survives_resume_from_checkpoint(tmp_path):
    def fit(epochs: int, ckpt_path: str | None) -> DissectionCallback:
        pl.seed_everything(0)
        callback = DissectionCallback(layers=LAYER, num_probe=16)
        checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
        trainer = quiet_trainer(
            max_epochs=epochs, callbacks=[callback, checkpoint], logger=CSVLogger(str(tmp_path), name="run")
        )
        trainer.fit(small_classifier(width=8), small_datamodule(num_train=64, num_val=16), ckpt_path=ckpt_path)
        return callback

    first = fit(2, None)
    resumed = fit(3, str(tmp_path / "ckpt" / "last.ckpt"))
    assert [row["epoch"] for row in resumed.history] == [0.0, 1.0, 2.0]
    assert resumed.history[:2] == first.history


# --------------------------------------------------------------------------- DDP


def frozen_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 5),
    )


def dissected_in_processes(
    tmp_path: Path, devices: int, threshold_method: str = "exact"
) -> tuple[list[dict[str, float]], list[list[str]]]:
    pl.seed_everything(0)
    model = ImageClassifier(frozen_network(), num_classes=5, lr=0.0, weight_decay=0.0)
    callback = DissectionCallback(
        layers=["network.1", "network.4"],
        num_probe=23,
        max_batch=5,  # uneven shards
        threshold_method=threshold_method,
    )
    trainer = quiet_trainer(
        max_epochs=1,
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        callbacks=[callback],
        logger=CSVLogger(str(tmp_path), name="run", version=0),
        enable_checkpointing=False,
        deterministic=False,
    )
    trainer.fit(model, small_datamodule(num_train=64, num_val=30))
    rows = list(csv.DictReader(open(tmp_path / "run" / "version_0" / "metrics.csv")))
    scalars = [{k: float(v) for k, v in row.items() if k.startswith("dissection/") and v} for row in rows]
    tables = sorted((tmp_path / "run" / "version_0").glob("**/network.4/units/*.csv"))
    assert len(tables) == 1
    return [s for s in scalars if s], list(csv.reader(open(tables[0])))


@pytest.mark.ddp
@pytest.mark.parametrize("threshold_method", ["exact", "sketch"])
def test_two_process_ddp_gives_the_same_dissection_as_one_process(tmp_path, threshold_method):
    single, single_table = dissected_in_processes(tmp_path / "one", devices=1, threshold_method=threshold_method)
    double, double_table = dissected_in_processes(tmp_path / "two", devices=2, threshold_method=threshold_method)
    assert len(single) == len(double) == 1
    assert single[0].keys() == double[0].keys() and "dissection/network.4/mean_best_iou" in single[0]
    for key, value in single[0].items():
        assert double[0][key] == pytest.approx(value, abs=1e-12), key
    assert single_table == double_table  # every unit's concept, IoU and threshold
    assert any(float(row[3]) > 0 for row in single_table[1:])


# --------------------------------------------------------------------------- bad input, at setup


class _MasksOfAnotherSize(torch.utils.data.Dataset):
    def __init__(self, inner) -> None:
        self.inner = inner
        self.concept_names = inner.concept_names
        self.concept_categories = inner.concept_categories

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index):
        item = dict(self.inner[index])
        item["masks"] = item["masks"][:, ::2, ::2]
        return item


def _fit_expecting(tmp_path, callback, datamodule, match: str) -> None:
    trainer = quiet_trainer(
        max_epochs=1, callbacks=[callback], logger=CSVLogger(str(tmp_path)), enable_checkpointing=False
    )
    model = small_classifier(width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        trainer.fit(model, datamodule)
    assert trainer.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # failed before training


def test_masks_of_another_size_than_the_images_fail_at_setup_naming_both_shapes(tmp_path):
    datamodule = small_datamodule(num_train=32, num_val=16)
    datamodule.setup("fit")
    wrong = _MasksOfAnotherSize(datamodule.val_dataloader().dataset)
    loader = torch.utils.data.DataLoader(wrong, batch_size=8)
    trainer = quiet_trainer(
        max_epochs=1,
        callbacks=[DissectionCallback(layers=LAYER, num_probe=8)],
        logger=CSVLogger(str(tmp_path)),
        enable_checkpointing=False,
    )
    with pytest.raises(ValueError, match=r"\(8, 23, 16, 16\).*\(8, 3, 32, 32\)"):
        trainer.fit(small_classifier(width=8), train_dataloaders=datamodule.train_dataloader(), val_dataloaders=loader)
    assert trainer.global_step == 0


def test_a_layer_without_spatial_output_fails_at_setup(tmp_path):
    _fit_expecting(
        tmp_path,
        DissectionCallback(layers="network.classifier", num_probe=8),
        small_datamodule(num_train=32, num_val=16),
        "network.classifier.*no spatial",
    )


def test_data_without_concept_masks_fails_at_setup(tmp_path):
    trainer = quiet_trainer(
        max_epochs=1,
        callbacks=[DissectionCallback(layers="auto", num_probe=8)],
        logger=CSVLogger(str(tmp_path)),
        enable_checkpointing=False,
    )
    model = ImageClassifier(
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)),
        num_classes=10,
    )
    with pytest.raises(ValueError, match="masks"):
        trainer.fit(model, DigitsDataModule(batch_size=32))
    assert trainer.global_step == 0


def test_a_concept_without_pixels_is_warned_and_counted_not_divided_by_zero(tmp_path):
    # Circles only: circles have no corners, so part/corner has no pixel anywhere in the probe.
    datamodule = small_datamodule(num_train=32, num_val=24)
    datamodule.setup("fit")
    datamodule.val_set = ConceptWorld(24, seed=5, shapes=("circle",))
    callback = DissectionCallback(layers=LAYER, num_probe=24)
    trainer = quiet_trainer(
        max_epochs=1, callbacks=[callback], logger=CSVLogger(str(tmp_path)), enable_checkpointing=False
    )
    with pytest.warns(UserWarning, match=r"\['part/corner'\] have no pixel"):
        trainer.fit(small_classifier(width=8), datamodule)
    assert not callback.failures
    assert callback.history[-1][f"dissection/{LAYER}/empty_concepts"] == 1.0
    result = callback.results[LAYER]
    corner = result.vocabulary.index("part/corner")
    assert torch.all(result.iou[:, corner] == 0) and torch.isfinite(result.iou).all()
    assert not bool((result.best_concept == corner).any())


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(threshold_method="median"), "threshold_method must be 'auto', 'exact' or 'sketch'"),
        (dict(max_kept_mib=-1.0), "max_kept_mib must be >= 0"),
        (dict(sketch_accuracy=0.0), r"sketch_accuracy must be in \(0, 1\)"),
        (dict(quantile=1.5), r"quantile must be in \(0, 1\)"),
    ],
)
def test_bad_settings_fail_at_construction_naming_the_setting(options, match):
    with pytest.raises(ValueError, match=match):
        DissectionCallback(layers=LAYER, **options)
