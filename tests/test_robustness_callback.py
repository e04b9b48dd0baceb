"""RobustnessCallback: bit-identical training, scores equal to a direct computation, W&B readback,
DDP equals one process, and setup errors."""

from __future__ import annotations

import csv
from pathlib import Path

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
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from xai_lightning import RobustnessCallback
from xai_lightning.core import LayerNotFoundError
from xai_lightning.robustness import gradient_object_energy, loss_gradients, pgd, random_point

FAST = dict(
    num_probe=8,
    steps=2,
    max_images=3,
    morph_steps=3,
    inversion_steps=3,
    visualization_steps=3,
    visualization_units=[0, 1],
    vae_images=32,
    vae_epochs=1,
)

SCALARS = [
    "robustness/clean_acc",
    "robustness/robust_acc",
    "robustness/gradient_energy_in_mask",
    "robustness/gradient_energy_in_mask_uniform",
]
SYNTHESIS = [
    "robustness/morph_success_rate",
    "robustness/inversion_error",
    "robustness/feature_visualization_activation",
]
IMAGES = [
    "robustness/gradient_maps",
    "robustness/targeted_morph",
    "robustness/inversion",
    "robustness/feature_visualization",
]


def test_observing_robustness_leaves_training_bit_identical(tmp_path):
    # Every part runs at epoch 1 (synthesis included, with the VAE prior trained at setup); dropout
    # makes any leak into the global random stream change the weights.
    callback = RobustnessCallback(**FAST, visualization_prior="generator", synthesis_epochs=[1])
    with_callback = train_weights(tmp_path / "with", [callback], epochs=2, dropout=0.5)
    without = train_weights(tmp_path / "without", [], epochs=2, dropout=0.5)
    assert_bit_identical(with_callback, without)
    assert not callback.failures, callback.failures
    assert len(callback.history) == 2 and all(key in callback.history[1] for key in SCALARS + SYNTHESIS)
    assert SYNTHESIS[0] not in callback.history[0]  # synthesis only at the chosen epoch


def test_scores_equal_a_direct_computation_and_are_read_back_from_wandb(trained_shape_model, wandb_dir):
    # trainer.validate runs under inference mode: the callback must still attack and differentiate.
    model = trained_shape_model
    callback = RobustnessCallback(**{**FAST, "eps": 2.0, "steps": 5}, synthesis_epochs=[-1], on_error="raise")
    logger = WandbLogger(offline=True, save_dir=str(wandb_dir), project="robustness-test")
    trainer = quiet_trainer(callbacks=[callback], logger=logger)
    trainer.validate(model, small_datamodule(num_train=32, num_val=64))
    logger.experiment.finish()

    # The last observation used the final weights: recompute its scores directly.
    probe = callback.probe
    model.eval()
    with torch.no_grad():
        clean = (model(probe.images).argmax(1) == probe.labels).float().mean().item()
    start = random_point(probe.images.shape, "l2", 2.0, generator=torch.Generator().manual_seed(0))
    attack = pgd(model, probe.images, probe.labels, norm="l2", eps=2.0, steps=5, start=start)
    robust = (~attack.success).float().mean().item()
    assert robust < clean  # the check below can tell robust from clean accuracy
    energy = gradient_object_energy(
        loss_gradients(model, probe.images, "label", labels=probe.labels).gradients, probe.object_masks
    )
    last = callback.history[-1]
    assert last["robustness/clean_acc"] == pytest.approx(clean)
    assert last["robustness/robust_acc"] == pytest.approx(robust)
    # The callback's passes run channels-last with BatchNorms folded (core.fast_forward): equal up to rounding.
    assert last["robustness/gradient_energy_in_mask"] == pytest.approx(energy.nanmean().item(), abs=2e-5)
    assert last["robustness/gradient_energy_in_mask_uniform"] == pytest.approx(
        probe.object_masks.flatten(1).float().mean(1).mean().item()
    )

    history = read_wandb_history(wandb_run_dir(wandb_dir))
    logged = {key: record[key] for record in history for key in record}
    for key in SCALARS + SYNTHESIS:
        assert logged[key] == pytest.approx(last[key], rel=1e-5, abs=1e-7), key
    run = wandb_run_dir(wandb_dir)
    epochs_with = {key: [r for r in history if f"{key}.filenames" in r] for key in IMAGES}
    assert all(len(epochs_with[key]) == 1 for key in IMAGES), epochs_with
    from PIL import Image

    for key in IMAGES:
        png = Image.open(run / "files" / epochs_with[key][-1][f"{key}.filenames"][0])
        assert png.size[0] > 60 and png.size[1] > 30, key


def logged_scalars(tmp_path: Path, devices: int) -> list[dict[str, float]]:
    from test_ddp import frozen_network

    from xai_lightning import ImageClassifier

    pl.seed_everything(0)
    model = ImageClassifier(frozen_network(), num_classes=5, lr=0.0, weight_decay=0.0)
    callback = RobustnessCallback(num_probe=13, steps=3, synthesis_epochs=[])  # 13: uneven shards
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
    trainer.fit(model, small_datamodule(num_train=64, num_val=40))
    rows = list(csv.DictReader(open(tmp_path / "run" / "version_0" / "metrics.csv")))
    figures = [{k: float(v) for k, v in row.items() if k.startswith("robustness/") and v} for row in rows]
    return [f for f in figures if f]


@pytest.mark.ddp
def test_two_process_ddp_logs_the_same_scores_as_one_process(tmp_path):
    single = logged_scalars(tmp_path / "single", devices=1)
    double = logged_scalars(tmp_path / "ddp", devices=2)
    assert len(single) == len(double) == 2
    for one, two in zip(single, double):
        assert one.keys() == two.keys() and set(SCALARS) <= one.keys()
        for key in one:
            assert two[key] == pytest.approx(one[key], abs=1e-5), key
    assert len(list((tmp_path / "ddp").glob("**/robustness/gradient_maps/*.png"))) == 2  # rank zero alone


# ------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(eps=0.0), "eps must be a positive"),
        (dict(norm="l1"), "Unknown norm 'l1'"),
        (dict(steps=0), "steps must be >= 1"),
        (dict(visualization_prior="gan"), "Unknown visualization_prior 'gan'"),
        (dict(morph_eps=-2.0), "morph_eps must be a positive"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RobustnessCallback(**kwargs)


def fit_setup_only(tmp_path, callback, **datamodule_kwargs):
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=1,
        callbacks=[callback],
        logger=CSVLogger(str(tmp_path)),
        enable_checkpointing=False,
    )
    started = []

    class Model(type(small_classifier())):
        def training_step(self, batch, batch_idx):
            started.append(1)
            return super().training_step(batch, batch_idx)

    from xai_lightning.models import SmallCNN

    trainer.fit(
        Model(SmallCNN(num_classes=5, width=8)), small_datamodule(num_train=32, num_val=32, **datamodule_kwargs)
    )
    return started


def test_setup_errors_name_the_fix_before_training_starts(tmp_path):
    with pytest.raises(LayerNotFoundError, match="features.13"):
        fit_setup_only(tmp_path, RobustnessCallback(inversion_layer="features.99", **{k: v for k, v in FAST.items()}))
    with pytest.raises(ValueError, match=r"visualization_units \[7\] are out of range.*5 units"):
        fit_setup_only(tmp_path, RobustnessCallback(**{**FAST, "visualization_units": [0, 7]}))
    shifted = RobustnessCallback(**FAST)
    shifted.set_probe(torch.rand(4, 3, 32, 32) * 2 - 0.5, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 1\] pixel space.*data_mean"):
        fit_setup_only(tmp_path, shifted)
