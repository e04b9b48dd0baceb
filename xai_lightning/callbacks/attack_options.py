"""The keyword arguments the robustness callbacks pass to every attack and gradient pass."""

from __future__ import annotations

from typing import TypedDict

import pytorch_lightning as pl

__all__ = ["AttackOptions"]


class AttackOptions(TypedDict):
    """Where the logits are, the cap on examples per pass, and the trainer whose precision the passes use.

    Typed so that ``**options`` is checked against each attack's signature (``pgd``, ``fgsm``,
    ``trades_adversarial``, ``loss_gradients``, ``invert_representation``, ``visualize_features``).
    """

    output_key: str | int | None
    max_batch: int | None
    trainer: pl.Trainer
