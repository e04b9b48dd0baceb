"""Coloured digits: scikit-learn's handwritten digits tinted with a class-correlated colour.

Each class ``k`` has a mean hue ``k / 10`` on the colour wheel (0 red, 0.1 orange, ... 0.5 cyan,
...); a sample's hue is its class's mean hue plus Gaussian noise of standard deviation ``sigma``
(in turns of the wheel, wrapped). Small ``sigma`` confounds colour with the class (a colour
reader can classify without looking at the shape); ``sigma >= 0.3`` makes the hue nearly
uniform, i.e. uninformative. This is the colour-confounded digits setting of Goyal et al.
(2019, CaCE). The digit's grey level ``a`` in [0, 1] becomes the pixel ``a · rgb(hue)`` (fully
saturated, black background), so :meth:`ColouredDigits.intervene` can re-tint the *same* digit:
the ink intensity ``max_c pixel_c = a`` is unchanged, only the hue moves.

Shape can be made harder than colour with ``jitter``: each digit is shifted by up to ``jitter``
pixels in x and y (seeded, zeros shifted in), so its class must be read from a moving shape while
its colour stays a global cue. The shift is part of the digit (the ``intensity``), so an
intervention re-tints the same shifted digit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from xai_lightning.data.digits import HandwrittenDigits

__all__ = ["ColouredDigits", "class_hues", "hue_to_rgb", "shift_images"]

NUM_CLASSES = 10


def class_hues(num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Mean hue of each class, ``(num_classes,)`` in turns of the colour wheel: ``k / num_classes``."""
    return torch.arange(num_classes, dtype=torch.float32) / num_classes


def hue_to_rgb(hue: torch.Tensor) -> torch.Tensor:
    """Fully saturated, full-value HSV → RGB, vectorised: ``(...,)`` hues in turns → ``(..., 3)`` in [0, 1]."""
    hue = torch.remainder(hue, 1.0)
    # Standard closed form: channel n gets  1 - clamp(min(k, 4 - k), 0, 1),  k = (n + 6·hue) mod 6.
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=hue.dtype, device=hue.device)
    k = torch.remainder(offsets + 6.0 * hue.unsqueeze(-1), 6.0)
    return 1.0 - torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def shift_images(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Translate each image ``(N, C, S, S)`` by ``shifts (N, 2)`` pixels (dx, dy), filling with zeros."""
    n, _, height, width = images.shape
    pad = int(shifts.abs().max()) if shifts.numel() else 0
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    rows = torch.arange(height).view(1, -1) + pad - shifts[:, 1].view(-1, 1)  # (N, S): source row of each output row
    cols = torch.arange(width).view(1, -1) + pad - shifts[:, 0].view(-1, 1)
    batch = torch.arange(n).view(-1, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows.view(n, -1, 1), cols.view(n, 1, -1)]  # (N, S, S, C)
    return out.permute(0, 3, 1, 2).contiguous()


def wrapped_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Signed hue difference ``a − b`` wrapped into [−0.5, 0.5) turns."""
    return torch.remainder(a - b + 0.5, 1.0) - 0.5


class ColouredDigits(Dataset):
    """Handwritten digits ``(3, S, S)`` tinted with hue ``~ N(label / 10, sigma²)`` (wrapped).

    Args:
        split: ``"train"``, ``"val"`` or ``"all"`` of the 1,797 digits (stratified, seeded split).
        sigma: spread of the hue around the class mean, in turns of the wheel (0: the class
            fixes the colour; >= 0.3: nearly uniform).
        image_size: side after bilinear upsampling from 8×8.
        seed: split and hue noise follow from it.
        jitter: maximal shift of each digit in pixels (x and y independently, uniform); 0 = none.

    Attributes:
        images ``(N, 3, S, S)``, labels ``(N,)``, hues ``(N,)``, intensity ``(N, 1, S, S)``
        (the grey digit), hue_bins ``(N,)`` (the class whose mean hue is nearest — the observed
        colour *concept*).

    Items are dicts ``{"image", "label", "hue", "index"}``.
    """

    num_classes = NUM_CLASSES

    def __init__(
        self,
        split: Literal["train", "val", "all"] = "all",
        sigma: float = 0.05,
        image_size: int = 32,
        seed: int = 0,
        val_fraction: float = 0.2,
        jitter: int = 0,
    ) -> None:
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0 (turns of the colour wheel); got {sigma}")
        if not 0 <= jitter < image_size // 2:
            raise ValueError(f"jitter must be in 0..{image_size // 2 - 1} pixels; got {jitter}")
        grey = HandwrittenDigits(split, image_size=image_size, channels=1, val_fraction=val_fraction, seed=seed)
        self.split = split
        self.sigma = sigma
        self.image_size = image_size
        self.seed = seed
        self.jitter = jitter
        self.labels = grey.labels
        generator = torch.Generator().manual_seed(seed * 7919 + {"train": 0, "val": 1, "all": 2}[split])
        noise = torch.randn(len(self.labels), generator=generator)
        shifts = torch.randint(-jitter, jitter + 1, (len(self.labels), 2), generator=generator)
        self.intensity = shift_images(grey.images, shifts) if jitter else grey.images  # (N, 1, S, S)
        self.hues = torch.remainder(class_hues()[self.labels] + sigma * noise, 1.0)
        self.hue_bins = self.nearest_class_hue(self.hues)
        self.images = self.render(torch.arange(len(self.labels)), self.hues)

    @staticmethod
    def nearest_class_hue(hues: torch.Tensor) -> torch.Tensor:
        """``(N,)`` index of the class whose mean hue is nearest to each hue (on the wheel)."""
        return wrapped_difference(hues.unsqueeze(1), class_hues().unsqueeze(0)).abs().argmin(dim=1)

    def render(self, indices: torch.Tensor, hues: torch.Tensor) -> torch.Tensor:
        """Digits ``indices`` tinted with ``hues`` ``(n,)`` (or one hue for all): ``(n, 3, S, S)``."""
        rows = torch.as_tensor(indices, dtype=torch.long).view(-1)
        hues = torch.as_tensor(hues, dtype=torch.float32).expand(rows.shape[0])
        rgb = hue_to_rgb(hues).view(-1, 3, 1, 1)
        return (self.intensity[rows] * rgb).contiguous()

    def intervene(
        self, indices: Sequence[int] | torch.Tensor | None = None, hue: Any = None, colour_of_class: Any = None
    ) -> torch.Tensor:
        """Re-tint the same digits (``do(colour = c)``): give ``hue`` in turns, or ``colour_of_class``
        (a class index, or ``(n,)`` indices) to use that class's mean hue. Returns ``(n, 3, S, S)``."""
        if indices is None:
            rows = torch.arange(len(self.labels))
        else:
            rows = torch.as_tensor(indices, dtype=torch.long).view(-1)
        if (hue is None) == (colour_of_class is None):
            raise ValueError(
                "Give exactly one of hue= (turns of the colour wheel) or colour_of_class= (a class index)."
            )
        if colour_of_class is not None:
            classes = torch.as_tensor(colour_of_class, dtype=torch.long)
            if not ((classes >= 0) & (classes < self.num_classes)).all():
                raise ValueError(
                    f"colour_of_class must be in 0..{self.num_classes - 1}; got {classes.unique().tolist()}"
                )
            hue = class_hues()[classes]
        return self.render(rows, hue)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int | float]:
        return {
            "image": self.images[index],
            "label": int(self.labels[index]),
            "hue": float(self.hues[index]),
            "index": index,
        }

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images (N, 3, S, S), labels (N,))``."""
        return self.images, self.labels
