"""Per-pixel concept labels of a batch of images, stored as label *layers* (as Broden stores them).

A dense mask per concept, ``(B, C, H, W)`` bool, costs ``C`` bytes a pixel: fine for ConceptWorld
(24 concepts), impossible for the real Broden (~1,200 labels). Broden instead stores, per image
and category, label maps whose pixels hold a label number (several maps where labels overlap),
plus image-level labels (scene) as plain numbers. :class:`ConceptLabels` is that representation
in tensors: ``layers (B, L, H, W)`` holding ``concept index + 1`` (0 = no label), with ``L`` the
largest number of concepts on one pixel, and ``labelled (B, G)``: whether an image carries labels
of each category — the images that count for a concept of that category in network dissection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from xai_lightning.dissection.vocabulary import ConceptVocabulary

__all__ = ["ConceptLabels", "check_mask_resolution"]


def _label_dtype(num_concepts: int) -> torch.dtype:
    return torch.int16 if num_concepts < torch.iinfo(torch.int16).max else torch.int32


@dataclass(frozen=True)
class ConceptLabels:
    """Concept labels of ``B`` images.

    Attributes:
        layers: ``(B, L, H, W)`` integer: ``c + 1`` where concept ``c`` covers the pixel, 0 where a
            layer has no label. A pixel covered by several concepts has one in each of several layers.
        labelled: ``(B, G)`` bool over the vocabulary's :attr:`~ConceptVocabulary.category_names`:
            the image carries labels of that category (and counts towards its concepts' IoUs).
    """

    layers: torch.Tensor
    labelled: torch.Tensor
    # Per-image concept pixel counts, computed once per vocabulary (see :meth:`image_concept_pixels`).
    _per_image: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.layers.dim() != 4:
            raise ValueError(f"Concept label layers must be (B, L, H, W); got {tuple(self.layers.shape)}")
        if self.labelled.dim() != 2 or self.labelled.shape[0] != self.layers.shape[0]:
            raise ValueError(
                f"labelled must be (B, G) with B = {self.layers.shape[0]}; got {tuple(self.labelled.shape)}"
            )

    def __len__(self) -> int:
        return self.layers.shape[0]

    @property
    def resolution(self) -> tuple[int, int]:
        return int(self.layers.shape[-2]), int(self.layers.shape[-1])

    def select(self, rows: torch.Tensor | slice) -> "ConceptLabels":
        return ConceptLabels(self.layers[rows], self.labelled[rows])

    def to(self, device: torch.device | str) -> "ConceptLabels":
        if self.layers.device == torch.device(device) and self.labelled.device == torch.device(device):
            return self  # keeps the cached per-image counts
        return ConceptLabels(self.layers.to(device), self.labelled.to(device))

    @staticmethod
    def cat(parts: list["ConceptLabels"]) -> "ConceptLabels":
        """Concatenate along the batch, padding to the largest number of layers."""
        depth = max(part.layers.shape[1] for part in parts)
        layers = [
            torch.nn.functional.pad(p.layers, (0, 0, 0, 0, 0, depth - p.layers.shape[1]))
            if p.layers.shape[1] < depth
            else p.layers
            for p in parts
        ]
        return ConceptLabels(torch.cat(layers), torch.cat([p.labelled for p in parts]))

    @staticmethod
    def from_masks(
        masks: torch.Tensor, vocabulary: ConceptVocabulary, labelled: torch.Tensor | None = None
    ) -> "ConceptLabels":
        """Pack dense masks ``(B, C, H, W)`` bool (channels in vocabulary order) into layers.

        The k-th concept covering a pixel (in vocabulary order) goes to layer k, so the packing is
        lossless: :meth:`to_masks` gives the masks back. ``labelled`` defaults to "the image has a
        pixel of some concept of the category".
        """
        if masks.dim() != 4 or masks.shape[1] != len(vocabulary):
            raise ValueError(
                f"Concept masks must be (B, C, H, W) with C = {len(vocabulary)} concepts; got {tuple(masks.shape)}"
            )
        masks = masks.bool()
        batch, _, height, width = masks.shape
        rank = masks.to(torch.int32).cumsum(1) - 1  # position of each concept among those on its pixel
        depth = max(int(rank.max()) + 1, 1) if masks.numel() else 1
        layers = torch.zeros(batch, depth, height, width, dtype=_label_dtype(len(vocabulary)), device=masks.device)
        b, c, y, x = masks.nonzero(as_tuple=True)
        layers[b, rank[b, c, y, x].long(), y, x] = (c + 1).to(layers.dtype)
        if labelled is None:
            present = masks.flatten(2).any(2).float()  # (B, C)
            one_hot = torch.nn.functional.one_hot(vocabulary.category_index, len(vocabulary.category_names))
            labelled = (present @ one_hot.float().to(masks.device)) > 0
        return ConceptLabels(layers, labelled.bool())

    def to_masks(self, num_concepts: int) -> torch.Tensor:
        """Dense masks ``(B, C, H, W)`` bool (for small vocabularies, displays and tests)."""
        batch, _, height, width = self.layers.shape
        masks = torch.zeros(batch, num_concepts + 1, height, width, dtype=torch.bool, device=self.layers.device)
        masks.scatter_(1, self.layers.long(), True)
        return masks[:, 1:]

    def concept_pixels(self, vocabulary: ConceptVocabulary, images: torch.Tensor | None = None) -> torch.Tensor:
        """``(C,)`` long: pixels of each concept, over the images (all, or rows ``images``) labelled in
        its category."""
        per_image = self.image_concept_pixels(vocabulary)
        return (per_image if images is None else per_image[images]).sum(0)

    def image_concept_pixels(self, vocabulary: ConceptVocabulary, chunk: int = 256) -> torch.Tensor:
        """``(B, C)`` long: pixels of each concept in each image, 0 where the image is not labelled in
        the concept's category. Computed once per vocabulary, ``chunk`` images at a time, and cached."""
        key = (vocabulary.names, vocabulary.categories)
        if key not in self._per_image:
            category = vocabulary.category_index.to(self.layers.device)
            width = len(vocabulary) + 1
            parts = []
            for start in range(0, self.layers.shape[0], chunk):
                layers = self.layers[start : start + chunk]
                rows = layers.shape[0]
                # Per image, how many pixels each label has: one histogram over (image, label) pairs.
                offsets = torch.arange(rows, device=layers.device).view(-1, 1, 1, 1) * width
                counts = torch.bincount((layers.long() + offsets).flatten(), minlength=rows * width).view(rows, width)
                # A label only counts in an image that carries its category.
                parts.append(counts[:, 1:] * self.labelled[start : start + chunk, category])
            self._per_image[key] = (
                torch.cat(parts)
                if parts
                else torch.zeros(0, len(vocabulary), dtype=torch.long, device=self.layers.device)
            )
        return self._per_image[key]


def check_mask_resolution(
    images_shape: torch.Size | tuple[int, ...], masks_shape: torch.Size | tuple[int, ...]
) -> None:
    """Masks must have the images' resolution, or a resolution smaller by one integer factor
    (Broden stores 112×112 segmentations for 224×224 images). Raises naming both shapes."""
    image_h, image_w = int(images_shape[-2]), int(images_shape[-1])
    mask_h, mask_w = int(masks_shape[-2]), int(masks_shape[-1])
    ok = (
        mask_h > 0
        and mask_w > 0
        and image_h % mask_h == 0
        and image_w % mask_w == 0
        and (image_h // mask_h == image_w // mask_w)
    )
    if not ok:
        raise ValueError(
            f"Concept masks of shape {tuple(masks_shape)} do not match the images of shape {tuple(images_shape)}: "
            f"masks must be {image_h}x{image_w} like the images (or smaller by one integer factor in both "
            "dimensions, as Broden's 112x112 segmentations of 224x224 images). Resize the masks (nearest "
            "neighbour) or the images so that they agree."
        )
