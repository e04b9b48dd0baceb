"""A binary concept intervention on a set of samples: what every CaCE estimator consumes.

Goyal et al. (2019) define the causal concept effect of a binary concept C on a classifier
output f as ``CaCE = E[f(I) | do(C = 1)] − E[f(I) | do(C = 0)]``. Our concepts are categorical
latents with K values (BARS colour: red/green; coloured digits: the hue's nearest class colour;
ConceptWorld: a colour/texture/shape); the binary concept "C = 1" sets the latent to a chosen
``treated`` value, "C = 0" to a ``control`` value (one per sample, so "any other colour" can be
drawn per sample). A :class:`ConceptIntervention` bundles, for N samples drawn from the data
distribution:

* the observed images and their observed concept values (for the observational ConExp and for
  training a conditional generative model, EncDec-CaCE);
* ``render(values)`` that re-renders *the same* samples with the concept set to ``values`` and
  nothing else changed (for the ground truth) — None for data without a known generator.

Builders for our three generators are below; they live here (not in ``data/``) because the
binary-concept framing is CaCE's, not the dataset's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch

from xai_lightning.data.bars import Bars
from xai_lightning.data.coloured_digits import ColouredDigits
from xai_lightning.data.concept_world import ConceptWorld

__all__ = [
    "ConceptIntervention",
    "bars_colour_intervention",
    "coloured_digits_intervention",
    "concept_world_intervention",
    "intervention_for_dataset",
    "parse_concept",
]


@dataclass
class ConceptIntervention:
    """N samples with a categorical concept, and the binary intervention ``do(C=1)`` vs ``do(C=0)``.

    Attributes:
        name: the concept, e.g. ``"colour=green"``.
        images: ``(N, C, H, W)`` observed images.
        labels: ``(N,)`` observed class labels.
        concept: ``(N,)`` long, observed concept value in ``0..num_values-1``.
        num_values: K, the number of concept values (the conditional VAE's condition size).
        treated: ``(N,)`` long, the value ``do(C = 1)`` sets for each sample.
        control: ``(N,)`` long, the value ``do(C = 0)`` sets for each sample (≠ treated).
        target: the class whose output ``f`` the effect is measured on.
        render: ``values (N,) -> images (N, C, H, W)``: the same samples re-rendered with the
            concept set to ``values`` (None when no generator is known: only ConExp, EncDec
            and TCAV apply then).
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    concept: torch.Tensor
    num_values: int
    treated: torch.Tensor
    control: torch.Tensor
    target: int
    render: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        for field in ("labels", "concept", "treated", "control"):
            value = getattr(self, field)
            if value.shape != (n,):
                raise ValueError(
                    f"{field} must have shape ({n},) to match images {tuple(self.images.shape)}; "
                    f"got {tuple(value.shape)}"
                )
        for field in ("concept", "treated", "control"):
            value = getattr(self, field)
            if n and not ((value >= 0) & (value < self.num_values)).all():
                raise ValueError(f"{field} values must lie in 0..{self.num_values - 1}; got {value.unique().tolist()}")
        if bool((self.treated == self.control).any()):
            raise ValueError("control must differ from treated for every sample (do(C=1) vs do(C=0)).")

    @property
    def observed(self) -> torch.Tensor:
        """``(N,)`` bool: samples that show the concept, i.e. whose observed value equals ``treated``."""
        return self.concept == self.treated

    def intervened(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images under do(C=1), images under do(C=0))``, each ``(N, C, H, W)``."""
        if self.render is None:
            raise ValueError(
                f"Concept {self.name!r} has no generator to intervene in; ground-truth CaCE needs one "
                "(use encdec_cace or conexp for data without a known generator)."
            )
        return self.render(self.treated), self.render(self.control)


def _rows(total: int, indices: Sequence[int] | torch.Tensor | None) -> torch.Tensor:
    return torch.arange(total) if indices is None else torch.as_tensor(indices, dtype=torch.long).view(-1)


def bars_colour_intervention(
    bars: Bars, indices: Sequence[int] | torch.Tensor | None = None, treated: str = "green", target: int = 1
) -> ConceptIntervention:
    """BARS colour: ``do(colour = treated)`` vs the other colour, effect on class ``target``.

    Defaults follow the confounding direction: green goes with vertical (class 1), so a model
    that learnt the shortcut has a positive CaCE of "green" on P(vertical).
    """
    if isinstance(treated, str) and treated not in bars.colour_names:
        raise ValueError(f"Unknown BARS colour {treated!r}; choose from {bars.colour_names}")
    if not 0 <= int(target) < bars.num_classes:
        raise ValueError(
            f"target class {target} out of range: BARS has classes 0..{bars.num_classes - 1} {bars.class_names}"
        )
    rows = _rows(len(bars), indices)
    value = bars.colour_names.index(treated) if isinstance(treated, str) else int(treated)
    n = rows.shape[0]
    return ConceptIntervention(
        name=f"colour={bars.colour_names[value]}",
        images=bars.images[rows],
        labels=bars.labels[rows],
        concept=bars.colours[rows],
        num_values=2,
        treated=torch.full((n,), value, dtype=torch.long),
        control=torch.full((n,), 1 - value, dtype=torch.long),
        target=target,
        render=lambda values: bars.intervene(rows, colour=values),
    )


def coloured_digits_intervention(
    digits: ColouredDigits,
    target: int,
    indices: Sequence[int] | torch.Tensor | None = None,
    seed: int = 0,
    colour_of: int | None = None,
) -> ConceptIntervention:
    """Coloured digits: ``do(colour = class c's colour)`` vs ``do(colour = another class's colour)``.

    ``c = colour_of`` (default: ``target``). The concept value is the class whose mean hue is
    nearest (10 values). Under ``do(C=0)`` each sample gets the mean hue of a uniformly drawn
    *other* class (seeded), so the contrast is "c's colour" vs "some other class colour"; the
    effect is on P(target).
    """
    rows = _rows(len(digits), indices)
    n = rows.shape[0]
    k = digits.num_classes
    if not 0 <= target < k:
        raise ValueError(f"target class {target} out of range 0..{k - 1}")
    treated_value = target if colour_of is None else int(colour_of)
    if not 0 <= treated_value < k:
        raise ValueError(f"colour_of must be a class index 0..{k - 1}; got {colour_of}")
    generator = torch.Generator().manual_seed(seed)
    control = (treated_value + torch.randint(1, k, (n,), generator=generator)) % k
    return ConceptIntervention(
        name=f"colour=class{treated_value}",
        images=digits.images[rows],
        labels=digits.labels[rows],
        concept=digits.hue_bins[rows],
        num_values=k,
        treated=torch.full((n,), treated_value, dtype=torch.long),
        control=control,
        target=target,
        render=lambda values: digits.intervene(rows, colour_of_class=values),
    )


def concept_world_intervention(
    world: ConceptWorld,
    concept: str,
    value: str,
    target: int,
    indices: Sequence[int] | torch.Tensor | None = None,
    seed: int = 0,
) -> ConceptIntervention:
    """ConceptWorld: ``do(<concept> = value)`` vs ``do(<concept> = another value)`` via :meth:`ConceptWorld.intervene`.

    ``concept`` is a categorical latent (``"colour"``, ``"texture"``, ``"shape"``,
    ``"background"``), ``value`` one of its names (e.g. ``"red"``); the control value is drawn
    uniformly from the other values per sample (seeded).
    """
    vocabularies = {
        "colour": tuple(world.colours),
        "texture": world.textures,
        "shape": world.shapes,
        "background": world.backgrounds,
    }
    if concept not in vocabularies:
        raise ValueError(f"concept must be one of {sorted(vocabularies)}; got {concept!r}")
    names = vocabularies[concept]
    if value not in names:
        raise ValueError(f"Unknown {concept} {value!r}; choose from {names}")
    if not 0 <= target < world.num_classes:
        raise ValueError(f"target class {target} out of range 0..{world.num_classes - 1}")
    rows = _rows(len(world), indices)
    n, k = rows.shape[0], len(names)
    treated_value = names.index(value)
    generator = torch.Generator().manual_seed(seed)
    control = (treated_value + torch.randint(1, k, (n,), generator=generator)) % k
    return ConceptIntervention(
        name=f"{concept}={value}",
        images=world.images[rows],
        labels=world.labels[rows],
        concept=getattr(world.latent, concept)[rows].clone(),
        num_values=k,
        treated=torch.full((n,), treated_value, dtype=torch.long),
        control=control,
        target=target,
        render=lambda values: cast(torch.Tensor, world.intervene(rows, **{concept: values})["images"]),
    )


def parse_concept(concept: str) -> tuple[str, str]:
    """``"colour=green"`` → ``("colour", "green")``; raises ``ValueError`` naming the expected form."""
    name, sep, value = str(concept).partition("=")
    if not sep or not name.strip() or not value.strip():
        raise ValueError(f"A concept is '<latent>=<value>', e.g. 'colour=green'; got {concept!r}")
    return name.strip(), value.strip()


def intervention_for_dataset(
    dataset: object, concept: str, target: int, indices: Sequence[int] | torch.Tensor | None = None, seed: int = 0
) -> ConceptIntervention:
    """The :class:`ConceptIntervention` of ``concept`` (``"<latent>=<value>"``) on a generator dataset.

    Supported generators: :class:`~xai_lightning.data.Bars` (``colour=red|green``),
    :class:`~xai_lightning.data.ColouredDigits` (``colour=<digit>``: that class's hue) and
    :class:`~xai_lightning.data.ConceptWorld` (``colour|texture|shape|background=<name>``).
    Unknown concepts, values or classes and datasets that cannot re-render their samples raise
    ``ValueError`` naming what would work.
    """
    name, value = parse_concept(concept)
    if isinstance(dataset, Bars):
        if name != "colour":
            raise ValueError(f"BARS can intervene on 'colour' only (values {dataset.colour_names}); got {concept!r}")
        return bars_colour_intervention(dataset, indices, treated=value, target=target)
    if isinstance(dataset, ColouredDigits):
        digits = [str(k) for k in range(dataset.num_classes)]
        if name != "colour" or value.removeprefix("class") not in digits:
            raise ValueError(
                f"Coloured digits can intervene on 'colour=<class whose hue>' with a class in "
                f"0..{dataset.num_classes - 1}, e.g. 'colour=3'; got {concept!r}"
            )
        return coloured_digits_intervention(dataset, target, indices, seed, colour_of=int(value.removeprefix("class")))
    if isinstance(dataset, ConceptWorld):
        return concept_world_intervention(dataset, name, value, target, indices, seed)
    raise ValueError(
        f"{type(dataset).__name__} is not a generator that can re-render its samples with {concept!r} changed, "
        "so ground-truth CaCE cannot be computed. Use data from Bars, ColouredDigits or ConceptWorld (e.g. "
        "BarsDataModule), or give a ConceptIntervention with a render function."
    )
