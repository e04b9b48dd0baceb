"""The shape every attribution method shares: configure once, ``attribute(model, x, target)`` per batch.

Captum's convention: the constructor holds the method's settings (plain values), ``attribute``
runs it on a model and a batch. :class:`AttributionMethod` adds what every method of ours must
do the same way — enter the observer guard (eval mode, isolated RNG, autograd enabled even under
``no_grad``/``inference_mode``, hooks removed in ``finally``), copy the inputs out of the caller's
graph, reject inputs a method cannot explain with a message naming the fix, resolve the explained
class, and slice the work by ``max_batch``.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Literal, overload

import torch
from torch import nn

from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.attribution.maps import MapReduction, reduce_to_map
from xai_lightning.core import ObserverGuard, TargetSpec, observe, split_target, unwrap_model

__all__ = ["AttributionMethod"]


class AttributionMethod:
    """Base class of the attribution methods in :mod:`xai_lightning.attribution`.

    Subclasses set the class attributes and implement :meth:`_attribute`.

    Args (shared by every method):
        output_key: dict key or tuple index of the logits when the model returns several outputs.
        max_batch: most model inputs per forward/backward pass (IG steps, noisy copies, occluded
            images, masks and coalitions are all counted as rows); None: no cap.
        seed: seed of the (isolated) torch generator for stochastic methods; None keeps the
            current state of the generator inside the guard.
        fold_batchnorm: fold eval BatchNorms into the convolutions before them for the passes
            (faster; the same numbers up to float rounding); None: the method's default
            (:attr:`fold_batchnorm_default`).
    """

    #: registry name, e.g. ``"integrated_gradients"``.
    name: ClassVar[str] = ""
    #: human-readable name for figures, e.g. ``"Integrated Gradients"``.
    title: ClassVar[str] = ""
    #: True for methods that only make sense on images ``(B, C, H, W)`` (CAMs, XRAI).
    image_only: ClassVar[bool] = False
    #: how attributions become one heatmap per image (:func:`~xai_lightning.attribution.maps.reduce_to_map`).
    map_reduction: ClassVar[MapReduction] = "abs_sum"
    #: True when the method draws random numbers (noise, masks, coalitions).
    stochastic: ClassVar[bool] = False
    #: True when the method has a convergence delta (completeness / summation-to-delta error).
    has_convergence_delta: ClassVar[bool] = False
    #: Whether ``fold_batchnorm=None`` folds eval BatchNorms into their convolutions for the passes
    #: (:mod:`xai_lightning.core.batchnorm_folding`). Folding changes float rounding, which is
    #: harmless for forward values and for gradients at ordinary inputs, but at points near max-pool
    #: and ReLU ties — the path points near the baseline of IG and GradientSHAP, DeepLIFT's
    #: references — it flips which of two near-equal inputs gets the gradient: those methods keep
    #: the plain passes by default (and their agreement with Captum to 1e-5).
    fold_batchnorm_default: ClassVar[bool] = True

    def __init__(
        self,
        *,
        output_key: str | int | None = None,
        max_batch: int | None = None,
        seed: int | None = None,
        fold_batchnorm: bool | None = None,
    ):
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 or None; got {max_batch}")
        self.output_key = output_key
        self.max_batch = max_batch
        self.seed = seed
        self.fold_batchnorm = self.fold_batchnorm_default if fold_batchnorm is None else bool(fold_batchnorm)

    # ------------------------------------------------------------------ public API
    @overload
    def attribute(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        target: TargetSpec = "predicted",
        *,
        labels: torch.Tensor | None = None,
        trainer: Any | None = None,
        return_convergence_delta: Literal[False] = False,
    ) -> torch.Tensor: ...

    @overload
    def attribute(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        target: TargetSpec = "predicted",
        *,
        labels: torch.Tensor | None = None,
        trainer: Any | None = None,
        return_convergence_delta: Literal[True],
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    @overload
    def attribute(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        target: TargetSpec = "predicted",
        *,
        labels: torch.Tensor | None = None,
        trainer: Any | None = None,
        return_convergence_delta: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...

    def attribute(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        target: TargetSpec = "predicted",
        *,
        labels: torch.Tensor | None = None,
        trainer: Any | None = None,
        return_convergence_delta: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attributions of ``model`` on ``inputs`` for ``target`` (see the method's docstring for shapes).

        Args:
            model: any ``nn.Module`` returning logits ``(B, K)`` (or a dict/tuple, with ``output_key``);
                DDP and ``torch.compile`` wrappers are looked through.
            inputs: ``(B, C, H, W)`` images, or ``(B, D)`` features for methods that accept them.
            target: ``"predicted"``, ``"label"`` (needs ``labels``), a class index, one per example, or a
                callable on the model output returning ``(B,)`` scores to explain.
            trainer: a Lightning trainer, for its precision context (optional).
            return_convergence_delta: also return the per-example ``(B,)`` delta of methods with
                a completeness axiom (IG, DeepLIFT, DeepSHAP, GradientSHAP, SmoothGrad over them).
        """
        self._check_inputs(inputs)
        if return_convergence_delta and not self.has_convergence_delta:
            raise TypeError(
                f"{type(self).__name__} has no convergence delta; call it without return_convergence_delta."
            )
        network = unwrap_model(model)
        score_fn, target = split_target(target)
        with observe(network, trainer=trainer, seed=self.seed) as guard:
            # Copies made inside the guard are ordinary tensors even when the caller is under
            # torch.inference_mode, and they are detached from any training graph.
            x = inputs.detach().clone()
            label_copy = None if labels is None else torch.as_tensor(labels).detach().clone().to(x.device)
            try:
                # On CUDA ``like=x`` runs one row through the model for a memory-aware max_batch:
                # inside the try, so a 3-D slip gets the same hint as in the method itself.
                explained = ExplainedModel(
                    network,
                    self.output_key,
                    self.max_batch,
                    want_delta=return_convergence_delta,
                    score_fn=score_fn,
                    like=x,
                    fold_batchnorm=self.fold_batchnorm,
                )
                attribution, delta = self._attribute(explained, x, target, label_copy, guard)
            except Exception as error:
                if inputs.dim() != 3:
                    raise
                # (C, H, W) is the usual slip: one image without its batch dimension. Say so; the
                # model's own error follows as the cause.
                raise ValueError(
                    f"{type(self).__name__} failed on inputs of shape {tuple(inputs.shape)}. Methods take a batch: "
                    f"images (B, C, H, W) or features (B, D). For one image, add the batch dimension: "
                    f"inputs.unsqueeze(0) -> {(1, *inputs.shape)}."
                ) from error
        attribution = attribution.detach().contiguous()  # gradient passes may leave a channels-last layout
        if return_convergence_delta:
            assert delta is not None
            return attribution, delta.detach()
        return attribution

    def to_map(self, attribution: torch.Tensor) -> torch.Tensor:
        """One ``(B, H, W)`` heatmap per image from this method's attributions."""
        return reduce_to_map(attribution, self.map_reduction)

    @classmethod
    def option_names(cls) -> list[str]:
        """Keyword options the constructor accepts (for error messages and the registry)."""
        names: list[str] = []
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            for parameter in inspect.signature(init).parameters.values():
                if parameter.name != "self" and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                    if parameter.name not in names:
                        names.append(parameter.name)
        return names

    def __repr__(self) -> str:
        shown = {k: v for k, v in vars(self).items() if not k.startswith("_") and not isinstance(v, torch.Tensor)}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    # ------------------------------------------------------------------ subclass API
    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(attributions, delta or None)``; runs inside the guard on a private copy of the inputs."""
        raise NotImplementedError

    def _check_inputs(self, inputs: torch.Tensor) -> None:
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"{type(self).__name__} explains a tensor of inputs; got {type(inputs).__name__}")
        if not inputs.is_floating_point():
            raise TypeError(
                f"{type(self).__name__} needs floating-point inputs to differentiate or perturb; got {inputs.dtype}. "
                "Convert with inputs.float()."
            )
        if inputs.dim() < 2 or inputs.shape[0] == 0:
            raise ValueError(
                f"{type(self).__name__} explains a non-empty batch (B, ...); got inputs of shape {tuple(inputs.shape)}"
            )
        finite = torch.isfinite(inputs.detach()).flatten(1).all(1)
        if not bool(finite.all()):
            rows = (~finite).nonzero().flatten().tolist()
            shown = ", ".join(map(str, rows[:8])) + (", ..." if len(rows) > 8 else "")
            raise ValueError(
                f"{type(self).__name__}: inputs contain NaN or Inf in {len(rows)} of {inputs.shape[0]} examples (rows "
                f"{shown}); attributions of non-finite inputs are meaningless. Check the data pipeline, or drop those "
                "rows: inputs[torch.isfinite(inputs).flatten(1).all(1)]."
            )
        if self.image_only and inputs.dim() != 4:
            from xai_lightning.attribution.registry import available_methods

            tabular = [name for name in available_methods() if not _method_class(name).image_only]
            raise ValueError(
                f"{type(self).__name__} explains images (B, C, H, W); got inputs of shape {tuple(inputs.shape)}. "
                f"For non-image inputs use one of: {', '.join(tabular)}."
            )


def _method_class(name: str) -> type[AttributionMethod]:
    from xai_lightning.attribution.registry import method_class

    return method_class(name)
