"""Features of named layers for a set of images, and the layers' output shapes in execution order."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from xai_lightning.core import LayerCapture, get_layer, map_batched, normalize_layer_name, observe, unwrap_model

__all__ = ["LayerOutput", "layer_features", "layer_outputs_in_order"]


class LayerOutput:
    """Name, output shape and execution rank of one layer, as seen in one forward pass."""

    def __init__(self, name: str, shape: tuple[int, ...] | None, rank: int | None, kind: str) -> None:
        self.name = name
        self.shape = shape
        self.rank = rank
        self.kind = kind

    @property
    def spatial(self) -> bool:
        """A 4-D ``(B, C, h, w)`` tensor output with more than one position."""
        return self.shape is not None and len(self.shape) == 4 and self.shape[-1] * self.shape[-2] > 1

    def __repr__(self) -> str:
        return f"LayerOutput({self.name!r}, shape={self.shape}, rank={self.rank}, kind={self.kind!r})"


def layer_outputs_in_order(
    model: nn.Module, layers: Sequence[str], forward: Callable[[], object]
) -> dict[str, LayerOutput]:
    """Run ``forward()`` once with temporary hooks and report each layer's output shape and order.

    ``rank`` is the position at which the layer *finished* among the requested layers (0 first),
    which is the order its output becomes available; a layer that did not run has ``rank=None``.
    Unknown names raise :class:`~xai_lightning.core.LayerNotFoundError` listing the valid names.
    """
    modules = {normalize_layer_name(name): get_layer(model, name) for name in layers}
    seen: dict[str, LayerOutput] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, _inputs: object, output: object) -> None:
            if name in seen:
                return  # a module called twice (weight sharing) keeps its first call
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            seen[name] = LayerOutput(name, shape, len(seen), type(output).__name__)

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in modules.items()]
    try:
        forward()
    finally:
        for handle in handles:
            handle.remove()
    return {name: seen.get(name, LayerOutput(name, None, None, "not called")) for name in modules}


@torch.no_grad()
def layer_features(
    model: nn.Module, layers: str | Sequence[str], images: torch.Tensor, max_batch: int | None = 256
) -> dict[str, torch.Tensor]:
    """Outputs of ``layers`` for ``images (N, C, H, W)``, computed in eval mode, detached.

    Runs under :func:`~xai_lightning.core.observe` (eval mode restored per submodule afterwards,
    RNG isolated) in slices of ``max_batch`` images. Returns ``{layer name: (N, ...)}``.
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    root = unwrap_model(model)
    clean = [normalize_layer_name(name) for name in names]
    device = next(iter(root.parameters()), torch.empty(0)).device
    collected: dict[str, list[torch.Tensor]] = {name: [] for name in clean}

    def run(batch: torch.Tensor) -> torch.Tensor:
        with LayerCapture(root, clean) as capture:
            root(batch.to(device))
        for name in clean:
            collected[name].append(capture.activations[name].detach().clone())
        return batch[:, :1, :1, :1]

    with observe(root):
        map_batched(run, images, max_batch=max_batch)
    return {name: torch.cat(parts) for name, parts in collected.items()}
