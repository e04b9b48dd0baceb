"""Attention maps of a vision transformer: raw CLS attention per layer and head, attention rollout
(Abnar & Zuidema 2020) and gradient-weighted attention relevance (Chefer et al. 2021), all from
one forward (and, for relevance, one backward) pass per ``max_batch`` slice.

Tokens are ``[CLS, registers…, patches…]``: the maps are the CLS token's row (``query_token``) over
the ``N = h·w`` patch tokens, folded to the patch grid ``(h, w)`` like
:class:`~xai_lightning.core.TokenGrid` folds activations (a token count that is not a square plus
the declared special tokens fails, naming both numbers). Attention is captured by read-only hooks
(:mod:`~xai_lightning.attribution.attention_capture`) or, with ``source="outputs"``, taken from
``model(x, output_attentions=True)``.

As attribution methods (``AttentionRollout``, ``AttentionRelevance``, ``RawAttention``) the maps
are bilinearly upsampled to the input resolution, as Grad-CAM's are, so they are scored alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import nn

from xai_lightning.attribution.attention_capture import AttentionCapture, find_attention_layers
from xai_lightning.attribution.chefer_relevance import attention_relevance
from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.attribution.layer_gradients import spatial_size, upsample_maps
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.attribution.rollout import HeadFusion, attention_rollout
from xai_lightning.core import (
    ObserverGuard,
    TargetSpec,
    TokenGrid,
    class_scores,
    observe,
    output_scores,
    resolve_targets,
    select_logits,
    special_tokens,
    split_target,
    unwrap_model,
)

__all__ = [
    "AttentionMapKind",
    "AttentionMaps",
    "AttentionRelevance",
    "AttentionRollout",
    "RawAttention",
    "attention_maps",
]

AttentionMapKind = Literal["raw", "rollout", "relevance"]
AttentionSource = Literal["hooks", "outputs"]
KINDS: tuple[AttentionMapKind, ...] = ("raw", "rollout", "relevance")


@dataclass(frozen=True)
class AttentionMaps:
    """Attention maps of a batch on the patch grid ``(h, w)``.

    Attributes:
        raw: ``(B, L, heads, h, w)`` attention of the query (CLS) token to every patch, per layer
            and head (rows of the attention probabilities; over patches they sum to ≤ 1, the rest
            goes to the special tokens). None if not asked for.
        rollout: ``(B, h, w)`` attention rollout, CLS row over the patches. None if not asked for.
        relevance: ``(B, h, w)`` Chefer relevance of the explained score. None if not asked for.
        logits: ``(B, K)`` logits of the forward pass (for a callable target too, when the output
            has logits; otherwise its ``(B, 1)`` scores).
        targets: ``(B,)`` explained class (0 for a callable target).
        scores: ``(B,)`` the explained score: the target's logit, or the callable's value.
        layers: names of the attention modules (``source="hooks"``) or ``layer<i>``.
        special_tokens: tokens before the patches.
    """

    raw: torch.Tensor | None
    rollout: torch.Tensor | None
    relevance: torch.Tensor | None
    logits: torch.Tensor
    targets: torch.Tensor
    scores: torch.Tensor
    layers: tuple[str, ...]
    special_tokens: int


def _check_kinds(kinds: Sequence[str]) -> tuple[AttentionMapKind, ...]:
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"Attention map kinds are {list(KINDS)}; got {list(kinds)}")
    return cast(tuple[AttentionMapKind, ...], tuple(kinds))  # every kind checked against KINDS above


def _attentions_from_outputs(network: nn.Module, x: torch.Tensor) -> tuple[object, list[torch.Tensor]]:
    try:
        output = network(x, output_attentions=True)
    except TypeError as error:
        raise TypeError(
            f"{type(network).__name__} does not take output_attentions=True (a Hugging Face option); use "
            "source='hooks'."
        ) from error
    attentions = getattr(output, "attentions", None)
    if not attentions or any(a is None for a in attentions):
        raise ValueError(
            f"{type(network).__name__}(..., output_attentions=True) returned no attention probabilities; with "
            "Hugging Face models switch to eager attention (model.set_attn_implementation('eager'))."
        )
    return output, list(attentions)


def attention_maps(
    model: nn.Module,
    inputs: torch.Tensor,
    target: TargetSpec = "predicted",
    *,
    labels: torch.Tensor | None = None,
    kinds: Sequence[AttentionMapKind] = KINDS,
    special_tokens_count: int | None = None,
    query_token: int = 0,
    residual: float = 0.5,
    head_fusion: HeadFusion = "mean",
    source: AttentionSource = "hooks",
    output_key: str | int | None = None,
    max_batch: int | None = None,
    trainer: Any | None = None,
) -> AttentionMaps:
    """Raw attention, rollout and relevance maps of a ViT on ``inputs (B, C, H, W)``.

    Args:
        target: the class (or callable score) whose relevance is computed; also resolved for the
            returned ``targets``. Rollout and raw attention do not depend on it.
        kinds: which maps to compute (``"relevance"`` costs one backward pass).
        special_tokens_count: tokens before the patches (None: the model's ``num_special_tokens``
            or ``num_prefix_tokens``, else 1).
        query_token: the token whose row is the map (0: CLS).
        residual, head_fusion: attention rollout's identity weight and head fusion.
        source: ``"hooks"`` (read-only forward hooks) or ``"outputs"`` (``output_attentions=True``).
        max_batch: examples per forward/backward pass (None: all at once).
    """
    kinds = _check_kinds(kinds)
    if source not in ("hooks", "outputs"):
        raise ValueError(f"source must be 'hooks' or 'outputs'; got {source!r}")
    network = unwrap_model(model)
    score_fn, target = split_target(target)
    specials = special_tokens(network) if special_tokens_count is None else special_tokens_count
    raw_parts, rollout_parts, relevance_parts, logit_parts, target_parts, score_parts = [], [], [], [], [], []
    with observe(network, trainer=trainer) as guard:
        layers = None
        if source == "hooks":
            layers = find_attention_layers(network, lambda: network(guard.input(inputs[:1], requires_grad=False)))
        explained = ExplainedModel(network, output_key, max_batch, score_fn=score_fn, like=inputs)
        want_gradient = "relevance" in kinds
        for rows in explained.slices(inputs.shape[0]):
            x = guard.input(inputs[rows], requires_grad=want_gradient)
            if layers is not None:
                with AttentionCapture(network, layers) as capture:
                    output = network(x)
                attentions = capture.maps
            else:
                output, attentions = _attentions_from_outputs(network, x)
            logits = output_scores(output, output_key, score_fn, batch=x.shape[0])
            targets = resolve_targets(target, logits, None if labels is None else labels[rows])
            tokens = attentions[0].shape[-1]
            if not 0 <= query_token < tokens:
                raise ValueError(f"query_token={query_token} is outside the {tokens} tokens")
            grid = TokenGrid(specials).grid_size(tokens)
            if "raw" in kinds:
                raw = torch.stack([a.detach()[:, :, query_token, specials:].float() for a in attentions], 1)
                raw_parts.append(raw.reshape(*raw.shape[:3], *grid))
            if "rollout" in kinds:
                flow = attention_rollout(attentions, residual, head_fusion)
                rollout_parts.append(flow[:, query_token, specials:].reshape(-1, *grid))
            if want_gradient:
                gradients = torch.autograd.grad(class_scores(logits, targets).sum(), attentions)
                relevance = attention_relevance(attentions, gradients)
                relevance_parts.append(relevance[:, query_token, specials:].reshape(-1, *grid))
            shown = logits
            if score_fn is not None:
                try:
                    shown = select_logits(output, output_key)
                except (TypeError, ValueError):
                    pass  # an output without logits: report the scores
            logit_parts.append(shown.detach().float())
            target_parts.append(targets)
            score_parts.append(class_scores(logits, targets).detach().float())
    names = (
        tuple(name for name, _ in layers) if layers is not None else tuple(f"layer{i}" for i in range(len(attentions)))
    )
    return AttentionMaps(
        raw=torch.cat(raw_parts) if raw_parts else None,
        rollout=torch.cat(rollout_parts) if rollout_parts else None,
        relevance=torch.cat(relevance_parts) if relevance_parts else None,
        logits=torch.cat(logit_parts),
        targets=torch.cat(target_parts),
        scores=torch.cat(score_parts),
        layers=names,
        special_tokens=specials,
    )


class _AttentionMapMethod(AttributionMethod):
    """Shared part of the attention-map methods: one kind of :func:`attention_maps`, upsampled."""

    image_only = True
    map_reduction = "none"
    kind: AttentionMapKind = "rollout"

    def __init__(
        self, special_tokens: int | None = None, source: AttentionSource = "hooks", upsample: bool = True, **common
    ) -> None:
        super().__init__(**common)
        if source not in ("hooks", "outputs"):
            raise ValueError(f"source must be 'hooks' or 'outputs'; got {source!r}")
        self.special_tokens = special_tokens
        self.source = source
        self.upsample = upsample

    def _maps(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        **options,
    ) -> AttentionMaps:
        return attention_maps(
            explained.model,
            inputs,
            target if explained.score_fn is None else explained.score_fn,
            labels=labels,
            kinds=(self.kind,),
            special_tokens_count=self.special_tokens,
            source=self.source,
            output_key=explained.output_key,
            max_batch=explained.max_batch,
            **options,
        )

    def _finish(self, maps: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return upsample_maps(maps, spatial_size(inputs)) if self.upsample else maps


class AttentionRollout(_AttentionMapMethod):
    """Attention rollout (Abnar & Zuidema 2020): CLS row over the patches, ``(B, H, W)`` (``(B, h, w)``
    without ``upsample``). Class-agnostic.

    Args:
        residual: identity weight per layer (0.5, the paper).
        head_fusion: ``"mean"`` (paper), ``"max"``, ``"min"``.
        special_tokens: tokens before the patches (None: from the model, else 1).
        source: ``"hooks"`` or ``"outputs"`` (``output_attentions=True``).
        upsample: bilinear upsampling to the input size.
    """

    name = "attention_rollout"
    title = "Attention rollout"
    kind = "rollout"

    def __init__(self, residual: float = 0.5, head_fusion: HeadFusion = "mean", **options) -> None:
        super().__init__(**options)
        if not 0.0 <= residual <= 1.0:
            raise ValueError(f"residual must be in [0, 1]; got {residual}")
        if head_fusion not in ("mean", "max", "min"):
            raise ValueError(f"head_fusion must be 'mean', 'max' or 'min'; got {head_fusion!r}")
        self.residual = residual
        self.head_fusion = head_fusion

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        maps = self._maps(explained, inputs, target, labels, residual=self.residual, head_fusion=self.head_fusion)
        assert maps.rollout is not None
        return self._finish(maps.rollout, inputs), None


class AttentionRelevance(_AttentionMapMethod):
    """Gradient-weighted attention relevance (Chefer et al. 2021) of the target class, ``(B, H, W)``.

    Args: ``special_tokens``, ``source``, ``upsample`` as :class:`AttentionRollout`.
    """

    name = "attention_relevance"
    title = "Attention relevance (Chefer)"
    kind = "relevance"

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        maps = self._maps(explained, inputs, target, labels)
        assert maps.relevance is not None
        return self._finish(maps.relevance, inputs), None


class RawAttention(_AttentionMapMethod):
    """Raw attention of the CLS token to the patches in one layer, ``(B, H, W)``.

    Args:
        attention_layer: index of the attention layer (-1: the last).
        head: one head, or None for the mean over heads.
        special_tokens, source, upsample: as :class:`AttentionRollout`.
    """

    name = "raw_attention"
    title = "Raw attention (CLS)"
    kind = "raw"

    def __init__(self, attention_layer: int = -1, head: int | None = None, **options) -> None:
        super().__init__(**options)
        self.attention_layer = attention_layer
        self.head = head

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        maps = self._maps(explained, inputs, target, labels)
        assert maps.raw is not None
        layers = maps.raw.shape[1]
        if not -layers <= self.attention_layer < layers:
            raise ValueError(f"attention_layer={self.attention_layer} is outside the model's {layers} attention layers")
        per_head = maps.raw[:, self.attention_layer]
        if self.head is not None and not -per_head.shape[1] <= self.head < per_head.shape[1]:
            raise ValueError(f"head={self.head} is outside the layer's {per_head.shape[1]} heads")
        chosen = per_head.mean(1) if self.head is None else per_head[:, self.head]
        return self._finish(chosen, inputs), None
