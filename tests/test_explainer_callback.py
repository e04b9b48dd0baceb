"""ExplainerNetworkCallback: trains alongside without disturbing, learns part filters, checkpoints, fails early."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from conftest import (
    assert_bit_identical,
    quiet_trainer,
    read_wandb_history,
    small_classifier,
    small_datamodule,
    train_weights,
    wandb_run_dir,
)
from xai_lightning import ExplainerNetworkCallback, LayerNotFoundError

INPUT, TARGET = "network.features.13", "network.features.20"


def test_performer_weights_are_bit_identical_with_and_without_the_callback(tmp_path):
    callback = ExplainerNetworkCallback(INPUT, TARGET, num_filters=4, num_probe=16)
    without = train_weights(tmp_path / "without", [], epochs=2, dropout=0.5)
    with_callback = train_weights(tmp_path / "with", [callback], epochs=2, dropout=0.5)
    assert_bit_identical(without, with_callback)
    assert callback.steps == 2 * 256 // 32  # the explainer really trained, one step per batch
    assert len(callback.history) == 2 and not callback.failures


# The performer jumps from chance to ~100 % in epochs 2-3; the explainer, trained on its moving train-mode
# features, needs an epoch or two to catch up (measured: accuracy through it 0.77 vs 1.00 at epoch 3, 1.00 vs
# 1.00 from epoch 4 on; instability 0.038 vs the performer's 0.060). Hence 8 epochs, not 4.
def test_short_concept_world_training_gives_stable_part_filters_and_faithful_reconstruction(wandb_dir):
    pl.seed_everything(0)
    model = small_classifier(width=8, lr=3e-3)
    callback = ExplainerNetworkCallback(INPUT, TARGET, num_filters=8, lr=3e-3, steps_per_batch=4, num_probe=128, top_k=20,
                                        on_error="raise")
    trainer = quiet_trainer(max_epochs=8, callbacks=[callback], enable_checkpointing=False,
                            logger=WandbLogger(offline=True, save_dir=str(wandb_dir)))
    epochs = trainer.max_epochs
    trainer.fit(model, small_datamodule(num_train=1024, num_val=128, batch_size=64))
    import wandb

    wandb.finish()
    history = read_wandb_history(wandb_run_dir(wandb_dir))
    last = callback.history[-1]
    logged = [h for h in history if "explainer/location_instability/explainer" in h]
    assert len(logged) == epochs  # one evaluation per epoch
    for key in ("p", "reconstruction_error", "filter_loss", "accuracy/explainer", "delta_error",
                "location_instability/input", "location_instability/target", "train/loss", "steps"):
        assert logged[-1][f"explainer/{key}"] == pytest.approx(last[f"explainer/{key}"], rel=1e-5), key
    assert logged[-1]["explainer/steps"] == epochs * 4 * 1024 // 64
    maps = [h for h in history if "explainer/activation_maps.filenames" in h]
    assert len(maps) == epochs and "Explainer filters" in maps[-1]["explainer/activation_maps.captions"][0]
    assert any("explainer/filters._type" in h for h in history)
    assert last["explainer/accuracy/performer"] > 0.95  # the performer trained
    instability = last["explainer/location_instability/explainer"]
    assert instability < 0.8 * last["explainer/location_instability/input"]
    assert instability < 0.8 * last["explainer/location_instability/target"]
    assert last["explainer/accuracy/explainer"] >= last["explainer/accuracy/performer"] - 0.03
    assert last["explainer/delta_error"] == pytest.approx(
        last["explainer/accuracy/performer"] - last["explainer/accuracy/explainer"], abs=1e-6)


def fit_with(tmp_path, callback):
    pl.seed_everything(0)
    model = small_classifier(width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = quiet_trainer(max_epochs=1, callbacks=[callback], logger=CSVLogger(str(tmp_path)),
                            enable_checkpointing=False)
    try:
        trainer.fit(model, small_datamodule(num_train=64, num_val=16))
    finally:
        assert trainer.global_step == 0  # raised at setup, before any training step
        assert_bit_identical(before, model.state_dict())


def test_layer_without_spatial_output_fails_at_setup_listing_spatial_layers(tmp_path):
    with pytest.raises(ValueError, match=r"target_layer='network.pool' outputs \(1, 16, 1, 1\).*network.features.13"):
        fit_with(tmp_path, ExplainerNetworkCallback(INPUT, "network.pool", num_probe=4))


def test_target_layer_before_input_layer_fails_at_setup(tmp_path):
    with pytest.raises(ValueError, match=r"target_layer='network.features.6' runs before input_layer"):
        fit_with(tmp_path, ExplainerNetworkCallback(INPUT, "network.features.6", num_probe=4))


def test_unknown_layer_lists_valid_names(tmp_path):
    with pytest.raises(LayerNotFoundError, match="network.features.13"):
        fit_with(tmp_path, ExplainerNetworkCallback("network.nope", TARGET, num_probe=4))


def test_resume_continues_the_explainers_training_where_it_stopped(tmp_path):
    def run(epochs, ckpt_path=None):
        pl.seed_everything(0)
        callback = ExplainerNetworkCallback(INPUT, TARGET, num_filters=4, num_probe=8)
        checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
        trainer = quiet_trainer(max_epochs=epochs, callbacks=[callback, checkpoint], logger=CSVLogger(str(tmp_path)))
        trainer.fit(small_classifier(width=4), small_datamodule(num_train=64, num_val=16), ckpt_path=ckpt_path)
        return callback

    first = run(1)
    assert first.steps == 2
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"][first.state_key]
    for key, value in first.explainer.state_dict().items():
        assert torch.equal(saved["explainer"][key], value.cpu()), key
    resumed = run(2, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    # A fresh explainer would have taken 2 steps; the restored one continues from 2 (weights and Adam state).
    assert resumed.steps == 4
    assert max(int(state["step"]) for state in resumed.optimizer.state.values()) == 4
    assert len(resumed.history) == 2
