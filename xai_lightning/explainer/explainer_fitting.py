"""Fit an explainer network to an already-trained performer (offline; the callback does it online)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from xai_lightning.core import isolated_rng, normalize_layer_name
from xai_lightning.explainer.explainer_network import ExplainerNetwork
from xai_lightning.explainer.layer_outputs import layer_features

__all__ = ["ExplainerFit", "fit_explainer"]


@dataclass
class ExplainerFit:
    """The fitted explainer and its training curve (one dict of loss terms per step)."""

    explainer: ExplainerNetwork
    history: list[dict[str, float]] = field(default_factory=list)


def fit_explainer(
    model: nn.Module,
    input_layer: str,
    target_layer: str,
    images: torch.Tensor,
    num_filters: int = 16,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 1e-3,
    reconstruction_weight: float = 1.0,
    filter_weight: float = 0.1,
    eta: float = 0.05,
    seed: int = 0,
    max_batch: int | None = 256,
) -> ExplainerFit:
    """Train an :class:`ExplainerNetwork` on ``model``'s features of ``images (N, C, H, W)``.

    The performer's features at ``input_layer`` and ``target_layer`` are computed once in eval
    mode (the performer is not changed); the explainer is trained with Adam on random mini-batches
    of them. Initialisation and mini-batches are seeded by ``seed``; the global random state is
    left untouched. Loss weights: see :class:`ExplainerNetwork`.
    """
    names = [normalize_layer_name(input_layer), normalize_layer_name(target_layer)]
    features = layer_features(model, names, images, max_batch)
    x, target = features[names[0]].float(), features[names[1]].float()
    if x.dim() != 4 or target.dim() != 4:
        raise ValueError(
            f"The explainer needs conv features (N, C, h, w) at both layers; {input_layer!r} gives "
            f"{tuple(x.shape)} and {target_layer!r} gives {tuple(target.shape)}"
        )
    with isolated_rng():
        torch.default_generator.manual_seed(seed)
        target_size = (target.shape[-2], target.shape[-1])
        explainer = ExplainerNetwork(x.shape[1], target.shape[1], target_size, num_filters).to(x.device)
    optimizer = torch.optim.Adam(explainer.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(steps):
            rows = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=generator).to(x.device)
            loss = explainer.loss(x[rows], target[rows], reconstruction_weight, filter_weight, eta)
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            optimizer.step()
            history.append(
                {
                    "loss": float(loss.total.detach()),
                    "reconstruction_error": float(loss.reconstruction),
                    "filter_loss": float(loss.filter),
                    "p": float(loss.p),
                }
            )
    return ExplainerFit(explainer=explainer.eval(), history=history)
