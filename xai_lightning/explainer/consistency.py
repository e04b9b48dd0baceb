"""Knowledge consistency between two networks: how much of one layer's features another explains.

Liang, Li, Li, Wang & Zhang, "Knowledge Consistency between Neural Networks and Beyond" (ICLR 2020,
arXiv 2019). Features ``x_A`` of a layer of network A are reconstructed from features ``x_B`` of a
layer of network B on the same images::

    x_A = g(x_B) + ε,        g(x_B) = x⁽⁰⁾ + x⁽¹⁾ + … + x⁽ᴷ⁾

where ``x⁽ᵏ⁾``, the *k-th order consistent component*, is the part of ``x_A`` that B's features
explain through ``k`` non-linear (ReLU) operations, and ``ε`` is the *inconsistent* component.
Knowledge that A and B share at a low "fuzziness" level is explained by low orders; a model
compared with itself is fully consistent (ε = 0, all in order 0); unrelated features leave a large
ε.

The network ``g`` is recursive (the paper's Fig. 2): with convolutions ``W₀ … W_K`` (no bias),
``h₀ = W₀ x``, ``h_i = W_i (x + p_{i−1} · ReLU(h_{i−1} / s_{i−1}))`` and ``g(x) = h_K``, where
``s`` is each map's own standard deviation over positions (a per-image, per-channel scale; a
constant for autograd) and ``p_i = sigmoid(·) ∈ (0, 1)`` are learned. ``x`` enters every block,
so the path on which it enters at ``W_{K−k}`` passes ``k`` ReLUs. With the ReLU gates and scales
of the actual forward pass held fixed the network is linear in ``x``, so these paths split
``g(x)`` *exactly* into the orders ``x⁽ᵏ⁾`` (:meth:`ConsistencyNetwork.components`; tested:
they sum to ``g(x)``).

Reported (:class:`KnowledgeConsistency`), on held-out images when given: the variance of each
order's component and of ``ε``, per channel over images and positions and averaged over channels,
also as fractions of the variance of ``x_A``. Both feature sets are standardised per channel
(statistics of the fitting images) so that every channel of ``x_A`` counts equally. The
components are not orthogonal, so the fractions need not sum to one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from xai_lightning.core import batch_slices, isolated_rng
from xai_lightning.explainer.layer_outputs import layer_features

__all__ = ["ConsistencyNetwork", "KnowledgeConsistency", "fit_knowledge_consistency", "knowledge_consistency"]


def _per_map_scale(h: torch.Tensor) -> torch.Tensor:
    """Each map's standard deviation over positions, ``(B, C, 1, 1)``; 1 for 1×1 maps. No gradient."""
    if h.shape[-1] * h.shape[-2] == 1:
        return torch.ones_like(h)
    return h.detach().flatten(2).std(dim=-1).clamp_min(1e-5)[..., None, None]


class ConsistencyNetwork(nn.Module):
    """``g``: source features ``(B, C_s, h, w)`` → target features ``(B, C_t, h, w)`` in orders 0…K.

    Args:
        source_channels, target_channels: ``C_s`` and ``C_t``.
        order: ``K``, the highest order (number of ReLU blocks); the paper uses up to 2 or 3.
        kernel_size: of every convolution (odd; 'same' padding).
    """

    def __init__(
        self, source_channels: int, target_channels: int, order: int = 2, kernel_size: int = 3, initial_p: float = 0.05
    ) -> None:
        super().__init__()
        if order < 0:
            raise ValueError(f"order must be >= 0; got {order}")
        if not 0.0 < initial_p < 1.0:
            raise ValueError(f"initial_p must be in (0, 1); got {initial_p}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd; got {kernel_size}")
        self.order = order
        padding = kernel_size // 2
        convs = [
            nn.Conv2d(source_channels, source_channels, kernel_size, padding=padding, bias=False) for _ in range(order)
        ] + [nn.Conv2d(source_channels, target_channels, kernel_size, padding=padding, bias=False)]
        for conv in convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        self.convs = nn.ModuleList(convs)
        # Small p: the non-linear paths start as a gentle correction to the linear path instead of
        # unit-scale noise on top of it (fit_knowledge_consistency solves the linear path first).
        self.p_logits = nn.Parameter(torch.full((order,), float(torch.logit(torch.tensor(initial_p)))))
        self.kernel_size = kernel_size

    @torch.no_grad()
    def fit_linear_path(self, source: torch.Tensor, target: torch.Tensor, ridge: float = 1e-4) -> None:
        """Set the last convolution to the least-squares map ``source → target`` (ridge-regularised).

        The last convolution ``W_K`` is the whole order-0 path, so this is the best purely linear
        (0th-order) reconstruction over ``k × k`` patches, in closed form; training then only has to
        learn what the non-linear paths add. ``ridge`` is relative to the mean patch energy.
        """
        k = self.kernel_size
        patches = F.unfold(source, k, padding=k // 2)  # (N, C_s·k·k, h·w)
        design = patches.transpose(1, 2).reshape(-1, patches.shape[1]).double()
        response = target.flatten(2).transpose(1, 2).reshape(-1, target.shape[1]).double()
        gram = design.T @ design
        gram += torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device) * ridge * gram.diagonal().mean()
        solution = torch.linalg.solve(gram, design.T @ response)  # (C_s·k·k, C_t)
        last = cast(nn.Conv2d, self.convs[-1])
        last.weight.copy_(solution.T.reshape(last.weight.shape).to(last.weight.dtype))

    @property
    def p(self) -> torch.Tensor:
        """``(K,)`` the learned weights of the non-linear paths."""
        return torch.sigmoid(self.p_logits)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        p = self.p
        h = self.convs[0](x)
        gates, scales = [], []
        for i in range(1, self.order + 1):
            scale = _per_map_scale(h)
            z = h / scale
            gates.append((z > 0).to(z.dtype))
            scales.append(scale)
            h = self.convs[i](x + p[i - 1] * torch.relu(z))
        return h, gates, scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)[0]

    def components(self, x: torch.Tensor) -> torch.Tensor:
        """``(K + 1, B, C_t, h, w)``: the order-k components ``x⁽ᵏ⁾``; they sum to ``g(x)``.

        Row ``k`` is the path on which ``x`` enters at convolution ``K − k`` and then passes ``k``
        ReLUs, with the gates and scales of the actual forward pass.
        """
        _, gates, scales = self._forward(x)
        p = self.p
        out = []
        for k in range(self.order + 1):
            start = self.order - k
            h = self.convs[start](x)
            for i in range(start + 1, self.order + 1):
                h = self.convs[i](p[i - 1] * gates[i - 1] * h / scales[i - 1])
            out.append(h)
        return torch.stack(out)


def _channel_variance(x: torch.Tensor) -> torch.Tensor:
    """Variance per channel over images and positions, averaged over channels: ``x (..., N, C, h, w)``."""
    moved = x.transpose(-4, -3).flatten(-3)  # (..., C, N·h·w)
    return moved.var(dim=-1, unbiased=False).mean(dim=-1)


@dataclass
class KnowledgeConsistency:
    """How much of A's features B's features explain, per order (see the module docstring).

    Attributes:
        order_variance: ``(K + 1,)`` variance of each order's consistent component.
        inconsistent_variance: variance of ``ε = x_A − g(x_B)``.
        target_variance: variance of ``x_A`` (≈ 1 after standardisation).
        order_fraction: ``order_variance / target_variance``.
        inconsistent_fraction: ``inconsistent_variance / target_variance`` (0: fully consistent).
        consistency: ``1 − inconsistent_fraction``, the share of A's feature variance B explains.
        p: ``(K,)`` the learned weights of the non-linear paths.
        network: the fitted :class:`ConsistencyNetwork` (applies to standardised features).
        losses: training loss (mean squared error on standardised features) per step.
    """

    order_variance: torch.Tensor
    inconsistent_variance: float
    target_variance: float
    order_fraction: torch.Tensor
    inconsistent_fraction: float
    consistency: float
    p: torch.Tensor
    network: ConsistencyNetwork
    losses: list[float] = field(default_factory=list)


class _Standardiser:
    def __init__(self, x: torch.Tensor) -> None:
        moved = x.transpose(0, 1).flatten(1)
        self.mean = moved.mean(1).view(1, -1, 1, 1)
        std = moved.std(1, unbiased=False).view(1, -1, 1, 1)
        self.std = torch.where(std > 1e-8, std, torch.ones_like(std))  # dead channels stay zero

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _match_size(source: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(source.shape[-2:]) == tuple(size):
        return source
    if source.shape[-2] >= size[0] and source.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(source, size)
    return F.interpolate(source, size=size, mode="bilinear", align_corners=False)


def fit_knowledge_consistency(
    source: torch.Tensor,
    target: torch.Tensor,
    eval_source: torch.Tensor | None = None,
    eval_target: torch.Tensor | None = None,
    order: int = 2,
    steps: int = 400,
    batch_size: int = 64,
    lr: float = 3e-3,
    kernel_size: int = 3,
    seed: int = 0,
    max_batch: int | None = 256,
) -> KnowledgeConsistency:
    """Fit ``g`` to reconstruct ``target (N, C_t, h, w)`` from ``source (N, C_s, h', w')`` and measure it.

    ``source`` is resampled to the target's resolution (average pooling or bilinear) when they
    differ. The order-0 path is solved first, in closed form (:meth:`ConsistencyNetwork.fit_linear_path`:
    a model compared with itself is then exactly consistent); then all of ``g`` is trained with Adam
    on the mean squared error of standardised features, on random mini-batches drawn with a
    generator seeded by ``seed``; initialisation is seeded too and
    the global random state is left untouched. The variances are measured on ``eval_source`` /
    ``eval_target`` when given (held-out images: recommended), else on the fitting images.
    """
    if source.dim() != 4 or target.dim() != 4:
        raise ValueError(
            f"Knowledge consistency compares conv features (N, C, h, w); got source {tuple(source.shape)} and "
            f"target {tuple(target.shape)}"
        )
    if source.shape[0] != target.shape[0]:
        raise ValueError(f"source has {source.shape[0]} images but target has {target.shape[0]}")
    if (eval_source is None) != (eval_target is None):
        raise ValueError("Give both eval_source and eval_target, or neither")
    size = (target.shape[-2], target.shape[-1])
    source = _match_size(source.detach().float(), size)
    target = target.detach().float()
    standardise_source, standardise_target = _Standardiser(source), _Standardiser(target)
    x, y = standardise_source(source), standardise_target(target)
    device = x.device
    with isolated_rng():
        torch.default_generator.manual_seed(seed)
        network = ConsistencyNetwork(x.shape[1], y.shape[1], order=order, kernel_size=kernel_size).to(device)
    network.fit_linear_path(x, y)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    losses: list[float] = []
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(steps):
            rows = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=generator).to(device)
            loss = F.mse_loss(network(x[rows]), y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    if eval_source is not None and eval_target is not None:  # both or neither (checked above)
        x = standardise_source(_match_size(eval_source.detach().float(), size))
        y = standardise_target(eval_target.detach().float())
    with torch.no_grad():
        components = torch.cat([network.components(x[rows]) for rows in batch_slices(x.shape[0], max_batch)], dim=1)
        residual = y - components.sum(0)
        order_variance = _channel_variance(components)
        inconsistent = float(_channel_variance(residual))
        total = float(_channel_variance(y))
    total_safe = max(total, 1e-12)
    return KnowledgeConsistency(
        order_variance=order_variance.cpu(),
        inconsistent_variance=inconsistent,
        target_variance=total,
        order_fraction=(order_variance / total_safe).cpu(),
        inconsistent_fraction=inconsistent / total_safe,
        consistency=1.0 - inconsistent / total_safe,
        p=network.p.detach().cpu(),
        network=network,
        losses=losses,
    )


def knowledge_consistency(
    model_a: nn.Module,
    layer_a: str,
    model_b: nn.Module,
    layer_b: str,
    images: torch.Tensor,
    eval_images: torch.Tensor | None = None,
    order: int = 2,
    steps: int = 400,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    max_batch: int | None = 256,
) -> KnowledgeConsistency:
    """Knowledge consistency of ``model_a``'s ``layer_a`` features explained by ``model_b``'s ``layer_b``.

    Features are computed in eval mode (:func:`~xai_lightning.explainer.layer_outputs`) on
    ``images (N, C, H, W)`` to fit ``g`` and on ``eval_images`` to measure (recommended: held-out
    images; default the same images). See :func:`fit_knowledge_consistency` for the rest.

    Example::

        result = knowledge_consistency(model_a, "features.13", model_b, "features.13", train_images,
                                       eval_images=val_images)
        result.order_fraction, result.inconsistent_fraction
    """

    def features(model: nn.Module, layer: str, inputs: torch.Tensor) -> torch.Tensor:
        return next(iter(layer_features(model, layer, inputs, max_batch).values()))

    source, target = features(model_b, layer_b, images), features(model_a, layer_a, images)
    eval_source = eval_target = None
    if eval_images is not None:
        eval_source, eval_target = features(model_b, layer_b, eval_images), features(model_a, layer_a, eval_images)
    return fit_knowledge_consistency(
        source,
        target,
        eval_source,
        eval_target,
        order=order,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        max_batch=max_batch,
    )
