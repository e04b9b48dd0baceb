"""What the ROAR and sanity-check experiments share: training a SmallCNN on tensors, its accuracy,
and the 95 % t-interval of a mean over seeds."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from xai_lightning import ImageClassifier, SmallCNN

__all__ = ["accuracy", "confidence_interval", "train"]


def train(images: torch.Tensor, labels: torch.Tensor, settings: dict[str, Any], seed: int) -> ImageClassifier:
    """A SmallCNN (``width``) trained on the given tensors (cross-entropy, Adam ``lr``, ``epochs``,
    ``batch_size``), returned in eval mode."""
    pl.seed_everything(seed, workers=True, verbose=False)
    model = ImageClassifier(SmallCNN(num_classes=int(labels.max()) + 1, width=settings["width"]), lr=settings["lr"])
    loader = DataLoader(TensorDataset(images, labels), batch_size=settings["batch_size"], shuffle=True)
    trainer = pl.Trainer(
        max_epochs=settings["epochs"],
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    trainer.fit(model, loader)
    return model.eval()


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, chunk: int = 512) -> float:
    with torch.no_grad():
        predictions = torch.cat([model(images[i : i + chunk]).argmax(1) for i in range(0, len(images), chunk)])
    return float((predictions == labels).float().mean())


def confidence_interval(values: list[float]) -> float:
    """Half-width of the 95 % t-interval of the mean (0 for one value)."""
    if len(values) < 2:
        return 0.0
    from scipy.stats import t

    return float(t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))
