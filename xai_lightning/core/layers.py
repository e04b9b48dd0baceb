"""Find layers by their dotted module path, through DDP and ``torch.compile`` wrappers.

Names are the ones ``model.named_modules()`` prints for the *unwrapped* model, e.g.
``"model.layer4.1.conv2"``. The wrapper prefixes ``module.`` (DistributedDataParallel,
DataParallel) and ``_orig_mod.`` (``torch.compile``) are accepted and ignored, so a name
copied from a wrapped model's ``state_dict`` works too.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = [
    "AUTO",
    "LayerNotFoundError",
    "auto_layer",
    "get_layer",
    "layer_names",
    "normalize_layer_name",
    "resolve_layers",
    "unwrap_model",
]

AUTO = "auto"
_WRAPPER_PREFIXES = ("module", "_orig_mod")


class LayerNotFoundError(ValueError):
    """A layer name that does not exist in the model; the message lists the valid names."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers.

    Hooks registered on a compiled wrapper are ignored by the compiled graph, so explanations
    always run on the eager module underneath.
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def normalize_layer_name(name: str) -> str:
    """Drop wrapper components: ``"module._orig_mod.layer4.1"`` → ``"layer4.1"``."""
    parts = [part for part in name.split(".") if part not in _WRAPPER_PREFIXES]
    return ".".join(parts)


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every submodule of the unwrapped model (the root itself excluded)."""
    return [name for name, _ in unwrap_model(model).named_modules() if name]


def _unknown_layer_message(name: str, model: nn.Module) -> str:
    names = layer_names(model)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listing = "\n  ".join(names) if names else "(the model has no submodules)"
    return (
        f"Unknown layer {name!r} in {type(unwrap_model(model)).__name__}.{hint} "
        f"Use a dotted name from model.named_modules(), or 'auto' for the last module with a "
        f"spatial 4-D output. Valid names:\n  {listing}"
    )


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the submodule called ``name``; raise :class:`LayerNotFoundError` listing valid names."""
    clean = normalize_layer_name(name)
    modules = dict(unwrap_model(model).named_modules())
    if not clean or clean not in modules:
        raise LayerNotFoundError(_unknown_layer_message(name, model))
    return modules[clean]


def auto_layer(model: nn.Module, forward: Callable[[], object]) -> str:
    """The last module (in execution order) whose output is a 4-D tensor with spatial size > 1×1.

    ``forward`` runs one forward pass of ``model`` (for example on a single probe image); it
    is called with temporary hooks on every submodule, which are removed afterwards. A global
    average pool's ``(B, C, 1, 1)`` output does not count: it has no spatial extent to map.

    Raises:
        LayerNotFoundError: when no submodule produces such an output.
    """
    root = unwrap_model(model)
    last: list[str] = []

    def record(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-2:].numel() > 1:
                last.append(name)

        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in root.named_modules() if name]
    try:
        forward()
    finally:
        for handle in handles:
            handle.remove()
    if not last:
        raise LayerNotFoundError(
            f"layers='auto' found no module with a 4-D (B, C, H, W) output of spatial size > 1x1 in "
            f"{type(root).__name__}. Name the layer to explain explicitly; valid names:\n  "
            + "\n  ".join(layer_names(model))
        )
    return last[-1]


def resolve_layers(
    model: nn.Module, layers: str | Sequence[str], forward: Callable[[], object] | None = None
) -> list[str]:
    """Validate layer names (``"auto"`` included) and return their normalised dotted names.

    ``forward`` is only needed when ``"auto"`` is among ``layers``.
    """
    requested = [layers] if isinstance(layers, str) else list(layers)
    if not requested:
        raise ValueError("At least one layer is required (a dotted module name or 'auto').")
    resolved: list[str] = []
    for name in requested:
        if name == AUTO:
            if forward is None:
                raise ValueError("Resolving layers='auto' needs a forward pass; pass `forward`.")
            clean = auto_layer(model, forward)
        else:
            get_layer(model, name)
            clean = normalize_layer_name(name)
        if clean not in resolved:
            resolved.append(clean)
    return resolved
