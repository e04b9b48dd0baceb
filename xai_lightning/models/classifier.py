"""A LightningModule that trains any image network with cross-entropy — what the examples and the CLI use."""

from __future__ import annotations

from typing import Any, Literal, cast

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from pytorch_lightning.utilities import AttributeDict
from torch import nn

from xai_lightning.core.targets import select_logits
from xai_lightning.data.batch import unpack_batch

__all__ = ["ImageClassifier"]


class ImageClassifier(pl.LightningModule):
    """Cross-entropy classifier around ``network`` (logits out), with accuracy on train and val.

    Batches follow :mod:`xai_lightning.data.batch`. Logged keys: ``train/loss``, ``train/acc``,
    ``val/loss``, ``val/acc``. The network may return logits or a Hugging Face ``ModelOutput``
    (its ``.logits`` are trained; ``forward`` returns the network's output as it is).

    TRADES: when :class:`~xai_lightning.AdversarialTrainingCallback` (``method="trades"``) sets
    ``self.trades_batch``, the training loss is ``trades_batch.loss(clean logits, logits of
    trades_batch.inputs, labels)``; ``train/acc`` stays the clean accuracy.

    Args:
        network: the model, e.g. ``SmallCNN(num_classes=5)``; in YAML, a ``class_path`` block.
        num_classes: number of classes (defaults to ``network.num_classes``).
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9, nesterov).
        lr, weight_decay: optimiser settings.
        cosine_epochs: if > 0, cosine-anneal the learning rate over this many epochs.
    """

    def __init__(
        self,
        network: nn.Module,
        num_classes: int | None = None,
        optimizer: Literal["adam", "sgd"] = "adam",
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        cosine_epochs: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["network"])
        self.network = network
        classes = num_classes or getattr(network, "num_classes", None)
        if classes is None:
            raise ValueError("Pass num_classes: the network has no num_classes attribute.")
        self.num_classes = int(classes)
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=self.num_classes)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=self.num_classes)
        #: Set by AdversarialTrainingCallback(method="trades") for one training step (duck-typed TradesBatch).
        self.trades_batch: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def _step(self, batch: Any, stage: str, accuracy: torchmetrics.Metric) -> torch.Tensor:
        data = unpack_batch(batch)
        if data.labels is None:
            raise ValueError("ImageClassifier needs labels in every batch (see xai_lightning.data.batch).")
        logits = select_logits(self(data.inputs))
        trades = self.trades_batch if stage == "train" else None
        if trades is not None:
            loss = trades.loss(logits, select_logits(self(trades.inputs)), data.labels)
        else:
            loss = F.cross_entropy(logits, data.labels)
        accuracy(logits, data.labels)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", on_epoch=True, on_step=False)
        self.log(f"{stage}/acc", accuracy, prog_bar=True, on_epoch=True, on_step=False)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val", self.val_acc)

    def configure_optimizers(self) -> Any:
        h = cast(AttributeDict, self.hparams)  # save_hyperparameters() in __init__ stored an AttributeDict
        optimizer: torch.optim.Optimizer
        if h.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                self.parameters(), lr=h.lr, momentum=0.9, nesterov=True, weight_decay=h.weight_decay
            )
        else:
            optimizer = torch.optim.Adam(self.parameters(), lr=h.lr, weight_decay=h.weight_decay)
        if h.cosine_epochs > 0:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=h.cosine_epochs)
            return {"optimizer": optimizer, "lr_scheduler": scheduler}
        return optimizer
