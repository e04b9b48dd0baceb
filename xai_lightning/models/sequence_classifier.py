"""A LightningModule that trains a classifier of token sequences (our TextClassifier, Hugging Face BERT...)."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from xai_lightning.models.classifier import ImageClassifier

__all__ = ["PaddingMasked", "SequenceClassifier", "accepts_attention_mask"]


def accepts_attention_mask(network: nn.Module) -> bool:
    """Whether ``network.forward`` takes an ``attention_mask`` argument (ours and Hugging Face's do)."""
    parameters = inspect.signature(network.forward).parameters
    return "attention_mask" in parameters


class PaddingMasked(nn.Module):
    """``network(input_ids, attention_mask=(input_ids != pad_id))``: a model called on token ids alone
    (as every explanation calls it) that still ignores padding — e.g. a Hugging Face classifier.

    A network without an ``attention_mask`` argument is called on the ids alone.
    """

    def __init__(self, network: nn.Module, pad_id: int = 0) -> None:
        super().__init__()
        self.network = network
        self.pad_id = pad_id
        self._pass_mask = accepts_attention_mask(network)

    def forward(self, input_ids: torch.Tensor) -> object:
        if self._pass_mask:
            return self.network(input_ids, attention_mask=(input_ids != self.pad_id).long())
        return self.network(input_ids)


class SequenceClassifier(ImageClassifier):
    """Cross-entropy training of ``network`` on token ids ``(B, T)`` padded with ``pad_id``.

    ``forward(input_ids)`` calls ``network(input_ids, attention_mask=(input_ids != pad_id))`` when the
    network takes an attention mask, so padding is never attended to — in training and in every
    explanation, which calls the module on token ids alone. Everything else (optimiser, logged
    keys ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``) is
    :class:`~xai_lightning.models.ImageClassifier`'s; the network may return a ``ModelOutput``.

    Args:
        network: e.g. ``TextClassifier(vocab_size, num_classes=2)`` or a ``BertForSequenceClassification``.
        pad_id: the padding token id.
        num_classes, optimizer, lr, weight_decay, cosine_epochs: see ImageClassifier.
    """

    def __init__(self, network: nn.Module, pad_id: int = 0, num_classes: int | None = None, **options) -> None:
        # Reassigned here because save_hyperparameters reads this frame's num_classes.
        num_classes = (
            num_classes
            or getattr(network, "num_classes", None)
            or getattr(getattr(network, "config", None), "num_labels", None)
        )
        super().__init__(network, num_classes=num_classes, **options)
        self.pad_id = pad_id
        self._pass_mask = accepts_attention_mask(network)

    def forward(self, input_ids: torch.Tensor) -> object:  # type: ignore[override]
        if self._pass_mask:
            return self.network(input_ids, attention_mask=(input_ids != self.pad_id).long())
        return self.network(input_ids)
