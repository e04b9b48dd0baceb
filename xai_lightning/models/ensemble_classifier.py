"""EnsembleClassifier: a deep ensemble (Lakshminarayanan et al. 2017) of K networks trained in one LightningModule."""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from xai_lightning.data.batch import unpack_batch
from xai_lightning.models.classifier import ImageClassifier
from xai_lightning.uncertainty.ensemble import VectorisedEnsemble, reinitialise

__all__ = ["EnsembleClassifier"]


class EnsembleClassifier(ImageClassifier):
    """``K`` independently initialised copies of ``network`` trained together on the same batches.

    The members are evaluated vectorised (:class:`~xai_lightning.uncertainty.VectorisedEnsemble`:
    one wide network of grouped convolutions and batched matrix products for plain chains such as
    ``SmallCNN`` — the "packed" layout — else ``torch.func.vmap`` over the stacked weights; never a
    loop of K forwards). The training loss is the *sum* of the members' cross-entropies, so
    each member receives exactly the gradient it would get trained alone (Lakshminarayanan et al.
    train members independently; with one shared data order here, as their paper allows, the
    diversity comes from the random initialisations).

    ``forward(x)`` returns the ensemble's predictive distribution as logits,
    ``log mean_k softmax(z_k)`` (softmax of it is the mean member probability), so accuracy,
    calibration and every explanation callback see the ensemble; :meth:`member_logits` gives
    ``(K, B, C)`` for disagreement (mutual information between prediction and member).

    Logged: ``train/loss`` (mean member cross-entropy), ``train/acc``, ``val/loss`` (NLL of the
    ensemble prediction), ``val/acc`` (ensemble accuracy), ``val/member_acc`` (mean member accuracy).

    Args:
        network: the member architecture, e.g. ``SmallCNN(num_classes=5, width=8)``. Member 0 keeps
            its weights; members 1…K−1 are deep copies re-initialised (``reset_parameters`` of every
            submodule, from the global generator — seed it for reproducibility).
        num_members: K ≥ 2 (5 in the paper).
        num_classes, optimizer, lr, weight_decay, cosine_epochs: see :class:`ImageClassifier`; the
            optimiser updates all members' stacked parameters at once.
        layout: ``"auto"`` (packed when the architecture allows it, else vmap), ``"packed"`` or
            ``"vmap"``; see :class:`~xai_lightning.uncertainty.VectorisedEnsemble`. Same results.
    """

    def __init__(
        self,
        network: nn.Module,
        num_members: int = 5,
        num_classes: int | None = None,
        optimizer: Literal["adam", "sgd"] = "adam",
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        cosine_epochs: int = 0,
        layout: Literal["auto", "packed", "vmap"] = "auto",
    ) -> None:
        if num_members < 2:
            raise ValueError(
                f"EnsembleClassifier needs num_members (K) >= 2 members to disagree; got {num_members}. "
                f"Lakshminarayanan et al. use K = 5."
            )
        classes = num_classes or getattr(network, "num_classes", None)
        members = [network] + [reinitialise(copy.deepcopy(network)) for _ in range(num_members - 1)]
        super().__init__(
            VectorisedEnsemble(members, layout=layout),
            num_classes=classes,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            cosine_epochs=cosine_epochs,
        )
        self.num_members = num_members
        self.val_member_acc = torchmetrics.MeanMetric()

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits ``(K, B, C)``."""
        return self.network(x)

    @staticmethod
    def combine(member_logits: torch.Tensor) -> torch.Tensor:
        """``log mean_k softmax(z_k)``: ``(K, B, C) → (B, C)`` logits of the ensemble prediction."""
        return torch.logsumexp(member_logits.float().log_softmax(-1), dim=0) - math.log(member_logits.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(self.member_logits(x))

    def _step(self, batch: Any, stage: str, accuracy: torchmetrics.Metric) -> torch.Tensor:
        data = unpack_batch(batch)
        if data.labels is None:
            raise ValueError("EnsembleClassifier needs labels in every batch (see xai_lightning.data.batch).")
        if stage == "train" and self.trades_batch is not None:
            raise NotImplementedError("TRADES adversarial training is not supported for EnsembleClassifier")
        members = self.member_logits(data.inputs)
        k, b, c = members.shape
        member_losses = F.cross_entropy(members.reshape(k * b, c), data.labels.repeat(k), reduction="none")
        member_losses = member_losses.view(k, b).mean(1)
        ensemble = self.combine(members)
        accuracy(ensemble, data.labels)
        if stage == "train":
            loss = member_losses.sum()
            self.log("train/loss", member_losses.mean(), on_epoch=True, on_step=False)
        else:
            loss = F.nll_loss(ensemble, data.labels)
            self.log(f"{stage}/loss", loss, prog_bar=True, on_epoch=True, on_step=False)
            hits = (members.argmax(-1) == data.labels.unsqueeze(0)).float().mean()
            self.val_member_acc(hits, weight=b)
            self.log(f"{stage}/member_acc", self.val_member_acc, on_epoch=True, on_step=False)
        self.log(f"{stage}/acc", accuracy, prog_bar=True, on_epoch=True, on_step=False)
        return loss
