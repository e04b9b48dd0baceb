"""LIME and KernelSHAP over the words of a sentence (Ribeiro et al. 2016; Lundberg & Lee 2017).

The interpretable features are the sentence's words (tokens, or groups of sub-word tokens given
by ``word_ids``); an absent word is replaced by the padding id (``mode="pad"``) or a mask token
(``mode="mask"``), so every coalition is a sentence of the same length. Padding and protected ids
([CLS], [SEP]) are never features: their baseline is their own id, so they stay as they are.

Everything else — coalition sampling, kernels, the batched weighted fits, ``max_batch`` — is the
image/table machinery of :mod:`~xai_lightning.attribution.surrogate`: the token ids travel through
it as exact integer-valued floats and a thin wrapper hands the model integer ids again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.attribution.kernel_shap import KernelShap
from xai_lightning.attribution.lime import Lime
from xai_lightning.attribution.surrogate import SurrogateExplanation, SurrogateMethod
from xai_lightning.attribution.token_inputs import explainable_tokens, token_ids
from xai_lightning.attribution.token_occlusion import _words
from xai_lightning.core import ObserverGuard, TargetSpec

__all__ = ["TokenKernelShap", "TokenLime"]


class _IdsFromFloats(nn.Module):
    """Calls the wrapped model on ``x.round().long()``: integer-valued float rows back to token ids."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> object:
        return self.model(x.round().long())


class _TokenSurrogate(SurrogateMethod):
    """Words as the interpretable features of a surrogate method; output ``(B, T)`` (each token: its word's φ)."""

    def _setup_tokens(
        self, mode: Literal["pad", "mask"], pad_id: int, mask_id: int | None, protected_ids: Sequence[int]
    ) -> None:
        if mode not in ("pad", "mask"):
            raise ValueError(f"mode must be 'pad' or 'mask' (absent words keep the sentence's length); got {mode!r}")
        if mode == "mask" and mask_id is None:
            raise ValueError("mode='mask' replaces absent words by mask_id; pass it (e.g. BERT's [MASK] id, 103).")
        self.mode = mode
        self.pad_id = pad_id
        self.mask_id = mask_id
        self.protected_ids = tuple(protected_ids)

    def _check_inputs(self, inputs: torch.Tensor) -> None:
        token_ids(inputs, type(self).__name__)

    def to_map(self, attribution: torch.Tensor) -> torch.Tensor:
        """Token attributions ``(B, T)`` are already one score per token."""
        return attribution.float()

    def attribute(self, model: nn.Module, inputs: torch.Tensor, target: TargetSpec = "predicted", **kwargs: Any):
        return super().attribute(_IdsFromFloats(model), token_ids(inputs).float(), target, **kwargs)

    def explain(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        target: TargetSpec = "predicted",
        *,
        word_ids: torch.Tensor | None = None,
        coalitions: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        trainer: Any | None = None,
        feature_mask: torch.Tensor | None = None,
    ) -> SurrogateExplanation:
        """The full fit (coefficients per word in ``coefficients``, ``(B, M)``); ``word_ids (B, T)``
        groups tokens into words. ``feature_mask`` (the image/table segmentation of the base class)
        is not accepted: the features are the words."""
        if feature_mask is not None:
            raise TypeError(
                f"{type(self).__name__}.explain() takes word_ids (B, T) to group tokens into words, not feature_mask."
            )
        self._word_ids = word_ids
        try:
            return super().explain(
                _IdsFromFloats(model),
                token_ids(inputs).float(),
                target,
                coalitions=coalitions,
                labels=labels,
                trainer=trainer,
            )
        finally:
            self._word_ids = None

    def _explain(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
        feature_mask: torch.Tensor | None,
        coalitions: torch.Tensor | None,
        baselines: torch.Tensor | None = None,
    ) -> SurrogateExplanation:
        ids = inputs.round().long()
        explainable = explainable_tokens(ids, self.pad_id, self.protected_ids)
        words = _words(ids, explainable, getattr(self, "_word_ids", None))
        # Non-word positions join word 0 as inert members: their baseline is their own id.
        features = words.clamp_min(0)
        if self.mode == "mask":
            assert self.mask_id is not None  # _setup_tokens requires it for mode="mask"
            replacement = float(self.mask_id)
        else:
            replacement = float(self.pad_id)
        baselines = torch.where(words >= 0, torch.full_like(inputs, replacement), inputs)
        result = super()._explain(explained, inputs, target, labels, guard, features, coalitions, baselines)
        result.attributions = torch.where(
            words >= 0, result.attributions, torch.zeros_like(result.attributions)
        ).float()
        return result


class TokenLime(_TokenSurrogate, Lime):
    """LIME over words: a weighted ridge surrogate of the target's score; ``(B, T)``, each token its word's φ.

    Args:
        num_samples, kernel_width, alpha, top_k, score: as :class:`~xai_lightning.attribution.Lime`.
        mode: absent words become ``"pad"`` (``pad_id``) or ``"mask"`` (``mask_id``).
        pad_id, mask_id, protected_ids: the padding and mask ids; ids never treated as words.
    """

    name = "token_lime"
    title = "LIME (tokens)"

    def __init__(
        self,
        num_samples: int = 1000,
        kernel_width: float = 0.25,
        alpha: float = 1.0,
        top_k: int | None = None,
        mode: Literal["pad", "mask"] = "pad",
        pad_id: int = 0,
        mask_id: int | None = None,
        protected_ids: Sequence[int] = (),
        **options: Any,
    ) -> None:
        super().__init__(num_samples=num_samples, kernel_width=kernel_width, alpha=alpha, top_k=top_k, **options)
        self._setup_tokens(mode, pad_id, mask_id, protected_ids)


class TokenKernelShap(_TokenSurrogate, KernelShap):
    """KernelSHAP over words: Shapley values of the words with absent words padded (or masked);
    ``(B, T)``, each token its word's value; per sentence they sum to ``f(x) − f(all words absent)``.

    Args:
        num_samples: coalitions (all ``2^M`` are enumerated when that is not more).
        mode, pad_id, mask_id, protected_ids: as :class:`TokenLime`.
        score: ``"logit"`` (default) or ``"probability"``.
    """

    name = "token_kernel_shap"
    title = "KernelSHAP (tokens)"

    def __init__(
        self,
        num_samples: int = 1000,
        mode: Literal["pad", "mask"] = "pad",
        pad_id: int = 0,
        mask_id: int | None = None,
        protected_ids: Sequence[int] = (),
        **options: Any,
    ) -> None:
        super().__init__(num_samples=num_samples, **options)
        self._setup_tokens(mode, pad_id, mask_id, protected_ids)
