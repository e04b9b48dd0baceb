"""A second fixed image set an observer runs through the model besides its probe set.

Deep k-NN needs *training* neighbours and the information-plane decoders need images to be fitted
on that are not the held-out probe images. Such a reference set is drawn once at ``setup``
(seeded, own generator, like the probe), sharded over DDP ranks inside ``explain`` with the
probe's rule, and gathered back into reference order by :func:`gather_in_parts`.
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from dataclasses import replace
from typing import Any, cast

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import Dataset, IterableDataset, Subset

from xai_lightning.callbacks.probe import ProbeSet, ProbeSplit, draw_probe, find_probe_dataset

__all__ = ["REFERENCE_PREFIX", "draw_reference", "find_split", "gather_in_parts"]

#: Keys of ``explain`` results that are rows of the reference set (not of the probe set).
REFERENCE_PREFIX = "reference/"


def find_split(trainer: Any, split: ProbeSplit) -> Any:
    """:func:`find_probe_dataset`, or None when the split exists but is not set up.

    Under ``trainer.validate`` a datamodule is set up for ``"validate"`` only, and its
    ``train_dataloader()`` may refuse (ConceptWorldDataModule asserts "call setup('fit') first").
    """
    try:
        return find_probe_dataset(trainer, split)
    except (AssertionError, RuntimeError):
        return None


def draw_reference(
    trainer: Any,
    split: ProbeSplit,
    size: int,
    seed: int,
    owner: str,
    purpose: str,
    exclude: torch.Tensor | None = None,
) -> ProbeSet:
    """Draw ``size`` images (with labels, when the data has them) from ``split``; clear error without data.

    ``exclude``: dataset indices never to draw (e.g. the probe images, when the reference set must be
    held out from them); honoured for map-style datasets. Returned ``indices`` are dataset indices.
    """
    source = find_split(trainer, split)
    if source is None:
        raise ValueError(
            f"{owner} needs {split} images for {purpose}, but the Trainer has no {split} data. Pass "
            f"{'train_dataloaders' if split == 'train' else 'val_dataloaders'}= to trainer.fit() or change the "
            f"split argument."
        )
    remaining = None
    if exclude is not None and isinstance(source, Dataset) and not isinstance(source, IterableDataset):
        # A map-style dataset that can be indexed by position has a length; torch's stub omits __len__.
        keep = torch.ones(len(cast(Sized, source)), dtype=torch.bool)
        keep[exclude.long()] = False
        remaining = torch.nonzero(keep).flatten()
        source = Subset(source, remaining.tolist())
    reference, available = draw_probe(source, size, seed)
    if remaining is not None and reference.indices is not None:
        reference = replace(reference, indices=remaining[reference.indices.long()])
    if available < size:
        rank_zero_warn(
            f"{owner}: {size} {split} images asked for {purpose}, but the data has only {available}; "
            f"using all {available}."
        )
    return reference


def gather_in_parts(
    gather: Callable[[Any, dict[str, torch.Tensor], int], dict[str, torch.Tensor]],
    trainer: Any,
    local: dict[str, torch.Tensor],
    probe_total: int,
    reference_total: int,
) -> dict[str, torch.Tensor]:
    """Gather probe rows and reference rows (keys starting with :data:`REFERENCE_PREFIX`) separately,
    each back into its own order, with the base's ``gather``."""
    probe_part = {key: value for key, value in local.items() if not key.startswith(REFERENCE_PREFIX)}
    reference_part = {key: value for key, value in local.items() if key.startswith(REFERENCE_PREFIX)}
    out = gather(trainer, probe_part, probe_total)
    if reference_part:
        out.update(gather(trainer, reference_part, reference_total))
    return out
