"""Token occlusion: drop (or mask) each word — or n-gram — of a sentence and watch the prediction.

The text counterpart of Zeiler & Fergus's occlusion (REFERENCE.md, "Text occlusion"): for every
sentence and every window of ``ngram`` consecutive words, the window is

* ``"remove"``d — the sentence is shortened, later tokens move left, padding fills the end;
* replaced by padding (``"pad"``), or by a mask token (``"mask"``, e.g. BERT's [MASK] id);

and the attribution of a token is the mean drop of the target's score over the windows covering
it (for ``ngram=1``: the drop when that word alone is occluded). Words are single tokens unless
``word_ids`` groups sub-word tokens. Padding and ``protected_ids`` (e.g. [CLS], [SEP]) are never
occluded and get 0.

Batched across tokens *and* sentences: all ``Σ_b W_b`` occluded sentences and the ``B`` unoccluded
ones are built as rows, sorted by length and evaluated in passes of at most ``tokens_per_pass``
tokens (and ``max_batch`` rows); each pass is cut to its longest row (``trim_padding``), so a short
sentence does not pay for the longest one's padding. Trimming is exact for a model that ignores
trailing padding (attention mask from the padding, masked pooling); ``trim_padding="auto"`` checks
that on the most padded unoccluded sentences first and keeps full width otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from xai_lightning.attribution.explained_model import (
    ExplainedModel,
    ScoreKind,
    score_precision,
    scores_from_logits,
)
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.attribution.token_inputs import explainable_tokens, token_ids
from xai_lightning.core import ObserverGuard, TargetSpec, observe, resolve_targets, split_target, unwrap_model

__all__ = ["OcclusionMode", "TokenOcclusion", "TokenOcclusionResult", "word_attribution"]

OcclusionMode = Literal["remove", "pad", "mask"]

#: Tokens per forward pass of occluded sentences (TextClassifier(dim=32, depth=2), 64 sentences, 1 CPU
#: thread: 2¹¹–2¹² tokens per pass fastest; 2¹⁰ 15 % and 2¹⁴ 17 % slower; see
#: experiments/benchmarks/transformers_and_text.py).
TOKENS_PER_PASS = 2**12
#: ``trim_padding="auto"`` compares full and trimmed scores on this many of the most padded sentences.
TRIM_CHECK_SENTENCES = 8


@dataclass(frozen=True)
class TokenOcclusionResult:
    """Everything a token-occlusion run measured.

    Attributes:
        attributions: ``(B, T)`` mean score drop of the windows covering each token (0 for padding
            and protected tokens).
        window_drops: ``(B, W)`` score drop of each window (NaN beyond a sentence's ``W_b`` windows).
        window_starts: ``(B, W)`` index of each window's first word (-1 beyond ``W_b``).
        word_ids: ``(B, T)`` word of every position (-1: not a word: padding, protected).
        original: ``(B,)`` score of each unoccluded sentence; targets ``(B,)``.
        trimmed: whether passes were cut to their longest row.
    """

    attributions: torch.Tensor
    window_drops: torch.Tensor
    window_starts: torch.Tensor
    word_ids: torch.Tensor
    original: torch.Tensor
    targets: torch.Tensor
    trimmed: bool


def word_attribution(attributions: torch.Tensor, ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``(B, V)``: token attributions ``(B, T)`` summed per vocabulary word (a word occurring twice gets both)."""
    out = torch.zeros(ids.shape[0], vocab_size, dtype=attributions.dtype, device=attributions.device)
    return out.scatter_add_(1, ids.long(), attributions)


def _words(ids: torch.Tensor, explainable: torch.Tensor, word_ids: torch.Tensor | None) -> torch.Tensor:
    """``(B, T)`` word index of each explainable position (0, 1, … per sentence), -1 elsewhere."""
    if word_ids is None:
        return torch.where(explainable, explainable.long().cumsum(1) - 1, torch.full_like(ids, -1))
    words = torch.as_tensor(word_ids, device=ids.device).long()
    if words.shape != ids.shape:
        raise ValueError(f"word_ids {tuple(words.shape)} must have the shape of the token ids {tuple(ids.shape)}")
    words = torch.where(explainable, words, torch.full_like(words, -1))
    # Renumber to 0, 1, … in order of appearance per sentence.
    shifted = torch.where(words >= 0, words, words.amax() + 1)
    renumbered = torch.unique(shifted, dim=None, return_inverse=True)[1]
    first = torch.full((ids.shape[0], int(renumbered.max()) + 1), ids.shape[1], device=ids.device, dtype=torch.long)
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    # Non-word positions rank after every word (and after ids absent from the sentence).
    first.scatter_reduce_(1, renumbered, torch.where(words >= 0, positions, ids.shape[1] + 1), "amin")
    order = first.argsort(1).argsort(1)
    return torch.where(words >= 0, order.gather(1, renumbered), torch.full_like(words, -1))


class TokenOcclusion(AttributionMethod):
    """Drop in the target's score when each word (n-gram) of a sentence is occluded; ``(B, T)`` per token.

    Args:
        mode: ``"remove"`` (default: the words are deleted), ``"pad"`` (replaced by ``pad_id``) or
            ``"mask"`` (replaced by ``mask_id``).
        ngram: words per window (windows slide by one word).
        pad_id: the padding id (trailing padding is never occluded).
        mask_id: the replacement of ``mode="mask"`` (e.g. BERT's [MASK]).
        protected_ids: ids never occluded (e.g. [CLS], [SEP]).
        score: ``"probability"`` (default: the drop in the target's probability) or ``"logit"``.
        trim_padding: ``"auto"`` (default; checked on the 8 most padded sentences), True or False.
        tokens_per_pass: most tokens per forward pass (rows × longest row).
        max_batch: most occluded sentences per forward pass.

    :meth:`explain` also returns every window's drop (``TokenOcclusionResult``) and accepts
    ``word_ids`` ``(B, T)`` grouping sub-word tokens into words.
    """

    name = "token_occlusion"
    title = "Token occlusion"
    map_reduction = "none"

    def __init__(
        self,
        mode: OcclusionMode = "remove",
        ngram: int = 1,
        pad_id: int = 0,
        mask_id: int | None = None,
        protected_ids: Sequence[int] = (),
        score: ScoreKind = "probability",
        trim_padding: bool | Literal["auto"] = "auto",
        tokens_per_pass: int = TOKENS_PER_PASS,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        if mode not in ("remove", "pad", "mask"):
            raise ValueError(f"mode must be 'remove', 'pad' or 'mask'; got {mode!r}")
        if mode == "mask" and mask_id is None:
            raise ValueError("mode='mask' replaces words by mask_id; pass it (e.g. BERT's [MASK] id, 103).")
        if ngram < 1:
            raise ValueError(f"ngram must be >= 1; got {ngram}")
        if score not in ("probability", "logit"):
            raise ValueError(f"score must be 'probability' or 'logit'; got {score!r}")
        if trim_padding not in (True, False, "auto"):
            raise ValueError(f"trim_padding must be True, False or 'auto'; got {trim_padding!r}")
        if tokens_per_pass < 1:
            raise ValueError(f"tokens_per_pass must be >= 1; got {tokens_per_pass}")
        self.mode = mode
        self.ngram = ngram
        self.pad_id = pad_id
        self.mask_id = mask_id
        self.protected_ids = tuple(protected_ids)
        self.score = score
        self.trim_padding = trim_padding
        self.tokens_per_pass = tokens_per_pass

    def _check_inputs(self, inputs: torch.Tensor) -> None:
        token_ids(inputs, type(self).__name__)

    def to_map(self, attribution: torch.Tensor) -> torch.Tensor:
        """Token attributions ``(B, T)`` are already one score per token."""
        return attribution.float()

    # ------------------------------------------------------------------ public API
    def explain(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        target: TargetSpec = "predicted",
        *,
        labels: torch.Tensor | None = None,
        word_ids: torch.Tensor | None = None,
        trainer: Any | None = None,
    ) -> TokenOcclusionResult:
        """The full result: per-token attributions and every window's drop."""
        ids = token_ids(inputs, type(self).__name__)
        network = unwrap_model(model)
        score_fn, target = split_target(target)
        with observe(network, trainer=trainer, seed=self.seed):
            label_copy = None if labels is None else torch.as_tensor(labels).detach().clone().to(ids.device)
            ids = ids.detach().clone()
            explained = ExplainedModel(
                network,
                self.output_key,
                self.max_batch,
                score_fn=score_fn,
                like=ids,
                fold_batchnorm=self.fold_batchnorm,
            )
            return self._explain(explained, ids, target, label_copy, word_ids)

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        return self._explain(explained, token_ids(inputs), target, labels, None).attributions, None

    # ------------------------------------------------------------------ internals
    def _passes(self, lengths: torch.Tensor) -> list[torch.Tensor]:
        """Row indices of each forward pass: rows sorted by length (longest first), at most
        ``tokens_per_pass`` tokens (rows × longest row) and ``max_batch`` rows per pass."""
        order = torch.argsort(lengths, descending=True, stable=True)
        passes, start, total = [], 0, order.numel()
        sorted_lengths = lengths[order].tolist()
        while start < total:
            width = max(int(sorted_lengths[start]), 1)
            rows = max(1, self.tokens_per_pass // width)
            if self.max_batch is not None:
                rows = min(rows, self.max_batch)
            passes.append(order[start : start + rows])
            start += rows
        return passes

    def _row_logits(self, explained: ExplainedModel, make: Any, lengths: torch.Tensor, trim: bool) -> torch.Tensor:
        """``(R, K)`` logits of rows produced by ``make(row indices) → (r, T)``, in length-sorted passes.

        The passes run in inference mode (as Lightning's validation does): scores only, no autograd
        bookkeeping at all (~4 % faster than ``no_grad`` here); the result is an ordinary tensor.
        """
        parts, order = [], []
        with torch.inference_mode():
            for rows in self._passes(lengths):
                ids = make(rows)
                if trim:
                    ids = ids[:, : max(int(lengths[rows].max()), 1)]
                parts.append(score_precision(explained.logits(ids)))
                order.append(rows)
            logits = torch.cat(parts)
            in_row_order = torch.empty_like(logits).index_copy_(0, torch.cat(order), logits)
        return in_row_order.clone()  # an ordinary tensor, usable outside inference mode

    def _explain(
        self,
        explained: ExplainedModel,
        ids: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        word_ids: torch.Tensor | None,
    ) -> TokenOcclusionResult:
        explained.check_score_kind(self.score)
        batch, width = ids.shape
        device = ids.device
        real = ids != self.pad_id
        positions = torch.arange(width, device=device)
        lengths = torch.where(
            real.any(1), width - real.flip(1).long().argmax(1), torch.zeros_like(real[:, 0], dtype=torch.long)
        )
        explainable = explainable_tokens(ids, self.pad_id, self.protected_ids) & (positions < lengths[:, None])
        words = _words(ids, explainable, word_ids)
        num_words = (words.amax(1) + 1).clamp_min(0)  # (B,)
        num_windows = torch.where(num_words > 0, (num_words - self.ngram + 1).clamp_min(1), torch.zeros_like(num_words))
        max_windows = int(num_windows.max()) if batch else 0

        # Rows: (example, window), example-major.
        example = torch.repeat_interleave(torch.arange(batch, device=device), num_windows)
        offsets = torch.cumsum(num_windows, 0) - num_windows
        window = torch.arange(example.numel(), device=device) - offsets[example]
        covered_words = (words[example] >= window[:, None]) & (words[example] < window[:, None] + self.ngram)
        if self.mode == "remove":
            row_lengths = lengths[example] - covered_words.sum(1)
        else:
            row_lengths = lengths[example]
        if self.mode == "mask":
            assert self.mask_id is not None  # __init__ requires it for mode="mask"
            replacement = self.mask_id
        else:
            replacement = self.pad_id  # mode "pad" (mode "remove" does not replace words)

        # One set of passes scores the unoccluded sentences (rows 0 … B-1: nothing hidden) and the
        # occluded rows together: no pass of their own for the B sentences.
        row_example = torch.cat([torch.arange(batch, device=device), example])
        row_hidden = torch.cat([torch.zeros_like(ids, dtype=torch.bool), covered_words])
        all_lengths = torch.cat([lengths, row_lengths])

        def occluded(rows: torch.Tensor) -> torch.Tensor:
            source, hide = ids[row_example[rows]], row_hidden[rows]
            if self.mode != "remove":
                return torch.where(hide, torch.full_like(source, replacement), source)
            keep = ~hide
            # Kept tokens move left in order; removed ones land in a spare column that is dropped.
            destination = torch.where(keep, keep.long().cumsum(1) - 1, torch.full_like(source, width))
            out = torch.full((source.shape[0], width + 1), self.pad_id, dtype=source.dtype, device=device)
            out.scatter_(1, destination, source)
            return out[:, :width]

        trim = self._trims_padding(explained, ids, lengths)
        logits = self._row_logits(explained, occluded, all_lengths, trim)
        targets = resolve_targets(target, logits[:batch], labels)
        scores = scores_from_logits(logits, torch.cat([targets, targets[example]]), self.score).double()
        original, perturbed = scores[:batch], scores[batch:]
        drops = original[example] - perturbed  # (R,)

        window_drops = torch.full((batch, max_windows), float("nan"), dtype=torch.float64, device=device)
        window_starts = torch.full((batch, max_windows), -1, dtype=torch.long, device=device)
        window_drops[example, window] = drops
        window_starts[example, window] = window
        # Token attribution: mean drop of the windows covering the token's word.
        sums = torch.zeros(batch, width, dtype=torch.float64, device=device)
        counts = torch.zeros(batch, width, dtype=torch.float64, device=device)
        sums.index_put_((example,), drops[:, None] * covered_words, accumulate=True)
        counts.index_put_((example,), covered_words.double(), accumulate=True)
        attributions = torch.where(counts > 0, sums / counts.clamp_min(1), torch.zeros_like(sums))
        return TokenOcclusionResult(
            attributions=attributions.float(),
            window_drops=window_drops.float(),
            window_starts=window_starts,
            word_ids=words,
            original=original.float(),
            targets=targets,
            trimmed=trim,
        )

    def _trims_padding(self, explained: ExplainedModel, ids: torch.Tensor, lengths: torch.Tensor) -> bool:
        """Whether passes are cut to their longest row: ``"auto"`` checks that cutting the padding of the
        most padded sentences changes none of their scores, for any class (two small passes)."""
        if self.trim_padding != "auto":
            return bool(self.trim_padding)
        padded = torch.argsort(lengths, stable=True)[:TRIM_CHECK_SENTENCES]
        sample, sample_lengths = ids[padded], lengths[padded]
        full = self._row_logits(explained, lambda rows: sample[rows], sample_lengths, False)
        cut = self._row_logits(explained, lambda rows: sample[rows], sample_lengths, True)
        # Every class's score is compared: the targets come from the sentences' pass, after this check.
        if self.score == "probability":
            full, cut = full.softmax(1), cut.softmax(1)
        return bool(torch.allclose(full, cut, rtol=1e-4, atol=1e-6))
