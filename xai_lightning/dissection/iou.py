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
    """Pixels where a unit's mask is on, and the concept labels to look them up in.

    Attributes:
        labels: concept labels of a set of images (e.g. the whole probe set).
        images: ``(n,)`` long row of each pixel's image in ``labels``.
        units: ``(n,)`` long unit whose mask is on.
        rows, columns: ``(n,)`` long position at the labels' resolution.
    """

    labels: ConceptLabels
    images: torch.Tensor
    units: torch.Tensor
    rows: torch.Tensor
    columns: torch.Tensor

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
        return ActivePixels(labels, b, k, y, x)


class DissectionIoU(Metric):
    """IoU of ``K`` units with the concepts of ``vocabulary``, accumulated over a probe set.

    ``update(pixels=..., concept_pixels=...)`` takes either or both of: the active pixels of the units
    (with the labels they index into), and the concepts' own pixel counts ``(C,)`` of a batch of
    images, each image exactly once (:meth:`ConceptLabels.concept_pixels`).
    ``compute()`` returns ``IoU (K, C)`` float64 (0 where the union is empty) with the counts behind it.

    Args:
        num_units: ``K``.
        vocabulary: the ``C`` concepts and their categories.
        sync_on_compute: add the counts of every process in :meth:`compute`.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    category_index: torch.Tensor  # (C,) long buffer: each concept's category
    intersection: torch.Tensor  # states, registered in __init__
    unit_pixels: torch.Tensor
    unit_total: torch.Tensor
    concept_pixels: torch.Tensor

    def __init__(self, num_units: int, vocabulary: ConceptVocabulary, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_units = num_units
        self.vocabulary = vocabulary
        concepts, categories = len(vocabulary), len(vocabulary.category_names)
        self.register_buffer("category_index", vocabulary.category_index, persistent=False)
        self.add_state("intersection", default=torch.zeros(num_units, concepts, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state(
            "unit_pixels", default=torch.zeros(num_units, categories, dtype=torch.long), dist_reduce_fx="sum"
        )
        self.add_state("unit_total", default=torch.zeros(num_units, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("concept_pixels", default=torch.zeros(concepts, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        pixels: ActivePixels | None = None,
        concept_pixels: torch.Tensor | None = None,
    ) -> None:
        if pixels is not None and len(pixels):
            units, images = pixels.units.long(), pixels.images.long()
            table = pixels.labels
            concepts = table.layers[images, :, pixels.rows, pixels.columns].long()  # (n, L): c + 1, 0 = none
            categories = table.labelled.shape[1]
            # A label counts only in an image labelled in its category (see the module docstring).
            category = torch.cat([torch.zeros(1, dtype=torch.long, device=units.device), self.category_index])
            carried = table.labelled.reshape(-1)[images.unsqueeze(1) * categories + category[concepts]]
            valid = (concepts > 0) & carried
            width = len(self.vocabulary) + 1
            flat = (units.unsqueeze(1) * width + concepts)[valid]
            counts = torch.bincount(flat, minlength=self.num_units * width).view(self.num_units, width)
            self.intersection += counts[:, 1:]
            self.unit_pixels.index_add_(0, units, table.labelled[images].long())
            self.unit_total += torch.bincount(units, minlength=self.num_units)
        if concept_pixels is not None:
            self.concept_pixels += concept_pixels.to(self.concept_pixels.device)

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"iou": (K, C) float64, "intersection": (K, C), "union": (K, C), "unit_pixels": (K,),
        "concept_pixels": (C,)}`` — counts over every process when synced."""
        return self.scores()

    def scores(self) -> dict[str, torch.Tensor]:
        """:meth:`compute` on this process's state, without torchmetrics' syncing and squeezing."""
        intersection = self.intersection.double()
        union = (
            self.unit_pixels[:, self.category_index].double() + self.concept_pixels.double().unsqueeze(0) - intersection
        )
        iou = torch.where(union > 0, intersection / union.clamp_min(1.0), torch.zeros_like(union))
        return {
            "iou": iou,
            "intersection": self.intersection.clone(),
            "union": union.long(),
            "unit_pixels": self.unit_total.clone(),
            "concept_pixels": self.concept_pixels.clone(),
        }
