"""Attribution methods as callbacks configure them: names and options from YAML, defaults from the callback.

Shared by :class:`~xai_lightning.callbacks.ExplanationQualityCallback` and
:class:`~xai_lightning.callbacks.SanityCheckCallback` (``AttributionCallback`` does the same in its
``_build``): method names are validated at construction (aliases accepted), per-method options are
keyed by the canonical name, and the callback's ``layer``, ``output_key``, ``max_batch`` and seed
fill whatever a method's options leave open.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.attribution.registry import get_method, method_class
from xai_lightning.core import resolve_layers

__all__ = ["build_method", "canonical_method_options", "canonical_methods", "configured_options", "method_layer"]


def canonical_methods(methods: str | Sequence[str], owner: str) -> list[str]:
    """Registry names of ``methods``; unknown names fail listing the valid ones, duplicates fail too."""
    listed = [methods] if isinstance(methods, str) else list(methods)
    if not listed:
        raise ValueError(f"{owner} needs at least one method; see xai_lightning.attribution.available_methods().")
    names = [method_class(name).name for name in listed]
    if len(set(names)) != len(names):
        raise ValueError(f"Each method may appear once; got {listed}")
    return names


def canonical_method_options(
    method_options: dict[str, dict[str, Any]] | None, names: list[str]
) -> dict[str, dict[str, Any]]:
    """``method_options`` keyed by canonical names; a key that is not among ``names`` fails."""
    options = {}
    for key, value in dict(method_options or {}).items():
        canonical = method_class(key).name
        if canonical not in names:
            raise ValueError(f"method_options names {key!r}, which is not among methods={names}")
        options[canonical] = dict(value)
    return options


def configured_options(
    name: str, options: dict[str, Any], *, layer: str, output_key: str | int | None, max_batch: int | None, seed: int
) -> dict[str, Any]:
    """``options`` completed with the callback's defaults for what they leave open."""
    options = dict(options)
    if "layer" in method_class(name).option_names():
        options.setdefault("layer", layer)
    options.setdefault("output_key", output_key)
    options.setdefault("max_batch", max_batch)
    options.setdefault("seed", seed)
    return options


def build_method(
    name: str, options: dict[str, Any], *, layer: str, output_key: str | int | None, max_batch: int | None, seed: int
) -> AttributionMethod:
    """The configured method; unknown options fail listing the valid ones."""
    return get_method(
        name, **configured_options(name, options, layer=layer, output_key=output_key, max_batch=max_batch, seed=seed)
    )


def method_layer(
    model: nn.Module, method: AttributionMethod, one_input: torch.Tensor, forward: Callable[[], object] | None = None
) -> str:
    """Check that ``method`` can explain inputs like ``one_input`` and return the layer it explains
    (resolved, ``"auto"`` included), or ``"input"`` for methods without a layer."""
    method._check_inputs(one_input)
    layer = getattr(method, "layer", None)
    if not isinstance(layer, str):
        return "input"
    return resolve_layers(model, layer, forward=forward or (lambda: model(one_input)))[0]
