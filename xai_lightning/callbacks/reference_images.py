"""A second fixed image set an observer runs through the model besides its probe set.

Deep k-NN needs *training* neighbours and the information-plane decoders need images to be fitted
on that are not the held-out probe images. Such a reference set is drawn once at ``setup``
(seeded, own generator, like the probe), sharded over DDP ranks inside ``explain`` with the
probe's rule, and gathered back into reference order by :func:`gather_in_parts`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_warn

from xai_lightning.callbacks.probe import ProbeSet, ProbeSplit, draw_probe, find_probe_dataset

__all__ = ["REFERENCE_PREFIX", "draw_reference", "gather_in_parts"]

#: Keys of ``explain`` results that are rows of the reference set (not of the probe set).
REFERENCE_PREFIX = "reference/"


def draw_reference(trainer: Any, split: ProbeSplit, size: int, seed: int, owner: str, purpose: str) -> ProbeSet:
    """Draw ``size`` images (with labels, when the data has them) from ``split``; clear error without data."""
    source = find_probe_dataset(trainer, split)
    if source is None:
        raise ValueError(
            f"{owner} needs {split} images for {purpose}, but the Trainer has no {split} data. Pass "
            f"{'train_dataloaders' if split == 'train' else 'val_dataloaders'}= to trainer.fit() or change the "
            f"split argument."
        )
    reference, available = draw_probe(source, size, seed)
    if available < size:
        rank_zero_warn(f"{owner}: {size} {split} images asked for {purpose}, but the data has only {available}; "
                       f"using all {available}.")
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
