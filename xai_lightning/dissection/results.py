"""What network dissection says about one layer: each unit's best concept, its IoU and category."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from xai_lightning.dissection.vocabulary import ConceptVocabulary

__all__ = ["DissectionResult"]


@dataclass(frozen=True)
class DissectionResult:
    """Network dissection of one layer (Bau et al. 2017).

    Attributes:
        layer: the dotted layer name.
        vocabulary: the ``C`` concepts and their categories.
        iou: ``(K, C)`` float64 dataset-wide IoU of every unit with every concept.
        thresholds: ``(K,)`` float32 activation threshold ``T_k`` of each unit.
        unit_pixels: ``(K,)`` long, pixels (at mask resolution) where each unit's mask is on.
        concept_pixels: ``(C,)`` long, pixels of each concept over the images of its category.
        top_images: ``(K, n)`` long probe positions of each unit's top-activating images (-1: none).
        top_scores: ``(K, n)`` float64 their peak activations.
        iou_threshold: a unit is interpretable when its best IoU exceeds this (0.04 in the paper).
        quantile: the top quantile that set the thresholds (0.005).
        method: ``"exact"`` or ``"sketch"`` — how the thresholds were computed.
        num_images: probe images dissected.
        minima: ``(K,)`` each unit's smallest activation over the probe set; where ``T_k`` equals it
            (a unit constant over its top quantile) the mask is ``A_k > T_k`` rather than ``>=``.
    """

    layer: str
    vocabulary: ConceptVocabulary
    iou: torch.Tensor
    thresholds: torch.Tensor
    unit_pixels: torch.Tensor
    concept_pixels: torch.Tensor
    top_images: torch.Tensor
    top_scores: torch.Tensor
    iou_threshold: float = 0.04
    quantile: float = 0.005
    method: str = "exact"
    num_images: int = 0
    minima: torch.Tensor | None = None

    def unit_masks(self, activations: torch.Tensor, units: list[int] | None = None) -> torch.Tensor:
        """Binary masks ``(B, k, h, w)`` of ``units`` (default all) from their activations
        ``(B, k, h, w)`` — already upsampled to the wanted resolution — by the dissection's rule."""
        from xai_lightning.dissection.quantile import threshold_mask

        chosen = list(range(self.num_units)) if units is None else list(units)
        thresholds = self.thresholds[chosen]
        minima = self.minima[chosen] if self.minima is not None else torch.full_like(thresholds, -float("inf"))
        return threshold_mask(activations, thresholds, minima)

    @property
    def num_units(self) -> int:
        return int(self.iou.shape[0])

    @property
    def empty_concepts(self) -> tuple[str, ...]:
        """Concepts without a single pixel in the probe set: their IoU is 0 and they are never a
        unit's best concept (reported instead of dividing by zero)."""
        return tuple(name for name, n in zip(self.vocabulary.names, self.concept_pixels.tolist()) if n == 0)

    @property
    def best_concept(self) -> torch.Tensor:
        """``(K,)`` long: each unit's concept of highest IoU (first one on ties), among concepts
        present in the probe set."""
        scores = self.iou.clone()
        scores[:, self.concept_pixels == 0] = -1.0
        return scores.argmax(1)

    @property
    def best_iou(self) -> torch.Tensor:
        """``(K,)`` float64: the best concept's IoU."""
        return self.iou.gather(1, self.best_concept.unsqueeze(1)).squeeze(1)

    @property
    def interpretable(self) -> torch.Tensor:
        """``(K,)`` bool: the unit detects its best concept (IoU > ``iou_threshold``)."""
        return self.best_iou > self.iou_threshold

    def concept_of(self, unit: int) -> tuple[str, str, float]:
        """``(concept, category, IoU)`` of one unit."""
        c = int(self.best_concept[unit])
        return self.vocabulary.names[c], self.vocabulary.categories[c], float(self.iou[unit, c])

    def interpretable_by_category(self) -> dict[str, int]:
        """Number of interpretable units whose best concept is in each category (all categories listed)."""
        counts = {category: 0 for category in self.vocabulary.category_names}
        for unit in self.interpretable.nonzero().flatten().tolist():
            counts[self.vocabulary.categories[int(self.best_concept[unit])]] += 1
        return counts

    def unique_concepts_by_category(self) -> dict[str, int]:
        """Number of distinct concepts detected by at least one interpretable unit, per category."""
        detected = set(self.best_concept[self.interpretable].tolist())
        counts = {category: 0 for category in self.vocabulary.category_names}
        for c in detected:
            counts[self.vocabulary.categories[c]] += 1
        return counts

    def units_ranked(self) -> list[int]:
        """Units by decreasing best IoU (ties by unit index)."""
        order = sorted(range(self.num_units), key=lambda k: (-float(self.best_iou[k]), k))
        return order

    def table(self) -> tuple[list[str], list[list[Any]]]:
        """``(columns, rows)``: one row per unit — unit, concept, category, IoU, interpretable, threshold."""
        columns = ["unit", "concept", "category", "iou", "interpretable", "threshold"]
        rows = []
        best, best_iou, interpretable = self.best_concept, self.best_iou, self.interpretable
        for k in range(self.num_units):
            c = int(best[k])
            rows.append(
                [
                    k,
                    self.vocabulary.names[c],
                    self.vocabulary.categories[c],
                    round(float(best_iou[k]), 6),
                    bool(interpretable[k]),
                    float(self.thresholds[k]),
                ]
            )
        return columns, rows

    def summary(self) -> dict[str, float]:
        """Scalars: interpretable units (count and fraction of all units) in total and per category,
        unique concepts detected, and the mean best IoU."""
        k = max(self.num_units, 1)
        by_category = self.interpretable_by_category()
        unique = self.unique_concepts_by_category()
        total = int(self.interpretable.sum())
        out: dict[str, float] = {
            "interpretable": float(total),
            "interpretable_fraction": total / k,
            "mean_best_iou": float(self.best_iou.mean()) if self.num_units else 0.0,
            "unique_concepts": float(sum(unique.values())),
        }
        for category, count in by_category.items():
            out[f"interpretable/{category}"] = float(count)
            out[f"interpretable_fraction/{category}"] = count / k
            out[f"unique_concepts/{category}"] = float(unique[category])
        return out
