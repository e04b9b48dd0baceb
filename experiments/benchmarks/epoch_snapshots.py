"""The benchmark model (SmallCNN width 32 on ConceptWorld, 2,000 training images, batch 64) and its
weights after every training epoch, for measurements that depend on how far training got."""

from __future__ import annotations

import copy

import pytorch_lightning as pl

from xai_lightning import ConceptWorldDataModule, ImageClassifier, SmallCNN


def train_with_snapshots(
    epochs: int, include_untrained: bool = False
) -> tuple[ImageClassifier, ConceptWorldDataModule, dict[int, dict]]:
    """``(model, datamodule, {epoch: state_dict})``: seed 0; epoch 0 is the untrained model when asked."""
    datamodule = ConceptWorldDataModule(num_train=2000, num_val=500, batch_size=64)
    datamodule.setup("fit")
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(SmallCNN(num_classes=5, width=32))
    snapshots = {0: copy.deepcopy(model.state_dict())} if include_untrained else {}

    class Snapshot(pl.Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            snapshots[trainer.current_epoch + 1] = copy.deepcopy(module.state_dict())

    pl.Trainer(
        max_epochs=epochs,
        callbacks=[Snapshot()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    ).fit(model, datamodule)
    return model, datamodule, snapshots
