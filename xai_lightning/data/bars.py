"""BARS: red or green bars, horizontal or vertical, with colour confounded with the class at will.

The dataset of Goyal et al. (2019), "Explaining Classifiers with Causal Concept Effect (CaCE)":
the class is the bars' *orientation* (0 = horizontal, 1 = vertical); the bars' *colour*
(0 = red, 1 = green) is a nuisance concept drawn from ``P(colour | class)``:

* ``colour_given_class=[[p_red, p_green], [p_red, p_green]]`` — one row per class (horizontal,
  vertical), each row a probability distribution over (red, green). Asymmetric rows are allowed,
  e.g. ``[[1, 0], [0.5, 0.5]]``: horizontal bars are always red, vertical ones either colour.
* ``confounding=p`` is the symmetric shorthand ``[[(1+p)/2, (1-p)/2], [(1-p)/2, (1+p)/2]]``:
  with probability p the colour is tied to the class (red ↔ horizontal, green ↔ vertical),
  otherwise a fair coin. The observed agreement P(colour = class) is then ``(1 + p) / 2`` and the
  Pearson (phi) correlation between colour and class is ``p``.

A classifier may learn orientation, colour, or both, and only an intervention tells which:
:meth:`Bars.intervene` re-renders the same images with the colour set and nothing else changed
(tested pixel by pixel).

**Shape is harder than colour** (the point of the study): a model must be *tempted* by the colour
shortcut, or the ground-truth effect of colour stays 0 at every confounding level below 1 and no
estimator can be told right or wrong. The defaults (:data:`DEFAULT_GEOMETRY`) make orientation a
weak cue and colour a strong one:

* one short, wide bar per image — length 20–55 % and width 20–30 % of the side (a bar is never
  wider than long), so many bars are nearly square and their orientation is ambiguous even to a
  perfect reader, while every bar pixel shows the colour;
* a random position (position jitter: no fixed place to look) on a grey background with
  per-pixel noise (``noise=0.1``).

With these settings a small CNN trained on unconfounded data reads orientation (≈ 85 % accurate)
and ignores colour, and trained on confounded data it takes the colour shortcut the more the
stronger the confounding (``experiments/cace``; the README has the measured curve). One large bar
also keeps the images within reach of the small conditional VAE behind EncDec-CaCE. Pass
``bar_length=(0.35, 0.75), bar_width=(0.07, 0.13), max_bars=3, noise=0.08`` for the easy geometry of
earlier versions, on which CNNs learn orientation perfectly and never use colour (measured GT-CaCE
≈ 0 up to 95 % confounding).

Rendering is vectorised torch and deterministic: each image is a pure function of its latent
(bars' positions, lengths, widths, colour, the background grey and a noise seed that picks one of
a bank of seeded noise textures — cheaper than per-pixel hashing and just as reproducible).

The two colours are chosen so that R + G is 1.0 for both: a "colour-blind" reader of R + G sees
red and green bars identically (:func:`orientation_evidence` is one) — the analytic model whose
causal colour effect is exactly 0.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = [
    "BAR_COLOURS",
    "DEFAULT_GEOMETRY",
    "Bars",
    "BarsLatent",
    "colour_given_class_table",
    "orientation_evidence",
]

#: RGB of the two bar colours, index 0 = red, 1 = green (R + G = 1 for both, see the module doc).
BAR_COLOURS: dict[str, tuple[float, float, float]] = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.9, 0.1)}
ORIENTATIONS: tuple[str, ...] = ("horizontal", "vertical")
NOISE_BANK = 64  # distinct background-noise textures; a sample picks one by its noise_seed

#: Default generator settings (fractions of the image side; noise amplitude in grey levels).
DEFAULT_GEOMETRY: dict[str, Any] = {"bar_length": (0.2, 0.55), "bar_width": (0.2, 0.3), "max_bars": 1, "noise": 0.1}


def colour_given_class_table(
    confounding: float | None = None, colour_given_class: Sequence[Sequence[float]] | torch.Tensor | None = None
) -> torch.Tensor:
    """``(2, 2)`` table ``P(colour | class)`` (rows horizontal, vertical; columns red, green).

    Exactly one of ``confounding`` (symmetric shorthand) and ``colour_given_class`` may be given;
    neither means no confounding. Raises ``ValueError`` naming the fix for tables that are not
    2 × 2, hold values outside [0, 1], or have rows that do not sum to 1.
    """
    if confounding is not None and colour_given_class is not None:
        raise ValueError(
            "Give either confounding=p (symmetric shorthand) or colour_given_class=[[p_red, p_green], "
            "[p_red, p_green]], not both."
        )
    if colour_given_class is None:
        p = 0.0 if confounding is None else float(confounding)
        if not 0.0 <= p <= 1.0 or math.isnan(p):
            raise ValueError(f"confounding must be a probability in [0, 1]; got {confounding}")
        return torch.tensor([[(1 + p) / 2, (1 - p) / 2], [(1 - p) / 2, (1 + p) / 2]], dtype=torch.float64)
    try:
        table = torch.as_tensor(colour_given_class, dtype=torch.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"colour_given_class must be a 2 x 2 list of numbers; got {colour_given_class!r}") from error
    if table.shape != (2, 2):
        raise ValueError(
            f"colour_given_class must be 2 x 2: one row per class {ORIENTATIONS}, one column per colour "
            f"{tuple(BAR_COLOURS)}; got shape {tuple(table.shape)}"
        )
    if torch.isnan(table).any() or (table < 0).any() or (table > 1).any():
        raise ValueError(f"colour_given_class entries must be probabilities in [0, 1]; got {table.tolist()}")
    sums = table.sum(dim=1)
    if not torch.allclose(sums, torch.ones(2, dtype=torch.float64), atol=1e-6):
        raise ValueError(
            f"Each row of colour_given_class is P(red | class), P(green | class) and must sum to 1; "
            f"got row sums {[round(float(s), 6) for s in sums]} for {table.tolist()}"
        )
    return table


def orientation_evidence(images: torch.Tensor) -> torch.Tensor:
    """``(N,)`` colour-blind evidence for "vertical": variance of the column means minus that of the row means of R + G.

    R + G is identical for red and green bars, so this reading is unchanged by a colour
    intervention; positive means vertical structure. Used as an independent shape probe (e.g. to
    measure whether a counterfactual generator changed the shape when only the colour should change).
    """
    if images.dim() != 4 or images.shape[1] < 2:
        raise ValueError(f"images must be (N, 3, H, W) RGB; got shape {tuple(images.shape)}")
    ink = images[:, 0] + images[:, 1]
    return ink.mean(dim=1).var(dim=1) - ink.mean(dim=2).var(dim=1)


@dataclass(frozen=True)
class BarsLatent:
    """The full description of N BARS images; every field has leading dimension N.

    Geometry is in fractions of the image side, so one latent renders at any resolution.
    """

    orientation: torch.Tensor  # (N,) long: 0 horizontal, 1 vertical — the class
    colour: torch.Tensor  # (N,) long: 0 red, 1 green — the concept
    present: torch.Tensor  # (N, max_bars) bool: which bar slots are drawn (at least one)
    centre: torch.Tensor  # (N, max_bars, 2) float (x, y) in [0, 1]
    length: torch.Tensor  # (N, max_bars) float, fraction of the side
    width: torch.Tensor  # (N, max_bars) float, fraction of the side
    background: torch.Tensor  # (N,) float grey level
    noise_seed: torch.Tensor  # (N,) long

    def __len__(self) -> int:
        return self.orientation.shape[0]

    def __getitem__(self, index: Any) -> BarsLatent:
        if isinstance(index, int):
            index = [index]
        if not isinstance(index, (slice, torch.Tensor)):
            index = torch.as_tensor(index, dtype=torch.long)
        return BarsLatent(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

    def replace(self, **changes: Any) -> BarsLatent:
        """A copy with fields replaced; a scalar is broadcast to all N samples."""
        values = {}
        for name, value in changes.items():
            current = getattr(self, name)
            tensor = torch.as_tensor(value, dtype=current.dtype)
            values[name] = tensor.expand_as(current).clone() if tensor.dim() < current.dim() else tensor.clone()
        return dataclasses.replace(self, **values)


def _check_range(name: str, value: Sequence[float], high: float = 1.0) -> tuple[float, float]:
    try:
        low, top = (float(v) for v in value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a (min, max) pair of fractions of the image side; got {value!r}") from error
    if not 0 < low <= top <= high:
        raise ValueError(f"{name} must satisfy 0 < min <= max <= {high}; got {value!r}")
    return low, top


class Bars(Dataset):
    """Seeded BARS images ``(3, S, S)`` in [0, 1], labelled by orientation, colour drawn from ``P(colour | class)``.

    Args:
        num_samples: number of images.
        confounding: symmetric shorthand: probability in [0, 1] that a sample's colour is tied to
            its class (red for horizontal, green for vertical); otherwise a fair coin. 0: colour
            independent of the class; 1: colour determines the class. Default (and None): 0
            unless ``colour_given_class`` is given.
        image_size: side in pixels (default 32).
        seed: latent and noise follow from it.
        noise: amplitude of the per-pixel background noise (uniform, ± noise / 2 around the grey).
        colour_given_class: ``[[P(red | horizontal), P(green | horizontal)], [P(red | vertical),
            P(green | vertical)]]``; rows must sum to 1. Mutually exclusive with ``confounding``.
        bar_length, bar_width: ``(min, max)`` of each bar's length and width, fractions of the side.
        max_bars: each image has 1..max_bars bars (uniform).

    Attributes:
        latent, images ``(N, 3, S, S)``, labels ``(N,)`` (orientation), colours ``(N,)``,
        bar_masks ``(N, S, S)`` bool (bar pixels), colour_given_class ``(2, 2)`` float64.

    Items are dicts ``{"image", "label", "colour", "index"}``.
    """

    num_classes = 2
    class_names = ORIENTATIONS
    colour_names = tuple(BAR_COLOURS)

    def __init__(
        self,
        num_samples: int = 1000,
        confounding: float | None = None,
        image_size: int = 32,
        seed: int = 0,
        noise: float = DEFAULT_GEOMETRY["noise"],
        colour_given_class: Sequence[Sequence[float]] | None = None,
        bar_length: tuple[float, float] = DEFAULT_GEOMETRY["bar_length"],
        bar_width: tuple[float, float] = DEFAULT_GEOMETRY["bar_width"],
        max_bars: int = DEFAULT_GEOMETRY["max_bars"],
    ) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0; got {num_samples}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels; got {image_size}")
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1] (grey levels); got {noise}")
        if max_bars < 1:
            raise ValueError(f"max_bars must be >= 1; got {max_bars}")
        self.colour_given_class = colour_given_class_table(confounding, colour_given_class)
        self.bar_length = _check_range("bar_length", bar_length)
        self.bar_width = _check_range("bar_width", bar_width, high=self.bar_length[1])
        self.num_samples = num_samples
        self.confounding = confounding if colour_given_class is None else None
        self.image_size = image_size
        self.seed = seed
        self.noise = noise
        self.max_bars = max_bars
        self.latent = self.sample_latent(num_samples, torch.Generator().manual_seed(seed))
        self.labels = self.latent.orientation.clone()
        self.colours = self.latent.colour.clone()
        self.images, self.bar_masks = self.render(self.latent)

    def sample_latent(self, n: int, generator: torch.Generator) -> BarsLatent:
        """Draw ``n`` latents (vectorised); the colour follows ``colour_given_class`` row of the class."""
        g = generator

        def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
            return torch.rand(*shape, generator=g) * (high - low) + low

        orientation = torch.randint(0, 2, (n,), generator=g)
        p_green = self.colour_given_class[:, 1].float()[orientation]
        colour = (uniform(n) < p_green).long()
        k = self.max_bars
        count = torch.randint(1, k + 1, (n,), generator=g)
        present = torch.arange(k).view(1, -1) < count.view(-1, 1)
        length = uniform(n, k, low=self.bar_length[0], high=self.bar_length[1])
        width = uniform(n, k, low=self.bar_width[0], high=self.bar_width[1])
        # A bar is never longer across than along: at worst it is square (orientation ambiguous, not wrong).
        length = torch.maximum(length, width)
        # Bars stay inside the image: along the bar by half its length, across by half its width.
        along = length / 2 + uniform(n, k) * (1 - length)
        across = width / 2 + uniform(n, k) * (1 - width)
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
        n, k = len(latent), latent.present.shape[1]
        coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
        px = coords.view(1, 1, 1, -1)  # (1, 1, 1, W)
        py = coords.view(1, 1, -1, 1)  # (1, 1, H, 1)
        cx = latent.centre[..., 0].view(n, k, 1, 1)
        cy = latent.centre[..., 1].view(n, k, 1, 1)
        half_long = (latent.length / 2).view(n, k, 1, 1)
        half_wide = (latent.width / 2).view(n, k, 1, 1)
        horizontal = (latent.orientation == 0).view(n, 1, 1, 1)
        half_x = torch.where(horizontal, half_long, half_wide)
        half_y = torch.where(horizontal, half_wide, half_long)
        inside = ((px - cx).abs() <= half_x) & ((py - cy).abs() <= half_y) & latent.present.view(n, k, 1, 1)
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

    def intervene(
        self, indices: Sequence[int] | torch.Tensor | None = None, colour: Any = None, orientation: Any = None
    ) -> torch.Tensor:
        """Re-render stored samples with ``colour`` and/or ``orientation`` set (``do(C = c)``).

        ``colour`` is ``"red"``/``"green"``/0/1 or a per-sample ``(n,)`` tensor; everything not
        named (positions, lengths, widths, background, noise) stays as it was. Returns images
        ``(n, 3, S, S)``. ``indices=None`` means all samples.
        """
        if indices is None:
            rows = torch.arange(self.num_samples)
        else:
            rows = torch.as_tensor(indices, dtype=torch.long).view(-1)
        changes: dict[str, Any] = {}
        latents = (("colour", colour, self.colour_names), ("orientation", orientation, ORIENTATIONS))
        for name, value, vocabulary in latents:
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
        return {
            "image": self.images[index],
            "label": int(self.labels[index]),
            "colour": int(self.colours[index]),
            "index": index,
        }

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images (N, 3, S, S), labels (N,))``."""
        return self.images, self.labels
