"""GradCAMCallback end to end: what it logs (read back from disk), resume, errors at setup, failures."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
from conftest import quiet_trainer, read_wandb_history, small_classifier, small_datamodule, wandb_run_dir
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xai_lightning import GradCAMCallback, ImageClassifier, LayerNotFoundError

SCALARS = ("energy_in_mask", "energy_in_mask_uniform", "pointing_game", "empty_maps")


def fit(tmp_path, callback, logger=None, epochs=2, model=None, datamodule=None, **trainer_kwargs):
    pl.seed_everything(0)
    model = model or small_classifier()
    trainer = quiet_trainer(
        max_epochs=epochs,
        callbacks=[callback],
        logger=logger or CSVLogger(str(tmp_path)),
        default_root_dir=str(tmp_path),
        **trainer_kwargs,
    )
    trainer.fit(model, datamodule or small_datamodule())
    return trainer, model


def test_wandb_offline_run_has_one_grid_and_the_scalars_per_epoch(tmp_path):
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="gradcam-test")
    callback = GradCAMCallback(layers="auto", num_probe=8)
    fit(tmp_path, callback, logger=logger, epochs=2)
    logger.experiment.finish()
    run = wandb_run_dir(tmp_path)
    history = read_wandb_history(run)
    grids = [h for h in history if "gradcam/grid.filenames" in h]
    assert len(grids) == 2
    # 256 images / batch 32 = 8 steps per epoch; Lightning logs an epoch's metrics at its last step (7, 15)
    assert [g["trainer/global_step"] for g in grids] == [7, 15]
    for grid in grids:
        png = Image.open(run / "files" / grid["gradcam/grid.filenames"][0])
        assert png.format == "PNG" and np.asarray(png).shape[2] in (3, 4)
    scalars = [h for h in history if "gradcam/network.features/energy_in_mask" in h]
    assert len(scalars) == 2
    for name in SCALARS:
        assert all(f"gradcam/network.features/{name}" in h for h in scalars)
    assert "gradcam/network.features/stability" not in scalars[0]  # nothing to compare with yet
    assert -1 <= scalars[1]["gradcam/network.features/stability"] <= 1


def test_tensorboard_events_have_the_grid_and_scalars_per_epoch(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path))
    fit(tmp_path, GradCAMCallback(layers="network.features.13", num_probe=8), logger=logger, epochs=2)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    grids = events.Images("gradcam/grid")
    assert [g.step for g in grids] == [7, 15]
    assert Image.open(io.BytesIO(grids[0].encoded_image_string)).size[0] > 100
    for name in SCALARS:
        assert len(events.Scalars(f"gradcam/network.features.13/{name}")) == 2
    assert len(events.Scalars("gradcam/network.features.13/stability")) == 1


def test_csv_logger_gets_metrics_and_png_files(tmp_path):
    logger = CSVLogger(str(tmp_path))
    callback = GradCAMCallback(layers=["auto", "network.features.6"], num_probe=8)
    fit(tmp_path, callback, logger=logger, epochs=2)
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    logged = [r for r in rows if r.get("gradcam/network.features.6/energy_in_mask")]
    assert len(logged) == 2
    pngs = sorted((Path(logger.log_dir) / "xai" / "gradcam" / "grid").glob("*.png"))
    assert [p.name for p in pngs] == ["step_00000007.png", "step_00000015.png"]
    assert np.asarray(Image.open(pngs[0])).dtype == np.uint8
    assert len(callback.history) == 2 and callback.history[1]["epoch"] == 1.0
    for record in callback.history:
        assert 0 <= record["gradcam/network.features.6/energy_in_mask_uniform"] <= 1


def test_localisation_scores_match_a_direct_computation(tmp_path):
    from xai_lightning import grad_cam
    from xai_lightning.evaluation import energy_in_mask

    callback = GradCAMCallback(layers="network.features.13", num_probe=12)
    trainer, model = fit(tmp_path, callback, epochs=1)
    probe = callback.probe
    maps = grad_cam(model, probe.images, "label", "network.features.13", labels=probe.labels).maps
    expected = energy_in_mask(maps["network.features.13"], probe.object_masks)
    assert callback.history[0]["gradcam/network.features.13/energy_in_mask"] == pytest.approx(
        float(expected[~expected.isnan()].mean()), abs=1e-6
    )


def test_history_and_previous_maps_survive_a_checkpoint_resume(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = GradCAMCallback(layers="network.features.13", num_probe=8)
    pl.seed_everything(0)
    trainer = quiet_trainer(max_epochs=2, callbacks=[first, checkpoint], logger=CSVLogger(str(tmp_path)))
    trainer.fit(small_classifier(), small_datamodule())
    resumed = GradCAMCallback(layers="network.features.13", num_probe=8)
    trainer = quiet_trainer(
        max_epochs=3, callbacks=[resumed, ModelCheckpoint(dirpath=tmp_path / "ckpt2")], logger=CSVLogger(str(tmp_path))
    )
    trainer.fit(small_classifier(), small_datamodule(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [h["epoch"] for h in resumed.history] == [0.0, 1.0, 2.0]
    assert resumed.history[:2] == first.history
    # The epoch-2 stability compares with the epoch-1 maps restored from the checkpoint.
    assert "gradcam/network.features.13/stability" in resumed.history[2]


def test_trainer_validate_runs_the_callback_under_inference_mode(tmp_path):
    callback = GradCAMCallback(num_probe=8)
    datamodule = small_datamodule()
    trainer = quiet_trainer(callbacks=[callback], logger=CSVLogger(str(tmp_path)))
    trainer.validate(small_classifier(), datamodule)
    assert len(callback.history) == 1 and "gradcam/network.features/energy_in_mask" in callback.history[0]


def test_fast_dev_run_observes_but_logs_nothing(tmp_path):
    callback = GradCAMCallback(num_probe=4)
    trainer = quiet_trainer(fast_dev_run=True, callbacks=[callback], default_root_dir=str(tmp_path))
    trainer.fit(small_classifier(), small_datamodule())
    assert len(callback.history) == 1 and not callback.failures
    assert not list(tmp_path.glob("**/*.png"))


class CountingClassifier(ImageClassifier):
    """Counts training steps, to prove errors come before the first one."""

    steps = 0

    def training_step(self, batch, batch_idx):
        CountingClassifier.steps += 1
        return super().training_step(batch, batch_idx)


def counting_model(**kwargs):
    from xai_lightning import SmallCNN

    CountingClassifier.steps = 0
    return CountingClassifier(SmallCNN(num_classes=5, width=4), **kwargs)


def expect_setup_error(tmp_path, callback, match, model=None, logger=None, datamodule=None, fit_kwargs=None):
    model = model or counting_model()
    trainer = quiet_trainer(
        max_epochs=1, callbacks=[callback], logger=CSVLogger(str(tmp_path)) if logger is None else logger
    )
    with pytest.raises(Exception, match=match) as error:
        trainer.fit(model, datamodule=datamodule, **(fit_kwargs or {}))
    assert CountingClassifier.steps == 0
    return error.value


def test_unknown_layer_fails_at_setup_listing_valid_names(tmp_path):
    error = expect_setup_error(
        tmp_path, GradCAMCallback(layers="network.features.99"), "Unknown layer", datamodule=small_datamodule()
    )
    assert isinstance(error, LayerNotFoundError)
    assert "network.features.13" in str(error) and "Did you mean" in str(error)


class FlatClassifier(CountingClassifier):
    """An MLP on flattened images: no 4-D activations anywhere."""


def test_auto_on_a_model_without_spatial_layers_fails_at_setup(tmp_path):
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.ReLU(), nn.Linear(16, 5))
    CountingClassifier.steps = 0
    model = FlatClassifier(mlp, num_classes=5)
    expect_setup_error(
        tmp_path,
        GradCAMCallback(layers="auto"),
        "found no module with a 4-D",
        model=model,
        datamodule=small_datamodule(),
    )


def test_no_validation_data_and_no_probe_fails_at_setup(tmp_path):
    data = small_datamodule()
    data.setup("fit")
    images, labels = data.train_set.tensors()
    loader = DataLoader(TensorDataset(images, labels), batch_size=32)
    expect_setup_error(tmp_path, GradCAMCallback(), "no val data.*set_probe", fit_kwargs={"train_dataloaders": loader})
    # Giving a probe explicitly fixes it.
    callback = GradCAMCallback(num_probe=4).set_probe(images[:4], labels[:4])
    trainer = quiet_trainer(max_epochs=1, callbacks=[callback], logger=CSVLogger(str(tmp_path)))
    trainer.fit(counting_model(), train_dataloaders=loader)
    assert len(callback.history) == 1


def test_no_logger_fails_at_setup(tmp_path):
    expect_setup_error(
        tmp_path, GradCAMCallback(), "no logger.*WandbLogger", logger=False, datamodule=small_datamodule()
    )


def test_target_class_out_of_range_fails_at_setup(tmp_path):
    expect_setup_error(
        tmp_path, GradCAMCallback(target=7), "out of range: the model has 5 classes", datamodule=small_datamodule()
    )


def test_more_probes_than_data_warns_and_uses_what_exists(tmp_path):
    callback = GradCAMCallback(num_probe=500)
    with pytest.warns(UserWarning, match="num_probe=500 but the val data has only 64 images; using all 64"):
        fit(tmp_path, callback, epochs=1)
    assert len(callback.probe) == 64


def test_invalid_constructor_arguments():
    with pytest.raises(ValueError, match="num_probe"):
        GradCAMCallback(num_probe=0)
    with pytest.raises(ValueError, match="every_n_epochs"):
        GradCAMCallback(every_n_epochs=0)
    with pytest.raises(ValueError, match="target"):
        GradCAMCallback(target="biggest")


class FailsInEvalAtEpochOne(nn.Module):
    """Raises in eval-mode forward passes during epoch 1 only, like a buggy custom layer would."""

    epoch = 0

    def forward(self, x):
        if not self.training and FailsInEvalAtEpochOne.epoch == 1:
            raise RuntimeError("custom layer exploded")
        return x


class EpochTracker(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        FailsInEvalAtEpochOne.epoch = trainer.current_epoch


def test_a_failing_explanation_never_loses_the_run(tmp_path):
    from xai_lightning import SmallCNN

    network = SmallCNN(num_classes=5, width=4)
    network.features.append(FailsInEvalAtEpochOne())
    model = ImageClassifier(network)
    callback = GradCAMCallback(layers="network.features.20", num_probe=4)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = quiet_trainer(
        max_epochs=3,
        callbacks=[EpochTracker(), callback, checkpoint],
        logger=CSVLogger(str(tmp_path)),
        limit_val_batches=0,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, small_datamodule())
    assert trainer.current_epoch == 3 and (tmp_path / "ckpt" / "last.ckpt").exists()
    assert [h["epoch"] for h in callback.history] == [0.0, 2.0]
    assert len(callback.failures) == 1 and "custom layer exploded" in callback.failures[0]
    assert any("GradCAMCallback failed at epoch 1" in str(w.message) for w in caught)


def test_on_error_raise_stops_training(tmp_path):
    network = small_classifier().network
    network.features.append(FailsInEvalAtEpochOne())
    FailsInEvalAtEpochOne.epoch = 1
    callback = GradCAMCallback(layers="network.features.20", num_probe=4, on_error="raise")
    trainer = quiet_trainer(max_epochs=1, callbacks=[callback], logger=CSVLogger(str(tmp_path)))
    try:
        with pytest.raises(RuntimeError, match="custom layer exploded"):
            trainer.fit(ImageClassifier(network), small_datamodule())
    finally:
        FailsInEvalAtEpochOne.epoch = 0
