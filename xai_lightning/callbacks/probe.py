"""The probe set: a fixed, seeded sample of images that an observing callback explains every epoch.

Drawn once (at ``setup``) from a dataset with its own ``torch.Generator`` — the same images every
epoch and on every rank, without touching the training's random stream — or given explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import torch
from einops import rearrange
from torch.utils.data import DataLoader, Dataset, IterableDataset

from xai_lightning.core import isolated_rng
from xai_lightning.data.batch import unpack_batch

__all__ = ["ProbeSet", "draw_probe", "find_probe_dataset"]

ProbeSplit = Literal["val", "train"]


@dataclass(frozen=True)
class ProbeSet:
    """Images to explain, with whatever ground truth came with them.

    Attributes:
        images: ``(N, C, H, W)`` float.
        labels: ``(N,)`` long, or None.
        object_masks: ``(N, H, W)`` bool ground-truth object location, or None.
        masks: ``(N, K, H, W)`` bool concept masks, or None.
        indices: ``(N,)`` positions of the images in their dataset (or 0..N-1).
        concept_names: names of the K mask channels, when known.
        class_names: names of the classes, when known (used in captions).
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    object_masks: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    concept_names: tuple[str, ...] | None = None
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.images.dim() < 2:
            raise ValueError(f"Probe images need a batch dimension; got shape {tuple(self.images.shape)}")
        n = self.images.shape[0]
        if n == 0:
            raise ValueError(
                f"The probe set is empty (images of shape {tuple(self.images.shape)}): an observing callback needs at "
                "least one image to explain. Pass images (N, C, H, W) with N >= 1 to set_probe, or data with images."
            )
        for name in ("labels", "object_masks", "masks", "indices"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != n:
                raise ValueError(f"Probe {name} has {value.shape[0]} rows for {n} images")
        if self.object_masks is not None and self.object_masks.shape[1:] != self.images.shape[2:]:
            raise ValueError(
                f"Probe object masks {tuple(self.object_masks.shape)} do not match the images "
                f"{tuple(self.images.shape)}: masks must be (N, H, W) at the image resolution."
            )
        if self.masks is not None and self.masks.shape[2:] != self.images.shape[2:]:
            raise ValueError(
                f"Probe concept masks {tuple(self.masks.shape)} do not match the images "
                f"{tuple(self.images.shape)}: masks must be (N, K, H, W) at the image resolution."
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def _map(self, fn) -> "ProbeSet":
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                changes[f.name] = fn(value)
        return replace(self, **changes)

    def select(self, rows: torch.Tensor) -> "ProbeSet":
        return self._map(lambda tensor: tensor[rows])

    def to(self, device: torch.device | str) -> "ProbeSet":
        return self._map(lambda tensor: tensor.to(device))

    def shard_rows(self, rank: int, world_size: int) -> torch.Tensor:
        """Rows handled by ``rank``: ``rank, rank + W, …`` over the probe padded to a multiple of W.

        Every rank gets the same number of rows (padding repeats the first images), so the
        results can be all-gathered and interleaved back into probe order (:func:`unshard`).
        """
        padded = -(-len(self) // world_size) * world_size
        return torch.arange(rank, padded, world_size) % max(len(self), 1)

    def shard(self, rank: int, world_size: int) -> "ProbeSet":
        return self.select(self.shard_rows(rank, world_size))


def unshard(gathered: torch.Tensor, total: int) -> torch.Tensor:
    """Invert :meth:`ProbeSet.shard`: ``(W, k, ...)`` from ``all_gather`` → ``(total, ...)`` in probe order.

    Rank ``w`` holds rows ``w, w + W, …``, so row ``i·W + w`` of the probe is ``gathered[w, i]``.
    """
    return rearrange(gathered, "world row ... -> (row world) ...")[:total]


def find_probe_dataset(trainer: Any, split: ProbeSplit = "val") -> Dataset | DataLoader | None:
    """The dataset (or, for iterable data, the loader) behind the trainer's ``split`` data, if any.

    Looks, in order, at the datamodule's ``*_dataloader()``, then at what ``fit``/``validate``
    received (``val_dataloaders=``, ``train_dataloaders=``, or the LightningModule's hooks).
    """
    sources = []
    if split == "val":
        for loop in (
            getattr(trainer, "validate_loop", None),
            getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None),
        ):
            if loop is not None:
                loop = getattr(loop, "val_loop", loop)
                sources.append(getattr(loop, "_data_source", None))
    else:
        sources.append(getattr(getattr(trainer, "fit_loop", None), "_data_source", None))
    for source in sources:
        if source is None or getattr(source, "instance", None) is None:
            continue
        try:
            if not source.is_defined():
                continue
            with isolated_rng():
                loaders = source.dataloader()
        except NotImplementedError:  # a datamodule without this split
            continue
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        elif isinstance(loaders, dict):
            loaders = next(iter(loaders.values()), None)
        if loaders is None:
            continue
        dataset = getattr(loaders, "dataset", None)
        if dataset is None or isinstance(dataset, IterableDataset):
            return loaders
        return dataset
    return None


def _stack_items(items: Sequence[Any]) -> dict[str, Any]:
    batches = [unpack_batch(item) for item in items]
    images = torch.stack([torch.as_tensor(b.inputs) for b in batches]).float()
    if images.dim() == 3:  # (N, H, W) grey images
        images = images.unsqueeze(1)
    out: dict[str, Any] = {"images": images}
    if all(b.labels is not None for b in batches):
        out["labels"] = torch.stack([torch.as_tensor(b.labels).reshape(()) for b in batches]).long()
    if all(b.object_mask is not None for b in batches):
        out["object_masks"] = torch.stack([torch.as_tensor(b.object_mask) for b in batches]).bool()
    if all(b.masks is not None for b in batches):
        out["masks"] = torch.stack([torch.as_tensor(b.masks) for b in batches]).bool()
    return out


def draw_probe(source: Dataset | DataLoader, num: int, seed: int = 0) -> tuple[ProbeSet, int]:
    """Draw ``num`` items without replacement, seeded; return the probe and how many were available.

    A map-style dataset is indexed directly (never iterated, so no sampler RNG is touched). An
    iterable source contributes its first ``num`` items (unbatched when it is a loader).
    """
    with isolated_rng():
        if isinstance(source, DataLoader) or isinstance(source, IterableDataset) or not hasattr(source, "__len__"):
            items: list[Any] = []
            for element in source:  # type: ignore[union-attr]  # iterable: checked above
                if isinstance(source, DataLoader) and source.batch_size is not None:
                    unpacked = unpack_batch(element)
                    for row in range(unpacked.inputs.shape[0]):
                        item: dict[str, Any] = {"image": unpacked.inputs[row]}
                        if unpacked.labels is not None:
                            item["label"] = unpacked.labels[row]
                        if unpacked.object_mask is not None:
                            item["object_mask"] = unpacked.object_mask[row]
                        if unpacked.masks is not None:
                            item["masks"] = unpacked.masks[row]
                        items.append(item)
                else:
                    items.append(element)
                if len(items) >= num:
                    break
            items = items[:num]
            available = len(items)
            indices = torch.arange(available)
        else:
            available = len(source)
            generator = torch.Generator().manual_seed(seed)
            indices = torch.randperm(available, generator=generator)[: min(num, available)]
            rows = [int(i) for i in indices]
            # A dataset that fetches whole batches (``__getitems__``, as DataLoader uses) renders them at once.
            fetch_all = getattr(source, "__getitems__", None)
            items = list(fetch_all(rows)) if fetch_all is not None else [source[row] for row in rows]
    if not items:
        raise ValueError("The probe source is empty: no images to explain.")
    stacked = _stack_items(items)
    dataset = getattr(source, "dataset", source)
    concept_names = getattr(dataset, "concept_names", None)
    class_names = getattr(dataset, "class_names", None)
    probe = ProbeSet(
        **stacked,
        indices=indices,
        concept_names=tuple(concept_names) if concept_names is not None else None,
        class_names=tuple(class_names) if class_names is not None else None,
    )
    return probe, available
