"""VariationalClassifier: a Bayes-by-Backprop network (Blundell et al. 2015) trained on the ELBO."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from xai_lightning.data.batch import unpack_batch
from xai_lightning.models.classifier import ImageClassifier
from xai_lightning.uncertainty.bayesian import bayesian_layers, bayesian_logits, kl_divergence, make_bayesian

__all__ = ["VariationalClassifier"]


class VariationalClassifier(ImageClassifier):
    """Classifier with Gaussian mean-field weights, trained on the negative ELBO per mini-batch.

    ``loss = mean_i CE(f_w(x_i), y_i) + kl_weight · KL(q ‖ p) / N`` with one weight sample per
    example (local reparameterisation) and ``N`` the training-set size: Blundell et al.'s
    ``KL/M − Σ log p`` over ``M`` mini-batches, divided by the batch size (so the learning rate
    means what it means for :class:`ImageClassifier`).

    ``forward`` samples in training mode; in eval mode it uses the posterior means
    (deterministic — what validation accuracy and explanation callbacks see, unless
    ``val_samples > 0``). :meth:`predictive_logits` averages weight samples.

    Logged: ``train/loss`` (the ELBO loss), ``train/nll``, ``train/kl`` (``KL / N`` before
    ``kl_weight``), ``train/acc``, ``val/loss`` (NLL), ``val/acc``.

    Args:
        network: a network; its ``bayesian_layers`` (default ``"all"``: every ``nn.Linear`` and
            ``nn.Conv2d``; ``"last"``: the classifier head only; or a list of names) are replaced by
            Bayesian layers whose means start at the current weights. A network that already has
            Bayesian layers is used as it is.
        prior_sigma: σ_p of the N(0, σ_p²) prior.
        init_rho: initial ρ (σ = softplus(ρ)).
        kl_weight: multiplies the KL term (1 = the ELBO; < 1 tempers the prior).
        dataset_size: training-set size N; default: the length of the training dataset.
        val_samples: if > 0, validation metrics use the mean prediction of this many weight samples
            (keyed noise, no global generator read) instead of the posterior-mean network.
        num_classes, optimizer, lr, weight_decay, cosine_epochs: see :class:`ImageClassifier`
            (weight decay defaults to 0: the KL already regularises the weights).
    """

    def __init__(
        self,
        network: nn.Module,
        bayesian_layers: str | list[str] = "all",
        prior_sigma: float = 1.0,
        init_rho: float = -5.0,
        kl_weight: float = 1.0,
        dataset_size: int | None = None,
        val_samples: int = 0,
        num_classes: int | None = None,
        optimizer: Literal["adam", "sgd"] = "adam",
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        cosine_epochs: int = 0,
    ) -> None:
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0; got {kl_weight}")
        if val_samples < 0 or val_samples == 1:
            raise ValueError(f"val_samples must be 0 (posterior means) or >= 2; got {val_samples}")
        if dataset_size is not None and dataset_size < 1:
            raise ValueError(f"dataset_size must be >= 1; got {dataset_size}")
        if not _has_bayesian_layers(network):
            make_bayesian(network, bayesian_layers, prior_sigma=prior_sigma, init_rho=init_rho)
        super().__init__(
            network,
            num_classes=num_classes,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            cosine_epochs=cosine_epochs,
        )
        self.kl_weight = kl_weight
        self.dataset_size = dataset_size
        self.val_samples = val_samples

    def _dataset_size(self, batch_size: int) -> int:
        if self.dataset_size is not None:
            return self.dataset_size
        loader = getattr(self.trainer, "train_dataloader", None)
        dataset = getattr(loader, "dataset", None)
        try:
            return len(dataset)  # type: ignore[arg-type]
        except TypeError:
            batches = self.trainer.num_training_batches
            if batches == float("inf"):
                raise ValueError(
                    "VariationalClassifier cannot tell the training-set size of an iterable dataset; pass dataset_size="
                ) from None
            return int(batches) * batch_size

    def predictive_logits(self, x: torch.Tensor, samples: int = 20, seed: int = 0) -> torch.Tensor:
        """``log mean_s softmax(z_s)`` over ``samples`` weight samples: ``(B, C)`` (keyed noise, eval mode)."""
        logits = bayesian_logits(self.network, x, samples=samples, seed=seed)
        return torch.logsumexp(logits.float().log_softmax(-1), dim=0) - torch.log(torch.tensor(float(samples)))

    def _step(self, batch: Any, stage: str, accuracy: torchmetrics.Metric) -> torch.Tensor:
        data = unpack_batch(batch)
        if data.labels is None:
            raise ValueError("VariationalClassifier needs labels in every batch (see xai_lightning.data.batch).")
        if stage == "train":
            if self.trades_batch is not None:
                raise NotImplementedError("TRADES adversarial training is not supported for VariationalClassifier")
            logits = self(data.inputs)
            nll = F.cross_entropy(logits, data.labels)
            kl = kl_divergence(self.network) / self._dataset_size(data.labels.shape[0])
            loss = nll + self.kl_weight * kl
            self.log("train/nll", nll, on_epoch=True, on_step=False)
            self.log("train/kl", kl, on_epoch=True, on_step=False)
            self.log("train/loss", loss, on_epoch=True, on_step=False)
            accuracy(logits, data.labels)
        else:
            if self.val_samples:
                log_probs = self.predictive_logits(data.inputs, self.val_samples)
                loss = F.nll_loss(log_probs, data.labels)
                accuracy(log_probs, data.labels)
            else:
                logits = self(data.inputs)
                loss = F.cross_entropy(logits, data.labels)
                accuracy(logits, data.labels)
            self.log(f"{stage}/loss", loss, prog_bar=True, on_epoch=True, on_step=False)
        self.log(f"{stage}/acc", accuracy, prog_bar=True, on_epoch=True, on_step=False)
        return loss


def _has_bayesian_layers(network: nn.Module) -> bool:
    return bool(bayesian_layers(network))
