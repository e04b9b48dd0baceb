"""SmoothGrad (Smilkov, Thorat, Kim, Viégas & Wattenberg, "SmoothGrad: removing noise by adding noise",
2017) as a wrapper over any gradient method, with its variants SmoothGrad² and VarGrad
(Adebayo et al., "Local Explanation Methods for Deep Neural Networks Lack Sensitivity to
Parameter Values", 2018).

For an attribution method ``M`` and noisy copies ``x + ε_s``, ``ε_s ~ N(0, σ²)``, s = 1…N:

=================  ==============================================
``smoothgrad``     (1/N) Σ_s M(x + ε_s)
``smoothgrad_sq``  (1/N) Σ_s M(x + ε_s)²
``vargrad``        (1/N) Σ_s M(x + ε_s)² − ((1/N) Σ_s M(x + ε_s))²
=================  ==============================================

Defaults from the paper: N = 50 and σ = 0.15 · (max x − min x), per example. Wrapping
Integrated Gradients gives smooth IG. The explained class is the one of the clean input. All
``B × N`` noisy copies go through the wrapped method as one batch (sliced by ``max_batch``).

Noise: one draw ``ε_s`` of shape ``(N, *x.shape[1:])`` is shared by the examples of the batch
and scaled by each example's σ, so an example's result does not depend on its batch-mates
(``max_batch`` slicing and DDP sharding leave it unchanged). To reproduce another
implementation's draws, pass ``noise=`` explicitly (``(B, N, ...)`` or ``(N, ...)``, already scaled).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.core import ObserverGuard, TargetSpec
from xai_lightning.core.device_generator import device_generator

__all__ = ["SmoothGrad"]

Variant = Literal["smoothgrad", "smoothgrad_sq", "vargrad"]


class SmoothGrad(AttributionMethod):
    """Noise-averaged attributions of a wrapped gradient method; output shaped like the wrapped method's.

    Args:
        wrapped: name of the wrapped method (``"saliency"``, ``"integrated_gradients"``,
            ``"input_x_gradient"``, ``"guided_backprop"``, ``"deconvnet"``, ``"deeplift"``, …) or an
            :class:`AttributionMethod` instance.
        wrapped_options: options of the wrapped method by name. For ``"saliency"`` the default is
            ``abs=False``: the paper averages signed gradients and takes magnitudes for display.
        variant: ``"smoothgrad"`` (default), ``"smoothgrad_sq"`` or ``"vargrad"``.
        n_samples: noisy copies per example (N = 50).
        noise_level: σ as a fraction of each example's value range (0.15).
        stdev: an absolute σ instead (Captum's ``stdevs``).
        noise: explicit noise, ``(B, N, *x.shape[1:])`` or ``(N, *x.shape[1:])``; overrides the draw.
    """

    name = "smoothgrad"
    title = "SmoothGrad"
    stochastic = True

    def __init__(
        self,
        wrapped: str | AttributionMethod = "saliency",
        wrapped_options: dict[str, Any] | None = None,
        variant: Variant = "smoothgrad",
        n_samples: int = 50,
        noise_level: float = 0.15,
        stdev: float | None = None,
        noise: torch.Tensor | None = None,
        **common,
    ) -> None:
        super().__init__(**common)
        if variant not in ("smoothgrad", "smoothgrad_sq", "vargrad"):
            raise ValueError(f"Unknown SmoothGrad variant {variant!r}; use 'smoothgrad', 'smoothgrad_sq' or 'vargrad'.")
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1; got {n_samples}")
        if noise_level < 0 or (stdev is not None and stdev < 0):
            raise ValueError("The noise standard deviation must be >= 0.")
        if isinstance(wrapped, AttributionMethod):
            self.inner = wrapped
        else:
            from xai_lightning.attribution.registry import get_method, method_class

            options = dict(wrapped_options or {})
            if method_class(wrapped).name == "saliency":
                options.setdefault("abs", False)
            self.inner = get_method(wrapped, **options)
        if isinstance(self.inner, SmoothGrad):
            raise ValueError("SmoothGrad cannot wrap itself; choose a gradient method to smooth.")
        self.wrapped = self.inner.name
        self.variant = variant
        self.n_samples = n_samples
        self.noise_level = noise_level
        self.stdev = stdev
        self.noise = noise
        self.map_reduction = self.inner.map_reduction  # type: ignore[misc]
        self.has_convergence_delta = self.inner.has_convergence_delta  # type: ignore[misc]
        self.image_only = self.inner.image_only  # type: ignore[misc]
        if common.get("fold_batchnorm") is None:
            self.fold_batchnorm = self.inner.fold_batchnorm

    def _noise(self, inputs: torch.Tensor) -> torch.Tensor:
        batch, shape = inputs.shape[0], tuple(inputs.shape[1:])
        if self.noise is not None:
            noise = self.noise.detach().clone().to(inputs.device, inputs.dtype)
            if tuple(noise.shape) == (self.n_samples, *shape):
                return noise.unsqueeze(0).expand(batch, *noise.shape)
            if tuple(noise.shape) == (batch, self.n_samples, *shape):
                return noise
            raise ValueError(
                f"SmoothGrad noise of shape {tuple(noise.shape)} does not fit inputs of shape {tuple(inputs.shape)} "
                f"with n_samples={self.n_samples}: give ({batch}, {self.n_samples}, {', '.join(map(str, shape))}) or "
                f"({self.n_samples}, {', '.join(map(str, shape))})."
            )
        if self.stdev is not None:
            sigma = torch.full((batch,), float(self.stdev), device=inputs.device, dtype=inputs.dtype)
        else:
            flat = inputs.flatten(1)
            sigma = self.noise_level * (flat.amax(1) - flat.amin(1))
        standard = torch.randn(
            (self.n_samples, *shape),
            dtype=torch.float32,
            device=inputs.device,
            generator=device_generator(inputs.device),
        ).to(inputs.dtype)
        return sigma.view(batch, 1, *([1] * len(shape))) * standard.unsqueeze(0)

    def _check_inputs(self, inputs: torch.Tensor) -> None:
        super()._check_inputs(inputs)
        self.inner._check_inputs(inputs)

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        batch, n = inputs.shape[0], self.n_samples
        targets, _ = explained.resolve(inputs, target, labels)
        noisy = (inputs.unsqueeze(1) + self._noise(inputs)).flatten(0, 1)  # example-major: (b0 s0, b0 s1, …)
        attribution, delta = self.inner._attribute(explained, noisy, targets.repeat_interleave(n), None, guard)
        samples = attribution.view(batch, n, *attribution.shape[1:])
        mean = samples.mean(dim=1)
        if self.variant == "smoothgrad":
            result = mean
        else:
            mean_square = samples.square().mean(dim=1)
            result = mean_square if self.variant == "smoothgrad_sq" else mean_square - mean.square()
        if delta is not None:
            delta = delta.view(batch, n).mean(dim=1)
        return result, delta
