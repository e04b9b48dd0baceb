"""BARS: red or green bars, horizontal or vertical, with colour confounded with the class at will.

The dataset of Goyal et al. (2019), "Explaining Classifiers with Causal Concept Effect (CaCE)":
the class is the bars' *orientation* (0 = horizontal, 1 = vertical); the bars' *colour*
(0 = red, 1 = green) is a nuisance concept tied to the class with probability ``confounding``
(red ↔ horizontal, green ↔ vertical) and drawn uniformly otherwise. So the observed agreement
P(colour = class) is ``(1 + confounding) / 2`` and the Pearson (phi) correlation between colour
and class is ``confounding``: 0 means colour carries no information about the class, 1 means
colour alone predicts it perfectly. A classifier may then learn orientation, colour, or both,
and only an intervention tells which: :meth:`Bars.intervene` re-renders the same images with the
colour set and nothing else changed (tested pixel by pixel).

Rendering is vectorised torch and deterministic: each image is a pure function of its latent
(bars' positions, lengths, widths, colour, the background grey and a noise seed that picks one of
a bank of seeded noise textures — cheaper than per-pixel hashing and just as reproducible).

The two colours are chosen so that R + G is 1.0 for both: a "colour-blind" reader of R + G sees
red and green bars identically — the analytic model whose causal colour effect is exactly 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset


__all__ = ["BAR_COLOURS", "Bars", "BarsLatent"]

#: RGB of the two bar colours, index 0 = red, 1 = green (R + G = 1 for both, see the module doc).
BAR_COLOURS: dict[str, tuple[float, float, float]] = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.9, 0.1)}
ORIENTATIONS: tuple[str, ...] = ("horizontal", "vertical")
MAX_BARS = 3
NOISE_BANK = 64  # distinct background-noise textures; a sample picks one by its noise_seed


@dataclass(frozen=True)
class BarsLatent:
    """The full description of N BARS images; every field has leading dimension N.

    Geometry is in fractions of the image side, so one latent renders at any resolution.
    """

    orientation: torch.Tensor  # (N,) long: 0 horizontal, 1 vertical — the class
    colour: torch.Tensor  # (N,) long: 0 red, 1 green — the concept
    present: torch.Tensor  # (N, MAX_BARS) bool: which bar slots are drawn (at least one)
    centre: torch.Tensor  # (N, MAX_BARS, 2) float (x, y) in [0, 1]
    length: torch.Tensor  # (N, MAX_BARS) float, fraction of the side
    width: torch.Tensor  # (N, MAX_BARS) float, fraction of the side
    background: torch.Tensor  # (N,) float grey level
    noise_seed: torch.Tensor  # (N,) long

    def __len__(self) -> int:
        return self.orientation.shape[0]

    def __getitem__(self, index: Any) -> "BarsLatent":
        if isinstance(index, int):
            index = [index]
        if not isinstance(index, (slice, torch.Tensor)):
            index = torch.as_tensor(index, dtype=torch.long)
        return BarsLatent(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

    def replace(self, **changes: Any) -> "BarsLatent":
        """A copy with fields replaced; a scalar is broadcast to all N samples."""
        values = {}
        for name, value in changes.items():
            current = getattr(self, name)
            tensor = torch.as_tensor(value, dtype=current.dtype)
            values[name] = tensor.expand_as(current).clone() if tensor.dim() < current.dim() else tensor.clone()
        return dataclasses.replace(self, **values)


class Bars(Dataset):
    """Seeded BARS images ``(3, S, S)`` in [0, 1], labelled by orientation, colour confounded with the label.

    Args:
        num_samples: number of images.
        confounding: probability in [0, 1] that a sample's colour is tied to its class (red for
            horizontal, green for vertical); otherwise the colour is a fair coin. 0: colour
            independent of the class; 1: colour determines the class.
        image_size: side in pixels (default 32).
        seed: latent and noise follow from it.
        noise: amplitude of the per-pixel background noise.

    Attributes:
        latent, images ``(N, 3, S, S)``, labels ``(N,)`` (orientation), colours ``(N,)``,
        bar_masks ``(N, S, S)`` bool (bar pixels).

    Items are dicts ``{"image", "label", "colour", "index"}``.
    """

    num_classes = 2
    class_names = ORIENTATIONS
    colour_names = tuple(BAR_COLOURS)

    def __init__(
        self, num_samples: int = 1000, confounding: float = 0.0, image_size: int = 32, seed: int = 0,
        noise: float = 0.08,
    ) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0; got {num_samples}")
        if not 0.0 <= confounding <= 1.0:
            raise ValueError(f"confounding must be a probability in [0, 1]; got {confounding}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels; got {image_size}")
        self.num_samples = num_samples
        self.confounding = confounding
        self.image_size = image_size
        self.seed = seed
        self.noise = noise
        self.latent = self.sample_latent(num_samples, torch.Generator().manual_seed(seed))
        self.labels = self.latent.orientation.clone()
        self.colours = self.latent.colour.clone()
        self.images, self.bar_masks = self.render(self.latent)

    def sample_latent(self, n: int, generator: torch.Generator) -> BarsLatent:
        """Draw ``n`` latents (vectorised); the colour is tied to the class with probability ``confounding``."""
        g = generator

        def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
            return torch.rand(*shape, generator=g) * (high - low) + low

        orientation = torch.randint(0, 2, (n,), generator=g)
        coin = torch.randint(0, 2, (n,), generator=g)
        tie = uniform(n) < self.confounding
        colour = torch.where(tie, orientation, coin)
        count = torch.randint(1, MAX_BARS + 1, (n,), generator=g)
        present = torch.arange(MAX_BARS).view(1, -1) < count.view(-1, 1)
        length = uniform(n, MAX_BARS, low=0.35, high=0.75)
        width = uniform(n, MAX_BARS, low=0.07, high=0.13)
        # Bars stay inside the image: along the bar by half its length, across by half its width.
        along = length / 2 + uniform(n, MAX_BARS) * (1 - length)
        across = width / 2 + uniform(n, MAX_BARS) * (1 - width)
        horizontal = (orientation == 0).view(-1, 1)
        x = torch.where(horizontal, along, across)
        y = torch.where(horizontal, across, along)
        return BarsLatent(
            orientation=orientation,
            colour=colour,
            present=present,
            centre=torch.stack([x, y], dim=2),
            length=length,
            width=width,
            background=uniform(n, low=0.3, high=0.5),
            noise_seed=torch.randint(0, 2**31 - 1, (n,), generator=g),
        )

    def render(self, latent: BarsLatent, image_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(N, 3, S, S)`` and bar masks ``(N, S, S)`` of a latent (vectorised, deterministic)."""
        size = image_size or self.image_size
        n = len(latent)
        coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
        px = coords.view(1, 1, 1, -1)  # (1, 1, 1, W)
        py = coords.view(1, 1, -1, 1)  # (1, 1, H, 1)
        cx = latent.centre[..., 0].view(n, MAX_BARS, 1, 1)
        cy = latent.centre[..., 1].view(n, MAX_BARS, 1, 1)
        half_long = (latent.length / 2).view(n, MAX_BARS, 1, 1)
        half_wide = (latent.width / 2).view(n, MAX_BARS, 1, 1)
        horizontal = (latent.orientation == 0).view(n, 1, 1, 1)
        half_x = torch.where(horizontal, half_long, half_wide)
        half_y = torch.where(horizontal, half_wide, half_long)
        inside = ((px - cx).abs() <= half_x) & ((py - cy).abs() <= half_y) & latent.present.view(n, MAX_BARS, 1, 1)
        mask = inside.any(dim=1)  # (N, H, W)
        grey = latent.background.view(n, 1, 1, 1)
        noise = self._noise_bank(size)[latent.noise_seed % NOISE_BANK]
        background = (grey + self.noise * (noise - 0.5)).clamp(0, 1)
        palette = torch.tensor(list(BAR_COLOURS.values()), dtype=torch.float32)  # (2, 3)
        ink = palette[latent.colour].view(n, 3, 1, 1).expand(n, 3, size, size)
        images = torch.where(mask.unsqueeze(1), ink, background)
        return images.contiguous(), mask

    def _noise_bank(self, size: int) -> torch.Tensor:
        """``(NOISE_BANK, 3, size, size)`` uniform noise textures, a pure function of the dataset seed."""
        banks = self.__dict__.setdefault("_noise_banks", {})
        if size not in banks:
            generator = torch.Generator().manual_seed(self.seed * 7919 + size)
            banks[size] = torch.rand(NOISE_BANK, 3, size, size, generator=generator)
        return banks[size]

    def intervene(self, indices: Sequence[int] | torch.Tensor | None = None, colour: Any = None,
                  orientation: Any = None) -> torch.Tensor:
        """Re-render stored samples with ``colour`` and/or ``orientation`` set (``do(C = c)``).

        ``colour`` is ``"red"``/``"green"``/0/1 or a per-sample ``(n,)`` tensor; everything not
        named (positions, lengths, widths, background, noise) stays as it was. Returns images
        ``(n, 3, S, S)``. ``indices=None`` means all samples.
        """
        rows = torch.arange(self.num_samples) if indices is None else torch.as_tensor(indices, dtype=torch.long).view(-1)
        changes: dict[str, Any] = {}
        for name, value, vocabulary in (("colour", colour, self.colour_names), ("orientation", orientation, ORIENTATIONS)):
            if value is None:
                continue
            if isinstance(value, str):
                if value not in vocabulary:
                    raise ValueError(f"Unknown {name} {value!r}; choose from {vocabulary}")
                value = vocabulary.index(value)
            tensor = torch.as_tensor(value, dtype=torch.long)
            if tensor.numel() and not ((tensor >= 0) & (tensor < len(vocabulary))).all():
                raise ValueError(f"{name} must be in 0..{len(vocabulary) - 1}; got {tensor.unique().tolist()}")
            changes[name] = tensor
        images, _ = self.render(self.latent[rows].replace(**changes))
        return images

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        return {"image": self.images[index], "label": int(self.labels[index]), "colour": int(self.colours[index]),
                "index": index}

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images (N, 3, S, S), labels (N,))``."""
        return self.images, self.labels
