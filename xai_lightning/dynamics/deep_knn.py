"""Deep k-nearest neighbours (Papernot & McDaniel, "Deep k-Nearest Neighbors: Towards Confident,
Interpretable and Robust Deep Learning", 2018).

In every layer ``l``, find the ``k`` training (reference) points whose features are nearest (in
Euclidean distance) to a probe's features and count their labels. The probe's **conformity** in
layer ``l`` is the fraction of those neighbours whose label agrees with the model's prediction:
1 when the representation puts the probe among training points of the predicted class, low
when the prediction is not supported by similar training data. The paper's nonconformity of
label ``j`` sums the disagreeing neighbours over layers, ``α(x, j) = Σ_l |{neighbours ≠ j}|``,
and a calibration set with true labels turns it into a **credibility** (an empirical p-value):
the fraction of calibration nonconformities at least as large.

Defaults: ``k = 75`` (the paper), capped by the size of the reference set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from xai_lightning.core import batch_slices

__all__ = [
    "DEFAULT_K",
    "credibility",
    "deep_knn_conformity",
    "knn_conformity",
    "neighbour_label_counts",
    "nonconformity",
]

DEFAULT_K = 75


def neighbour_label_counts(
    query: torch.Tensor,
    reference: torch.Tensor,
    reference_labels: torch.Tensor,
    k: int = DEFAULT_K,
    *,
    num_classes: int | None = None,
    max_batch: int | None = 1024,
) -> torch.Tensor:
    """``(B, K)`` counts of each label among the ``min(k, M)`` nearest ``reference (M, D)`` rows of
    every ``query (B, D)`` row (Euclidean; ties broken by ``torch.topk``). ``max_batch`` caps the
    query rows per distance matrix."""
    if query.dim() != 2 or reference.dim() != 2 or query.shape[1] != reference.shape[1]:
        raise ValueError(
            f"query (B, D) and reference (M, D) must agree in D; got {tuple(query.shape)} and {tuple(reference.shape)}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if reference.shape[0] == 0:
        raise ValueError("The reference set is empty: deep k-NN needs training points to compare with.")
    labels = torch.as_tensor(reference_labels, device=reference.device).long()
    classes = num_classes if num_classes is not None else int(labels.max()) + 1
    neighbours = min(k, reference.shape[0])
    ref = reference.double()
    counts = []
    for rows in batch_slices(query.shape[0], max_batch):
        distances = torch.cdist(query[rows].double(), ref, compute_mode="donot_use_mm_for_euclid_dist")
        nearest = distances.topk(neighbours, dim=1, largest=False).indices  # (b, k)
        counts.append(torch.nn.functional.one_hot(labels[nearest], classes).sum(1))
    return torch.cat(counts)


def knn_conformity(counts: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    """``(B,)`` fraction of neighbours labelled like ``predictions (B,)``, from ``counts (B, K)``."""
    rows = torch.arange(counts.shape[0], device=counts.device)
    return counts[rows, predictions.to(counts.device).long()].double() / counts.sum(1).double()


def nonconformity(counts_by_layer: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Papernot's ``α(x, j) = Σ_l |{neighbours in layer l not labelled j}|`` for ``labels (B,)``."""
    total = torch.zeros(labels.shape[0], dtype=torch.float64, device=labels.device)
    rows = torch.arange(labels.shape[0], device=labels.device)
    for counts in counts_by_layer:
        total = total + (counts.sum(1) - counts[rows, labels.long()]).double()
    return total


def credibility(alpha: torch.Tensor, calibration_alpha: torch.Tensor) -> torch.Tensor:
    """``(B,)`` fraction of ``calibration_alpha`` (true labels of a held-out calibration set) that is
    ``≥ alpha`` (nonconformity of the predicted label): the DkNN's empirical p-value."""
    return (calibration_alpha.view(1, -1) >= alpha.view(-1, 1)).double().mean(1)


def deep_knn_conformity(
    probe_features: Mapping[str, torch.Tensor],
    predictions: torch.Tensor,
    reference_features: Mapping[str, torch.Tensor],
    reference_labels: torch.Tensor,
    k: int = DEFAULT_K,
    *,
    num_classes: int | None = None,
    max_batch: int | None = 1024,
) -> dict[str, torch.Tensor]:
    """Per layer, ``(B,)`` conformity of each probe's prediction with its ``k`` nearest reference points."""
    return {
        layer: knn_conformity(
            neighbour_label_counts(
                features, reference_features[layer], reference_labels, k, num_classes=num_classes, max_batch=max_batch
            ),
            predictions,
        )
        for layer, features in probe_features.items()
    }
