"""The batch convention shared by our datamodules, models and callbacks.

A batch (or a single dataset item) is either

* a tuple/list ``(x, y, *rest)`` — ``x`` the images ``(B, C, H, W)``, ``y`` the labels ``(B,)``; or
* a dict with the images under ``"image"`` (also accepted: ``"images"``, ``"x"``, ``"input"``,
  ``"inputs"``), the labels under ``"label"`` (``"labels"``, ``"y"``, ``"target"``,
  ``"targets"``), and optionally ``"masks"`` ``(B, K, H, W)`` bool concept masks and
  ``"object_mask"`` ``(B, H, W)`` bool ground-truth object location.

ConceptWorld items are dicts; :class:`~xai_lightning.data.ConceptWorldDataModule` collates
training batches to ``(x, y)`` by default (``batch_format="dict"`` keeps the masks).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch

__all__ = ["Batch", "replace_inputs", "unpack_batch"]

IMAGE_KEYS = ("image", "images", "x", "input", "inputs")
LABEL_KEYS = ("label", "labels", "y", "target", "targets")

ACCEPTED_FORMATS = (
    "a tuple/list (x, y, ...) or a dict with the inputs under one of "
    f"{list(IMAGE_KEYS)} and the labels under one of {list(LABEL_KEYS)}"
)


@dataclass
class Batch:
    """Inputs, labels and optional ground truth found in a batch or dataset item."""

    inputs: torch.Tensor
    labels: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    object_mask: torch.Tensor | None = None


def _first_key(batch: Mapping[str, Any], keys: Sequence[str]) -> str | None:
    return next((key for key in keys if key in batch), None)


def unpack_batch(batch: Any) -> Batch:
    """Find inputs, labels and masks in a batch; raise a ``TypeError`` naming the accepted formats."""
    if isinstance(batch, torch.Tensor):
        return Batch(inputs=batch)
    if isinstance(batch, Mapping):
        image_key = _first_key(batch, IMAGE_KEYS)
        if image_key is None:
            raise TypeError(
                f"Cannot find the inputs in a batch with keys {sorted(batch)}; expected {ACCEPTED_FORMATS}."
            )
        label_key = _first_key(batch, LABEL_KEYS)
        labels = batch[label_key] if label_key is not None else None
        return Batch(
            inputs=batch[image_key],
            labels=torch.as_tensor(labels) if labels is not None else None,
            masks=batch.get("masks"),
            object_mask=batch.get("object_mask"),
        )
    if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) >= 1:
        inputs = batch[0]
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(
                f"The first element of a tuple batch must be the input tensor; got {type(inputs).__name__}. "
                f"Expected {ACCEPTED_FORMATS}."
            )
        labels = torch.as_tensor(batch[1]) if len(batch) > 1 else None
        return Batch(inputs=inputs, labels=labels)
    raise TypeError(f"Cannot find the inputs in a batch of type {type(batch).__name__}; expected {ACCEPTED_FORMATS}.")


class _NamedTupleBatch(Protocol):
    """What :func:`replace_inputs` uses of a ``namedtuple`` / ``typing.NamedTuple`` batch."""

    _fields: tuple[str, ...]

    def _replace(self, **changes: Any) -> Any: ...


def replace_inputs(batch: Any, inputs: torch.Tensor) -> Any:
    """Put new inputs into a batch *in place* where possible (dict, list); tuples are rebuilt.

    Used by callbacks that change what the model trains on (adversarial training). Returns the
    batch holding the new inputs — the same object unless it was an immutable tuple.
    """
    if isinstance(batch, MutableMapping):
        key = _first_key(batch, IMAGE_KEYS)
        if key is None:
            raise TypeError(
                f"Cannot find the inputs in a batch with keys {sorted(batch)}; expected {ACCEPTED_FORMATS}."
            )
        batch[key] = inputs
        return batch
    if isinstance(batch, list):
        batch[0] = inputs
        return batch
    if isinstance(batch, tuple):
        if not hasattr(batch, "_fields"):
            return type(batch)((inputs, *batch[1:]))
        named = cast(_NamedTupleBatch, batch)
        return named._replace(**{named._fields[0]: inputs})
    raise TypeError(
        f"Cannot replace the inputs of a batch of type {type(batch).__name__}; expected {ACCEPTED_FORMATS}."
    )
