"""AttentionCallback in a Trainer: a Hugging Face ViT built from a config, what it logs, bit-identical
training, errors at setup, and 2-process DDP against 1 process."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import (
    hf_vit,
    logged_csv_figures,
    quiet_trainer,
    read_wandb_history,
    small_datamodule,
    wandb_run_dir,
)
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from torch import nn

from xai_lightning import AttentionCallback, ImageClassifier, VisionTransformer
from xai_lightning.attribution import AttentionNotFoundError


class StepCounter(pl.Callback):
    steps = 0

    def on_train_batch_start(self, *args) -> None:
        StepCounter.steps += 1


def fit_vit(
    tmp_path: Path,
    callbacks: list,
    logger=None,
    epochs: int = 2,
    dropout: float = 0.1,
    network: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    pl.seed_everything(0)
    network = network if network is not None else hf_vit(dropout=dropout)
    model = ImageClassifier(network.train(), num_classes=5, lr=1e-3)  # hf_vit() comes in eval mode
    trainer = quiet_trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        logger=logger or CSVLogger(str(tmp_path)),
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, small_datamodule(num_train=128, num_val=32))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_hugging_face_vit_trains_bit_identically_with_the_callback_and_logs_maps_and_masses(tmp_path):
    plain = fit_vit(tmp_path / "plain", [])
    logger = WandbLogger(offline=True, save_dir=str(tmp_path / "observed"), project="attention-test")
    callback = AttentionCallback(num_probe=6, max_images=3)
    observed = fit_vit(tmp_path / "observed", [callback], logger=logger)
    logger.experiment.finish()
    assert plain.keys() == observed.keys()
    for key in plain:
        assert torch.equal(plain[key], observed[key]), key  # dropout on: any RNG leak would show
    history = read_wandb_history(wandb_run_dir(tmp_path / "observed"))
    scalars = [h for h in history if "attention/rollout/mass_in_mask" in h]
    assert len(scalars) == 2
    keys = {
        "attention/mass_in_mask_uniform",
        "attention/relevance/mass_in_mask",
        "attention/layer1/mass_in_mask",
        *(f"attention/layer{layer}/head{head}/mass_in_mask" for layer in range(2) for head in range(4)),
    }
    for record in scalars:
        assert keys <= set(record)
        assert all(0.0 <= record[key] <= 1.0 for key in keys)
    images = {key for record in history for key in record if key.endswith(".filenames")}
    assert {
        "attention/maps.filenames",
        "attention/heads/layer0.filenames",
        "attention/heads/layer1.filenames",
    } <= images
    assert callback.history[-1]["attention/mass_in_mask_uniform"] == pytest.approx(
        float(callback.probe.object_masks.float().mean()), abs=1e-6
    )


def test_a_callable_target_of_the_wrong_shape_fails_at_setup(tmp_path):
    StepCounter.steps = 0
    callback = AttentionCallback(num_probe=4, target=lambda logits: logits)
    with pytest.raises(
        ValueError, match=r"returned shape \(1, 5\).*one floating-point score per example, shape \(1,\)"
    ):
        fit_vit(tmp_path, [callback, StepCounter()], network=VisionTransformer(dim=16, depth=1, heads=2))
    assert StepCounter.steps == 0


def test_a_missing_output_key_lists_the_keys_at_setup(tmp_path):
    class DictOutput(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = VisionTransformer(dim=16, depth=1, heads=2)

        def forward(self, x):
            return {"logits": self.vit(x), "cls": torch.zeros(x.shape[0], 4)}

    StepCounter.steps = 0
    # The LightningModule returns the dict as the network does; the callback is told the wrong key.
    pl.seed_everything(0)
    model = ImageClassifier(DictOutput(), num_classes=5)
    model.forward = lambda x: model.network(x)
    trainer = quiet_trainer(
        max_epochs=1,
        callbacks=[AttentionCallback(num_probe=4, output_key="logit"), StepCounter()],
        logger=CSVLogger(str(tmp_path)),
        enable_checkpointing=False,
    )
    with pytest.raises(
        TypeError, match=r"output_key='logit' does not select anything.*available: keys \['logits', 'cls'\]"
    ):
        trainer.fit(model, small_datamodule(num_train=64, num_val=16))
    assert StepCounter.steps == 0


def test_a_model_without_exposed_attention_fails_at_setup_naming_eager(tmp_path):
    StepCounter.steps = 0
    with pytest.raises(AttentionNotFoundError, match=r"set_attn_implementation\('eager'\)"):
        fit_vit(tmp_path, [AttentionCallback(num_probe=4), StepCounter()], network=hf_vit(eager=False))
    assert StepCounter.steps == 0
    with pytest.raises(ValueError, match="maps must be"):
        AttentionCallback(maps=["rolout"])


def logged_figures(tmp_path: Path, devices: int) -> list[dict[str, float]]:
    pl.seed_everything(0)
    torch.manual_seed(0)
    network = VisionTransformer(dim=16, depth=2, heads=2)  # no BatchNorm; lr=0 keeps both runs' weights equal
    model = ImageClassifier(network, num_classes=5, lr=0.0, weight_decay=0.0)
    logger = CSVLogger(str(tmp_path), name="run", version=0)
    trainer = quiet_trainer(
        max_epochs=1,
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        callbacks=[AttentionCallback(num_probe=7, grid_layers=[])],
        logger=logger,
        enable_checkpointing=False,
        deterministic=False,
    )
    trainer.fit(model, small_datamodule(num_train=64, num_val=16))
    return logged_csv_figures(tmp_path / "run" / "version_0", "attention/")


@pytest.mark.ddp
def test_two_process_ddp_logs_the_same_attention_figures_as_one_process(tmp_path):
    single = logged_figures(tmp_path / "single", devices=1)
    double = logged_figures(tmp_path / "ddp", devices=2)
    assert len(single) == len(double) == 1
    assert single[0].keys() == double[0].keys() and "attention/rollout/mass_in_mask" in single[0]
    for key in single[0]:
        assert double[0][key] == pytest.approx(single[0][key], abs=1e-5), key
