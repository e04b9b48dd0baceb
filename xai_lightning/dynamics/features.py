"""Flat per-example features of named layers (or of the penultimate layer), with the logits, batched.

The training-dynamics analyses (embeddings, deep k-NN, the information plane) look at a layer's
representation as one vector per example. A *feature site* is either a module's output (its dotted
name, as everywhere in xai_lightning) or ``"penultimate"``: the input of the model's last
``nn.Linear`` in execution order (for a CNN with a GAP → linear head, the pooled features).
4-D outputs ``(B, C, h, w)`` are flattened, optionally after average pooling to at most
``pool × pool`` positions (a function of the representation: for the information plane this keeps
any bound a lower bound, by the data-processing inequality).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xai_lightning.core import (
    LayerNotFoundError,
    get_layer,
    layer_names,
    resolve_layers,
    select_logits,
)
from xai_lightning.core.fast_forward import FastForward, pass_slices

__all__ = [
    "PENULTIMATE",
    "FeatureSite",
    "flatten_features",
    "layer_features",
    "modules_in_run_order",
    "resolve_feature_sites",
]

PENULTIMATE = "penultimate"


@dataclass(frozen=True)
class FeatureSite:
    """Where a representation is read: ``name`` as logged, ``module`` (dotted), and whether the
    module's ``input`` (the penultimate site) or its ``output`` is taken."""

    name: str
    module: str
    kind: str  # "input" | "output"


def modules_in_run_order(model: nn.Module, forward: Callable[[], object], kind: type[nn.Module]) -> list[str]:
    """Dotted names of the ``kind`` submodules in the order one forward pass (``forward()``) runs them."""
    order: list[str] = []
    handles = [
        module.register_forward_hook(lambda *_args, name=name: order.append(name))
        for name, module in model.named_modules()
        if name and isinstance(module, kind)
    ]
    try:
        forward()
    finally:
        for handle in handles:
            handle.remove()
    return order


def _last_linear(model: nn.Module, forward: Callable[[], object]) -> str:
    order = modules_in_run_order(model, forward, nn.Linear)
    if not order:
        raise LayerNotFoundError(
            f"layers='{PENULTIMATE}' reads the input of the last nn.Linear, but {type(model).__name__} runs none. "
            "Name a layer instead; valid names:\n  " + "\n  ".join(layer_names(model))
        )
    return order[-1]


def resolve_feature_sites(
    model: nn.Module, layers: str | Sequence[str], forward: Callable[[], object] | None = None
) -> list[FeatureSite]:
    """Validate layer names (``"penultimate"`` and ``"auto"`` included) and return their sites.

    Unknown names raise :class:`~xai_lightning.core.LayerNotFoundError` listing the valid names
    (:func:`~xai_lightning.core.resolve_layers`). ``forward`` runs one forward pass; it is needed
    for ``"penultimate"`` and ``"auto"``.
    """
    requested = [layers] if isinstance(layers, str) else list(layers)
    if not requested:
        raise ValueError(f"At least one layer is required (a dotted module name, '{PENULTIMATE}' or 'auto').")
    sites: list[FeatureSite] = []
    for name in requested:
        if name == PENULTIMATE:
            if forward is None:
                raise ValueError(f"Resolving '{PENULTIMATE}' needs a forward pass; pass `forward`.")
            site = FeatureSite(PENULTIMATE, _last_linear(model, forward), "input")
        else:
            (clean,) = resolve_layers(model, [name], forward=forward)
            site = FeatureSite(clean, clean, "output")
        if site not in sites:
            sites.append(site)
    return sites


def flatten_features(activation: torch.Tensor, pool: int | None = None) -> torch.Tensor:
    """``(B, ...)`` → ``(B, D)`` float; 4-D maps are first average-pooled to ≤ ``pool × pool`` if given."""
    if pool is not None and activation.dim() == 4 and (activation.shape[-2] > pool or activation.shape[-1] > pool):
        size = (min(pool, activation.shape[-2]), min(pool, activation.shape[-1]))
        activation = F.adaptive_avg_pool2d(activation, size)
    return activation.flatten(1).float()


def layer_features(
    model: nn.Module,
    images: torch.Tensor,
    sites: Sequence[FeatureSite],
    *,
    pool: int | None = None,
    max_batch: int | None = None,
    output_key: str | int | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Features ``{site.name: (N, D)}`` and logits ``(N, K)`` of ``images (N, C, H, W)``, no gradients.

    Runs the model as it is (call inside :func:`~xai_lightning.core.observe` for eval mode and an
    isolated random stream), ``max_batch`` images per forward pass, on a CPU at most
    :data:`~xai_lightning.core.fast_forward.CPU_INPUT_ELEMENTS_PER_PASS` input elements, through
    :class:`~xai_lightning.core.fast_forward.FastForward` (channels-last, eval BatchNorms folded
    where no site is hooked: the numbers of a plain forward up to float reassociation).
    """
    captured: dict[str, torch.Tensor] = {}

    def hook_for(site: FeatureSite):
        if site.kind == "input":

            def pre_hook(_module: nn.Module, inputs: tuple) -> None:
                captured[site.name] = flatten_features(inputs[0].detach(), pool)

            return pre_hook

        def forward_hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"Layer {site.module!r} returns {type(output).__name__}, not a tensor; choose another layer."
                )
            captured[site.name] = flatten_features(output.detach(), pool)

        return forward_hook

    handles = []
    for site in sites:
        module = get_layer(model, site.module)
        hook = hook_for(site)
        handles.append(
            module.register_forward_pre_hook(hook) if site.kind == "input" else module.register_forward_hook(hook)
        )
    features: dict[str, list[torch.Tensor]] = {site.name: [] for site in sites}
    logits: list[torch.Tensor] = []
    forward = FastForward(model)
    try:
        with torch.no_grad():
            for rows in pass_slices(images, max_batch):
                captured.clear()
                logits.append(select_logits(forward(images[rows]), output_key).detach().float())
                for site in sites:
                    features[site.name].append(captured[site.name])
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) for name, parts in features.items()}, torch.cat(logits)
