"""The concepts a network is dissected against: names grouped in Broden-style categories.

Network dissection (Bau et al., CVPR 2017, "Network Dissection: Quantifying Interpretability of
Deep Visual Representations") scores every unit against a dictionary of visual concepts, each in
one category (object, part, scene, texture, colour, material). A unit's IoU with a concept only
counts the images that carry labels of the concept's category, so the category of each concept
is part of the vocabulary.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ConceptVocabulary", "check_names_match_masks", "vocabulary_from_dataset"]

#: Categories of ConceptWorld's mask channels that are not concepts to dissect against (the
#: object/distractor/background/caption regions).
NON_CONCEPT_CATEGORIES: tuple[str, ...] = ("region",)


@dataclass(frozen=True)
class ConceptVocabulary:
    """``C`` concept names, each with its category.

    Attributes:
        names: ``C`` unique concept names, e.g. ``"colour/red"``.
        categories: the category of each concept, e.g. ``"colour"``.
    """

    names: tuple[str, ...]
    categories: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "categories", tuple(str(c) for c in self.categories))
        if len(self.names) != len(self.categories):
            raise ValueError(f"{len(self.names)} concept names but {len(self.categories)} categories")
        if not self.names:
            raise ValueError("A concept vocabulary needs at least one concept.")
        duplicates = [name for name, times in Counter(self.names).items() if times > 1]
        if duplicates:
            raise ValueError(f"Concept names must be unique; repeated: {sorted(duplicates)}")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def category_names(self) -> tuple[str, ...]:
        """The ``G`` distinct categories, in order of first appearance."""
        return tuple(dict.fromkeys(self.categories))

    @property
    def category_index(self) -> torch.Tensor:
        """``(C,)`` long: the index in :attr:`category_names` of each concept's category."""
        lookup = {name: g for g, name in enumerate(self.category_names)}
        return torch.tensor([lookup[c] for c in self.categories], dtype=torch.long)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"Unknown concept {name!r}; known concepts: {', '.join(self.names)}") from None

    @classmethod
    def from_names(
        cls, names: Sequence[str], categories: Mapping[str, str] | Sequence[str] | None = None
    ) -> "ConceptVocabulary":
        """Build from names and a name → category mapping (or a list); without categories the
        part of each name before the first ``/`` is its category (``"colour/red"`` → ``"colour"``)."""
        names = tuple(names)
        if categories is None:
            cats = tuple(name.split("/", 1)[0] if "/" in name else name for name in names)
        elif isinstance(categories, Mapping):
            missing = [name for name in names if name not in categories]
            if missing:
                raise ValueError(f"No category given for concepts {missing}")
            cats = tuple(categories[name] for name in names)
        else:
            cats = tuple(categories)
        return cls(names, cats)


def _unwrap_dataset(dataset: Any) -> Any:
    """Look through ``Subset``/loader wrappers for the dataset that knows its concept names."""
    seen = 0
    while not hasattr(dataset, "concept_names") and hasattr(dataset, "dataset") and seen < 8:
        dataset = dataset.dataset
        seen += 1
    return dataset


def check_names_match_masks(num_names: int, num_masks: int | None, source: str) -> None:
    """Every mask channel needs exactly one concept name: a count mismatch silently mislabels concepts."""
    if num_masks is not None and num_names != num_masks:
        raise ValueError(
            f"{source} names {num_names} concepts but its items carry {num_masks} concept masks: each mask channel "
            "needs exactly one name (and category), in the same order, or the masks would be dissected under the "
            "wrong names. Fix `concept_names`/`concept_categories` or the masks."
        )


def vocabulary_from_dataset(
    dataset: Any, exclude_categories: Sequence[str] = NON_CONCEPT_CATEGORIES, num_masks: int | None = None
) -> tuple[ConceptVocabulary, torch.Tensor]:
    """The vocabulary of a dataset with ``concept_names`` (and optionally ``concept_categories``).

    Returns the vocabulary without the excluded categories, and ``channels (C,)`` long: the
    index of each vocabulary concept among the dataset's mask channels.

    Args:
        num_masks: the number of mask channels of the dataset's items, when known: the names must
            match it one to one.

    Raises:
        ValueError: when the dataset does not name its concepts, names a different number of
            concepts than ``num_masks``, or every concept is excluded.
    """
    source = _unwrap_dataset(dataset)
    names = getattr(source, "concept_vocabulary", None)
    if isinstance(names, ConceptVocabulary):
        vocabulary = names
        check_names_match_masks(len(vocabulary), num_masks, type(source).__name__)
        keep = [i for i, c in enumerate(vocabulary.categories) if c not in exclude_categories]
        return ConceptVocabulary(
            tuple(vocabulary.names[i] for i in keep), tuple(vocabulary.categories[i] for i in keep)
        ), torch.tensor(keep, dtype=torch.long)
    names = getattr(source, "concept_names", None)
    if names is None:
        raise ValueError(
            f"{type(source).__name__} does not name its concept masks: network dissection needs a dataset with "
            "`concept_names` (and `concept_categories`, name -> category) whose items carry `masks (C, H, W)`, "
            "like ConceptWorld or BrodenDataset; or pass a ConceptVocabulary explicitly."
        )
    full = ConceptVocabulary.from_names(names, getattr(source, "concept_categories", None))
    check_names_match_masks(len(full), num_masks, type(source).__name__)
    keep = [i for i, category in enumerate(full.categories) if category not in exclude_categories]
    if not keep:
        raise ValueError(
            f"Every concept of {type(source).__name__} is in an excluded category {list(exclude_categories)}"
        )
    vocabulary = ConceptVocabulary(tuple(full.names[i] for i in keep), tuple(full.categories[i] for i in keep))
    return vocabulary, torch.tensor(keep, dtype=torch.long)
