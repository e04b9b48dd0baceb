"""Dataset-wide IoU between unit masks and concept masks, accumulated as counts.

Bau et al. (2017) score unit ``k`` against concept ``c`` by

    IoU_{k,c} = Σ_x |M_k(x) ∩ L_c(x)| / Σ_x |M_k(x) ∪ L_c(x)|

summed over the probe images ``x`` that carry labels of ``c``'s category (an image without part
annotations says nothing about a unit's overlap with parts). With ``|M ∪ L| = |M| + |L| - |M ∩ L|``
three counts suffice, whatever the number of images:

* ``intersection (K, C)`` — unit-``k`` pixels labelled ``c``;
* ``unit_pixels (K, G)`` — unit-``k`` pixels in images labelled in category ``g``;
* ``concept_pixels (C,)`` — pixels of ``c`` (in images labelled in its category).

Memory is ``O(K × C)``, independent of the number of images, and the counts add up across
processes. Updates take the *active* pixels of the units (where ``M_k`` is true) rather than
dense masks: after thresholding at the top 0.5 % they are few.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchmetrics import Metric

from xai_lightning.dissection.concept_labels import ConceptLabels
from xai_lightning.dissection.vocabulary import ConceptVocabulary

__all__ = ["ActivePixels", "DissectionIoU"]


@dataclass(frozen=True)
class ActivePixels:
    """Pixels where a unit's mask is on, with what the concept labels say about them.

    Attributes:
        units: ``(n,)`` long unit of each active pixel.
        concepts: ``(n, L)`` integer concept labels of the pixel (``c + 1``; 0 = none).
        labelled: ``(n, G)`` bool categories labelled in the pixel's image.
    """

    units: torch.Tensor
    concepts: torch.Tensor
    labelled: torch.Tensor

    def __len__(self) -> int:
        return self.units.shape[0]

    @staticmethod
    def from_masks(unit_masks: torch.Tensor, labels: ConceptLabels) -> "ActivePixels":
        """From dense unit masks ``(B, K, H, W)`` bool at the labels' resolution."""
        if unit_masks.shape[0] != len(labels) or unit_masks.shape[-2:] != labels.layers.shape[-2:]:
            raise ValueError(
                f"Unit masks {tuple(unit_masks.shape)} do not match the concept labels {tuple(labels.layers.shape)}"
            )
        b, k, y, x = unit_masks.nonzero(as_tuple=True)
        return ActivePixels.gather(labels, b, k, y, x)

    @staticmethod
    def gather(
        labels: ConceptLabels, images: torch.Tensor, units: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor
    ) -> "ActivePixels":
        """Look up the labels of active pixels given by their image, unit and position."""
        concepts = labels.layers.permute(0, 2, 3, 1)[images, rows, columns]  # (n, L)
        return ActivePixels(units=units, concepts=concepts, labelled=labels.labelled[images])

    @staticmethod
    def cat(parts: list["ActivePixels"]) -> "ActivePixels":
        return ActivePixels(
            units=torch.cat([p.units for p in parts]),
            concepts=torch.cat([p.concepts for p in parts]),
            labelled=torch.cat([p.labelled for p in parts]),
        )

    def select(self, rows: torch.Tensor) -> "ActivePixels":
        return ActivePixels(self.units[rows], self.concepts[rows], self.labelled[rows])


class DissectionIoU(Metric):
    """IoU of ``K`` units with the concepts of ``vocabulary``, accumulated over a probe set.

    ``update(pixels=..., labels=...)`` takes either or both of: the active pixels of the units, and
    the concept labels of a batch (for the concepts' own pixel counts — each image exactly once).
    ``compute()`` returns ``IoU (K, C)`` float64 (0 where the union is empty) with the counts behind it.

    Args:
        num_units: ``K``.
        vocabulary: the ``C`` concepts and their categories.
        sync_on_compute: add the counts of every process in :meth:`compute`.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, num_units: int, vocabulary: ConceptVocabulary, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_units = num_units
        self.vocabulary = vocabulary
        concepts, categories = len(vocabulary), len(vocabulary.category_names)
        self.register_buffer("category_index", vocabulary.category_index, persistent=False)
        self.add_state("intersection", default=torch.zeros(num_units, concepts, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("unit_pixels", default=torch.zeros(num_units, categories, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("unit_total", default=torch.zeros(num_units, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("concept_pixels", default=torch.zeros(concepts, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pixels: ActivePixels | None = None, labels: ConceptLabels | None = None) -> None:
        if pixels is not None and len(pixels):
            units = pixels.units.long()
            concepts = pixels.concepts.long()
            # A label counts only in an image labelled in its category (see the module docstring).
            category = torch.cat([torch.zeros(1, dtype=torch.long, device=units.device), self.category_index + 1])
            carried = torch.cat([torch.zeros_like(pixels.labelled[:, :1]), pixels.labelled], dim=1)
            valid = (concepts > 0) & carried.gather(1, category[concepts])
            width = len(self.vocabulary) + 1
            flat = (units.unsqueeze(1) * width + concepts)[valid]
            counts = torch.bincount(flat, minlength=self.num_units * width).view(self.num_units, width)
            self.intersection += counts[:, 1:]
            self.unit_pixels.index_add_(0, units, pixels.labelled.long())
            self.unit_total += torch.bincount(units, minlength=self.num_units)
        if labels is not None:
            self.concept_pixels += labels.concept_pixels(self.vocabulary).to(self.concept_pixels.device)

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"iou": (K, C) float64, "intersection": (K, C), "union": (K, C), "unit_pixels": (K,),
        "concept_pixels": (C,)}`` — counts over every process when synced."""
        return self.scores()

    def scores(self) -> dict[str, torch.Tensor]:
        """:meth:`compute` on this process's state, without torchmetrics' syncing and squeezing."""
        intersection = self.intersection.double()
        union = self.unit_pixels[:, self.category_index].double() + self.concept_pixels.double().unsqueeze(0) - intersection
        iou = torch.where(union > 0, intersection / union.clamp_min(1.0), torch.zeros_like(union))
        return {
            "iou": iou,
            "intersection": self.intersection.clone(),
            "union": union.long(),
            "unit_pixels": self.unit_total.clone(),
            "concept_pixels": self.concept_pixels.clone(),
        }
