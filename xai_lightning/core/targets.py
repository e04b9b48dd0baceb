"""Which class (or score) an explanation explains, per example, and how to find logits in a model's output.

Targets: ``"label"``, ``"predicted"``, a class index, one index per example — or a *callable* on
the model's raw output returning one score per example (a sum of logits, a similarity, a
margin…). Outputs: a tensor of logits, a dict or Hugging Face ``ModelOutput`` (``output_key``, or
its ``.logits`` found automatically), or a tuple (``output_key`` = the index).

Callable targets are reduced to the class-index machinery: :func:`split_target` turns
``target=fn`` into ``(fn, 0)`` and :func:`output_scores` makes ``fn(output)`` a one-column matrix
of "logits", so every method explains "class 0" of it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch

__all__ = [
    "ScoreFunction",
    "TargetSpec",
    "check_target",
    "class_scores",
    "output_scores",
    "resolve_targets",
    "select_logits",
    "split_target",
]

#: A callable on the model's raw output returning ``(B,)`` scores to explain.
ScoreFunction = Callable[[Any], torch.Tensor]

#: ``"label"``: the ground-truth class; ``"predicted"``: the model's arg-max; an ``int``: that
#: class for every example; a sequence/tensor of length B: one class per example; a callable on
#: the model output returning ``(B,)`` scores.
TargetSpec = Literal["label", "predicted"] | int | Sequence[int] | torch.Tensor | ScoreFunction


def _available(output: object) -> str:
    if isinstance(output, Mapping):
        return f"keys {list(output.keys())}"
    if isinstance(output, (tuple, list)):
        return f"indices 0..{len(output) - 1}"
    return f"a {type(output).__name__}"


def select_logits(output: object, output_key: str | int | None = None) -> torch.Tensor:
    """Return the ``(B, num_classes)`` logits from a model output.

    * a tensor: itself;
    * an object with a ``.logits`` tensor (Hugging Face ``ModelOutput``): that, without ``output_key``;
    * a dict or tuple (e.g. ``{"logits": ..., "features": ...}``): ``output[output_key]`` — the dict
      key or tuple index of the logits. A missing key fails listing the available ones.
    """
    if isinstance(output, torch.Tensor) and output_key is None:
        logits = output
    elif output_key is None:
        # A plain dict has no attribute ``logits``: only objects that name their logits (ModelOutput) match.
        found = getattr(output, "logits", None)
        if isinstance(found, torch.Tensor):
            logits = found
        else:
            kind = type(output).__name__
            raise TypeError(
                f"The model returned a {kind}, not a tensor of logits. Pass output_key= naming where the "
                f"logits are (available: {list(output.keys()) if isinstance(output, Mapping) else _available(output)})."
            )
    else:
        try:
            logits = output[output_key]  # type: ignore[index]
        except (KeyError, IndexError, TypeError) as error:
            raise TypeError(
                f"output_key={output_key!r} does not select anything in the model output ({type(output).__name__}); "
                f"available: {_available(output)}."
            ) from error
        if not isinstance(logits, torch.Tensor):
            raise TypeError(
                f"output_key={output_key!r} selects a {type(logits).__name__}, not a tensor; "
                f"available: {_available(output)}."
            )
    if logits.dim() != 2:
        raise ValueError(f"Expected logits of shape (B, num_classes); got {tuple(logits.shape)}")
    return logits


def split_target(target: TargetSpec) -> tuple[ScoreFunction | None, Any]:
    """``(score function, class target)``: a callable target becomes ``(fn, 0)``; others ``(None, target)``."""
    if callable(target) and not isinstance(target, (torch.Tensor, str)):
        return target, 0
    return None, target


def output_scores(
    output: object, output_key: str | int | None = None, score_fn: ScoreFunction | None = None, batch: int | None = None
) -> torch.Tensor:
    """``(B, K)`` scores of a model output: the logits, or ``score_fn(output)`` as one column ``(B, 1)``.

    Raises:
        ValueError: when ``score_fn`` does not return one score per example — a tensor of shape
            ``(batch,)`` (or ``(batch, 1)``) — naming the shape it returned.
    """
    if score_fn is None:
        return select_logits(output, output_key)
    value = score_fn(output)
    name = getattr(score_fn, "__name__", type(score_fn).__name__)
    expected = f"({batch},)" if batch is not None else "(B,)"
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"The target callable {name!r} returned a {type(value).__name__}; it must return a tensor "
            f"of one score per example, shape {expected}."
        )
    if value.dim() == 2 and value.shape[1] == 1:
        value = value[:, 0]
    if value.dim() != 1 or (batch is not None and value.shape[0] != batch) or not value.is_floating_point():
        raise ValueError(
            f"The target callable {name!r} returned shape {tuple(value.shape)} ({value.dtype}); it must return one "
            f"floating-point score per example, shape {expected} — e.g. lambda out: out.logits[:, 1] - "
            "out.logits[:, 0], not the whole logits matrix (for a class, pass its index as target)."
        )
    return value.unsqueeze(1)


def resolve_targets(target: TargetSpec, logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Turn a :data:`TargetSpec` into a ``(B,)`` long tensor of class indices on ``logits.device``.

    Callable targets are turned into scores first (:func:`split_target`, :func:`output_scores`).
    """
    batch, num_classes = logits.shape
    if isinstance(target, str):
        if target == "predicted":
            return logits.detach().argmax(dim=1)
        if target == "label":
            if labels is None:
                raise ValueError("target='label' needs labels; pass them or use target='predicted'.")
            resolved = torch.as_tensor(labels).long().reshape(-1)
        else:
            raise ValueError(
                f"Unknown target {target!r}; use 'label', 'predicted' or a class index or one per example."
            )
    elif isinstance(target, int):
        # Checked in Python: no tensor, no synchronisation with the device.
        _check_class_range(target, target, num_classes)
        return torch.full((batch,), target, dtype=torch.long, device=logits.device)
    elif callable(target) and not isinstance(target, torch.Tensor):
        raise TypeError(
            "A callable target is a score, not a class: turn it into scores with "
            "split_target/output_scores before resolving classes."
        )
    else:
        resolved = torch.as_tensor(target).long().reshape(-1)
    if resolved.numel() != batch:
        raise ValueError(f"Got {resolved.numel()} targets for a batch of {batch} examples.")
    if resolved.numel():
        # Checked where the targets live: targets given on the CPU cost the device no synchronisation
        # (a device tensor of targets costs one, here, once per call).
        _check_class_range(int(resolved.min()), int(resolved.max()), num_classes)
    # A fresh tensor on the logits' device: labels created under torch.inference_mode cannot be
    # saved for backward.
    return resolved.to(logits.device).clone()


def _check_class_range(smallest: int, largest: int, num_classes: int) -> None:
    if smallest < 0 or largest >= num_classes:
        raise ValueError(
            f"Target class {largest if largest >= num_classes else smallest} is out of "
            f"range: the model has {num_classes} classes (valid 0..{num_classes - 1})."
        )


def class_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The ``(B,)`` logits of each example's target class."""
    return logits.gather(1, targets.view(-1, 1)).squeeze(1)


def check_target(
    target: TargetSpec,
    output: object,
    output_key: str | int | None = None,
    labels: torch.Tensor | None = None,
    batch: int | None = None,
) -> None:
    """Validate a target against one forward pass's ``output`` (e.g. at a callback's setup).

    Raises the errors the explanation would raise later: a missing ``output_key`` (listing the
    available keys), a class out of range, a callable returning the wrong shape. ``batch``: the
    number of inputs behind ``output`` (found from its logits when not given).
    """
    class_target: TargetSpec  # what split_target leaves of a non-callable target
    score_fn, class_target = split_target(target)
    if batch is None:
        batch = _batch_of(output, output_key)
    scores = output_scores(output, output_key, score_fn, batch=batch)
    label_without_labels = isinstance(class_target, str) and class_target == "label" and labels is None
    if score_fn is None and not label_without_labels and isinstance(class_target, (int, str)):
        resolve_targets(class_target, scores, labels)


def _batch_of(output: object, output_key: str | int | None) -> int | None:
    """The batch size of a model output, when its logits reveal it (for checking a callable's result)."""
    try:
        return select_logits(output, output_key).shape[0]
    except (TypeError, ValueError):
        return None
