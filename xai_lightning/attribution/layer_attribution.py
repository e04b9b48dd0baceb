"""Layer attribution: attribute the explained score to a layer's input or output instead of the model input.

Text needs it — token ids are discrete, so gradients and integrated gradients are taken at the
word-embedding layer's output ``e ∈ (B, T, D)`` and summed over the embedding dimension per token
(REFERENCE.md, "Embedding attribution") — and CNN users want it for conv layers too. The layer is
a spec (:mod:`xai_lightning.core.layers`): ``"features.13"``, ``"blocks.3.norm1:input"``
(the tensor the module receives), ``"...@vit"`` (results folded to the patch grid). ``"auto"``
means the word embedding for token-id inputs (:func:`~xai_lightning.core.embedding_layer`), and
the usual last spatial layer for images.

* :class:`LayerIntegratedGradients` (Sundararajan et al. 2017, at a layer as Captum's
  ``LayerIntegratedGradients``): the layer's tensor is *replaced*, by a forward hook, with points
  ``a' + α(a − a')`` on the straight path from a baseline ``a'``; ``IG = (a − a') ⊙ Σ_s w_s ∂F/∂a``.
  Completeness: ``Σ IG = F(x) − F(x; a')`` (the model with the layer set to the baseline).
* :class:`LayerGradientXActivation`: ``a ⊙ ∂F/∂a`` (gradient × input at the layer), one pass.

Baselines: ``"zero"`` (zero activations), ``"pad"`` (the layer's tensor for the inputs with every
explainable token replaced by ``pad_id`` — padding embeddings; protected ids such as [CLS] kept),
a number, or a tensor shaped like the layer's tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.attribution.integrated_gradients import integration_rule
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.attribution.token_inputs import explainable_tokens, token_ids
from xai_lightning.core import (
    LayerCapture,
    LayerSpec,
    ObserverGuard,
    TargetSpec,
    class_scores,
    embedding_layer,
    get_layer,
    parse_layer,
    resolve_layer_specs,
)

__all__ = ["LayerBaseline", "LayerGradientXActivation", "LayerIntegratedGradients", "replaced_layer", "token_scores"]

LayerBaseline = str | float | int | torch.Tensor


def token_scores(attribution: torch.Tensor) -> torch.Tensor:
    """Per-token scores ``(B, T)`` of layer attributions ``(B, T, D)``: the sum over the embedding dimension."""
    if attribution.dim() != 3:
        raise ValueError(f"Token scores come from (B, tokens, dim) attributions; got {tuple(attribution.shape)}")
    return attribution.sum(-1)


@contextmanager
def replaced_layer(model: nn.Module, spec: LayerSpec, value: Callable[[], torch.Tensor]) -> Iterator[None]:
    """While active, the layer's output (or input, for ``:input`` specs) is replaced by ``value()``,
    which must have the shape of the tensor it replaces."""
    module = get_layer(model, spec.name)

    def check(original: torch.Tensor) -> torch.Tensor:
        replacement = value()
        if replacement.shape != original.shape:
            raise ValueError(
                f"Layer {spec.key!r}: the replacement has shape {tuple(replacement.shape)} but the layer's "
                f"tensor has {tuple(original.shape)}."
            )
        return replacement.to(original.dtype)

    if spec.capture == "input":

        def pre_hook(_module: nn.Module, args: tuple, kwargs: dict):
            return (check(args[0]), *args[1:]), kwargs

        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:

        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
            return check(output)

        handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _LayerMethod(AttributionMethod):
    """Shared part: resolving the layer, reading its tensor, accepting token ids."""

    map_reduction = "sum"

    def __init__(
        self, layer: str = "auto", pad_id: int | None = 0, protected_ids: Sequence[int] = (), **common: Any
    ) -> None:
        super().__init__(**common)
        self.layer = layer
        self.pad_id = pad_id
        self.protected_ids = tuple(protected_ids)

    def _check_inputs(self, inputs: torch.Tensor) -> None:
        if isinstance(inputs, torch.Tensor) and not inputs.is_floating_point():
            token_ids(inputs, type(self).__name__)
            return
        super()._check_inputs(inputs)

    def layer_spec(self, model: nn.Module, inputs: torch.Tensor) -> LayerSpec:
        """The explained layer: ``"auto"`` is the word embedding for token ids, the last spatial layer otherwise."""
        if self.layer != "auto":
            (spec,) = resolve_layer_specs(model, self.layer)
            return spec
        if not inputs.is_floating_point():
            return parse_layer(embedding_layer(model, lambda: model(inputs[:1]), inputs[:1]))
        (spec,) = resolve_layer_specs(model, "auto", lambda: model(inputs[:1]), sample=inputs[:1])
        return spec

    @staticmethod
    def layer_values(explained: ExplainedModel, spec: LayerSpec, inputs: torch.Tensor) -> torch.Tensor:
        """The layer's raw tensor (not reshaped) for ``inputs``, detached, slice by slice."""
        parts = []
        with torch.no_grad():
            for rows in explained.slices(inputs.shape[0]):
                with LayerCapture(explained.model, LayerSpec(spec.name, spec.capture)) as capture:
                    explained.model(inputs[rows])
                parts.append(next(iter(capture.raw.values())).detach())
        return torch.cat(parts)

    def to_map(self, attribution: torch.Tensor) -> torch.Tensor:
        """Token attributions ``(B, T, D)`` → ``(B, T)`` per-token sums; layer maps ``(B, C, h, w)`` → signed
        channel sums ``(B, h, w)``."""
        if attribution.dim() == 3:
            return token_scores(attribution).float()
        return super().to_map(attribution)


class LayerIntegratedGradients(_LayerMethod):
    """Integrated Gradients with respect to a layer's tensor, shaped like that tensor (reshaped by the spec).

    Args:
        layer: layer spec or ``"auto"`` (token ids: the word embedding).
        steps, rule: path points and integration rule (see :class:`IntegratedGradients`).
        baseline: ``"zero"`` (default), ``"pad"`` (padding-token embeddings, protected ids kept),
            a number or a tensor shaped like the layer's tensor.
        pad_id: the padding id (``"pad"`` baseline; padding positions are never attributed).
        protected_ids: token ids kept in the ``"pad"`` baseline (e.g. BERT's [CLS], [SEP]).
        multiply_by_inputs: False returns the path-averaged gradient.

    ``return_convergence_delta=True`` also returns ``Σ IG − (F(x) − F(x; a'))`` per example. For
    text, :func:`token_scores` (or ``to_map``) sums the ``(B, T, D)`` result per token.
    """

    name = "layer_integrated_gradients"
    title = "Layer Integrated Gradients"
    has_convergence_delta = True

    def __init__(
        self,
        layer: str = "auto",
        steps: int = 50,
        rule: str = "gauss_legendre",
        baseline: LayerBaseline = "zero",
        multiply_by_inputs: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(layer=layer, **options)
        integration_rule(steps, rule)
        if isinstance(baseline, str) and baseline not in ("zero", "pad"):
            raise ValueError(f"A layer baseline is 'zero', 'pad', a number or a tensor; got {baseline!r}")
        self.steps = steps
        self.rule = rule
        self.baseline = baseline
        self.multiply_by_inputs = multiply_by_inputs

    def _baseline(
        self, explained: ExplainedModel, spec: LayerSpec, inputs: torch.Tensor, activation: torch.Tensor
    ) -> torch.Tensor:
        if isinstance(self.baseline, torch.Tensor):
            baseline = self.baseline.to(activation.device, activation.dtype)
            return baseline.expand_as(activation).clone() if baseline.dim() < activation.dim() else baseline
        if isinstance(self.baseline, (int, float)):
            return torch.full_like(activation, float(self.baseline))
        if self.baseline == "zero":
            return torch.zeros_like(activation)
        if inputs.is_floating_point() or self.pad_id is None:
            raise ValueError("baseline='pad' replaces token ids by pad_id: it needs token-id inputs and a pad_id.")
        explainable = explainable_tokens(inputs, self.pad_id, self.protected_ids)
        padded = torch.where(explainable, torch.full_like(inputs, self.pad_id), inputs)
        return self.layer_values(explained, spec, padded)

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        if not inputs.is_floating_point():
            inputs = token_ids(inputs, type(self).__name__)
        spec = self.layer_spec(explained.model, inputs)
        targets, _ = explained.resolve(inputs, target, labels)
        activation = self.layer_values(explained, spec, inputs)
        baseline = self._baseline(explained, spec, inputs, activation)
        difference = activation - baseline
        alphas, weights = integration_rule(self.steps, self.rule)
        alphas = alphas.to(activation.device, activation.dtype)
        weights = weights.to(activation.device, activation.dtype)
        batch = inputs.shape[0]
        accumulated = torch.zeros_like(activation)
        current: list[torch.Tensor] = []
        shape = (-1,) + (1,) * (activation.dim() - 1)
        for rows in explained.slices(batch * self.steps):
            index = torch.arange(rows.start, rows.stop, device=inputs.device)
            example, step = index % batch, index // batch  # step-major rows, as IntegratedGradients
            point = (baseline[example] + alphas[step].view(shape) * difference[example]).requires_grad_(True)
            current[:] = [point]
            with replaced_layer(explained.model, spec, lambda: current[0]):
                logits = explained.logits(inputs[example])
            (gradient,) = torch.autograd.grad(class_scores(logits, targets[example]).sum(), point)
            accumulated.index_add_(0, example, gradient * weights[step].view(shape))
        attribution = accumulated * difference if self.multiply_by_inputs else accumulated
        delta = None
        if explained.want_delta:
            delta = self._delta(explained, spec, inputs, targets, attribution, baseline)
        if self.pad_id is not None and not inputs.is_floating_point() and attribution.dim() == 3:
            # Padding positions carry no token: their (tiny) share of the path integral is not reported.
            attribution = attribution * (inputs != self.pad_id).unsqueeze(-1)
        return spec.apply(attribution), delta

    def _delta(
        self,
        explained: ExplainedModel,
        spec: LayerSpec,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        attribution: torch.Tensor,
        baseline: torch.Tensor,
    ) -> torch.Tensor:
        """``Σ attribution − (F(x) − F(x; a'))`` per example."""
        with torch.no_grad():
            full = explained.scores(inputs.shape[0], lambda rows: inputs[rows], targets, "logit")
            current: list[torch.Tensor] = []
            parts = []
            for rows in explained.slices(inputs.shape[0]):
                current[:] = [baseline[rows]]
                with replaced_layer(explained.model, spec, lambda: current[0]):
                    logits = explained.logits(inputs[rows])
                parts.append(class_scores(logits.float() if logits.dtype != torch.float64 else logits, targets[rows]))
            empty = torch.cat(parts)
        return attribution.flatten(1).sum(1).float() - (full - empty).float()


class LayerGradientXActivation(_LayerMethod):
    """``a ⊙ ∂F/∂a`` at a layer (gradient × input on the embedding layer for text); shaped like the layer's tensor.

    Args:
        layer: layer spec or ``"auto"`` (token ids: the word embedding).
        multiply_by_inputs: False returns the layer gradient ``∂F/∂a`` alone.
        pad_id: padding positions are zeroed in the result.
    """

    name = "layer_gradient_x_activation"
    title = "Layer gradient × activation"

    def __init__(self, layer: str = "auto", multiply_by_inputs: bool = True, **options: Any) -> None:
        super().__init__(layer=layer, **options)
        self.multiply_by_inputs = multiply_by_inputs

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        if not inputs.is_floating_point():
            inputs = token_ids(inputs, type(self).__name__)
        spec = self.layer_spec(explained.model, inputs)
        from xai_lightning.core import resolve_targets

        parts = []
        for rows in explained.slices(inputs.shape[0]):
            x = guard.input(inputs[rows], requires_grad=False)
            with LayerCapture(explained.model, spec, graph_from_layers=True) as capture:
                logits = explained.logits(x)
            targets = resolve_targets(target, logits, None if labels is None else labels[rows])
            (gradient,) = capture.gradients_of(class_scores(logits, targets).sum(), [spec.key])
            activation = capture.activations[spec.key]
            parts.append((gradient * activation if self.multiply_by_inputs else gradient).detach())
        attribution = torch.cat(parts)
        if self.pad_id is not None and not inputs.is_floating_point() and attribution.dim() == 3:
            attribution = attribution * (inputs != self.pad_id).unsqueeze(-1)
        return attribution, None
