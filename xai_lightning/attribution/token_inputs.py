"""Token-id inputs for the text methods: validation, padding and which positions may be explained.

Text models take ``(B, T)`` integer token ids, padded at the end with ``pad_id``. The text methods
(token occlusion, LIME/KernelSHAP over tokens, embedding attributions) call the model on ids
alone — ``model(ids)`` — so a model that must not attend to padding should derive its attention
mask from the ids (our :class:`~xai_lightning.models.TextClassifier` and
:class:`~xai_lightning.models.SequenceClassifier` do; wrap a bare Hugging Face model in
:class:`~xai_lightning.models.PaddingMasked`). Ids may arrive as floats holding integers (a probe
set stores them so): they are converted exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["explainable_tokens", "token_ids"]


def token_ids(inputs: torch.Tensor, method: str = "This method") -> torch.Tensor:
    """``(B, T)`` long token ids from integer (or integer-valued float) inputs; a clear error otherwise."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"{method} explains a tensor of token ids (B, T); got {type(inputs).__name__}")
    if inputs.dim() != 2 or inputs.shape[0] == 0:
        raise ValueError(f"{method} explains token ids (B, T); got inputs of shape {tuple(inputs.shape)}")
    if inputs.is_floating_point():
        if not torch.equal(inputs, inputs.round()) or inputs.min() < 0:
            raise ValueError(f"{method} explains token ids; got non-integer values. Pass the ids as a long tensor.")
        return inputs.round().long()
    if inputs.dtype == torch.bool or inputs.is_complex():
        raise TypeError(f"{method} explains integer token ids; got {inputs.dtype}")
    return inputs.long()


def explainable_tokens(ids: torch.Tensor, pad_id: int | None, protected_ids: Sequence[int] = ()) -> torch.Tensor:
    """``(B, T)`` bool: positions that carry a token to explain — not padding, not a protected id
    (e.g. BERT's ``[CLS]`` and ``[SEP]``)."""
    keep = torch.ones_like(ids, dtype=torch.bool) if pad_id is None else ids != pad_id
    if protected_ids:
        keep &= ~torch.isin(ids, torch.as_tensor(list(protected_ids), device=ids.device))
    return keep
