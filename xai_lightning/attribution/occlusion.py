"""Occlusion (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014, section 4.2).

Slide a patch of "absence" (a grey / baseline window) over the input and record how much the
class score drops. A pixel's attribution is the mean drop over every window position covering it:

    a_i = Σ_w [i ∈ w] · (s_c(x) − s_c(x with window w replaced by the baseline)) / Σ_w [i ∈ w]

Window positions follow Captum's ``Occlusion``: along each dimension they start at 0, stride,
2·stride, … up to ``ceil((size − window) / stride)`` steps, and the last one is cropped at the
border, so every element is covered. Model-agnostic: images ``(B, C, H, W)`` and features
``(B, D)`` alike. All ``B × W`` occluded inputs (W window positions) are generated slice by slice
and evaluated as batches of at most ``max_batch`` rows — no Python loop per window or example.

Speed. Evaluating windows in batches does not reduce the work of a forward pass; two things do:

* the **incremental forward** (Krishnan & Kumar, SIGMOD 2019, "Krypton";
  :mod:`~xai_lightning.attribution.incremental_forward`): a window changes only a patch of the
  first layers' outputs, so the unoccluded activations are computed once and each occluded
  image recomputes only its patches through the model's leading Conv2d/BatchNorm2d/ReLU/MaxPool2d
  chain before the rest of the network runs on the pasted activation. Exact (equal to the plain
  path up to float reassociation). SmallCNN(width=16), 8×8 windows, stride 4: 48% of the
  multiply-adds saved, ~1.5× faster on a CPU. A CIFAR ResNet's chain is its stem (the first
  block's shortcut reads the stem's output): 1% saved, so ``"auto"`` keeps the plain path there.
* on a **CPU** (``ExplainedModel.scores(..., cpu_tuned=True)``), original and occluded images
  are laid out channels-last (CPU convolutions run ~1.4× faster in that layout; a model that
  cannot take it, e.g. one that ``.view()``s its input, gets NCHW) and evaluated in passes of at
  most 2¹⁸ input elements (85 images of 3×32×32), ``max_batch`` still capping it: bigger CPU
  batches run slower per image once activations outgrow the caches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from xai_lightning.attribution.baselines import BaselineSpec, make_baseline
from xai_lightning.attribution.explained_model import (
    CPU_INPUT_ELEMENTS_PER_PASS,
    ExplainedModel,
    ScoreKind,
    score_precision,
    scores_from_logits,
)
from xai_lightning.attribution.incremental_forward import IncrementalForward
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.core import ObserverGuard, TargetSpec, batch_slices

__all__ = ["Occlusion", "occlusion_windows", "window_boxes"]

#: ``incremental="auto"`` takes the incremental path when it saves at least this fraction of the
#: model's multiply-adds. Measured on SmallCNN(width=16), 64 images, 1 CPU thread: 48% saved
#: (8×8 windows, stride 4) ran 1.5× faster; 18% saved (16×16, stride 8) 1.1× slower, as did a
#: CIFAR ResNet's stem (1%): gathering and pasting patches costs memory traffic.
AUTO_INCREMENTAL_MIN_SAVING = 0.3


def _window_starts(size: int, window: int, stride: int) -> list[int]:
    steps = math.ceil((size - window) / stride) if size > window else 0
    return [k * stride for k in range(steps + 1)]


def occlusion_windows(
    sample_shape: Sequence[int], window: Sequence[int], strides: Sequence[int], device: torch.device | None = None
) -> torch.Tensor:
    """Boolean masks ``(W, *sample_shape)`` of every window position (Captum's enumeration of positions).

    Raises:
        ValueError: when a window is larger than the input, or a stride exceeds its window along
            a dimension the window does not cover entirely (positions would be skipped).
    """
    sample_shape, window, strides = tuple(sample_shape), tuple(window), tuple(strides)
    if not (len(window) == len(strides) == len(sample_shape)):
        raise ValueError(
            f"Occlusion window {window} and strides {strides} must have one entry per input dimension {sample_shape}."
        )
    indicators = []
    for size, win, stride in zip(sample_shape, window, strides):
        if win < 1 or stride < 1:
            raise ValueError(f"Occlusion windows and strides must be >= 1; got window {window}, strides {strides}.")
        if win > size:
            raise ValueError(f"Occlusion window {window} exceeds the input's sample shape {sample_shape}.")
        if stride > win and win < size:
            raise ValueError(
                f"Occlusion stride {strides} is larger than the window {window}: some positions would never be "
                "occluded. Use strides <= window."
            )
        starts = torch.tensor(_window_starts(size, win, stride), device=device)
        positions = torch.arange(size, device=device)
        indicators.append((positions >= starts[:, None]) & (positions < starts[:, None] + win))  # (n_d, size_d)
    masks = indicators[0]
    for indicator in indicators[1:]:
        # (n_1·…·n_k, s_1, …, s_k) ⊗ (n_{k+1}, s_{k+1}) → windows of every combination of positions
        masks = masks[:, None, ..., None] & indicator.view(
            1, indicator.shape[0], *([1] * (masks.dim() - 1)), indicator.shape[1]
        )
        masks = masks.flatten(0, 1)
    return masks


def window_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``(W, 4)`` spatial boxes ``(top, bottom, left, right)`` (exclusive ends) of image window masks
    ``(W, C, H, W)``."""
    rows, cols = masks.any(dim=1).any(dim=2), masks.any(dim=1).any(dim=1)  # (W, H), (W, W')

    def extent(covered: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = covered.int().argmax(dim=1)
        last = covered.shape[1] - covered.flip(1).int().argmax(dim=1)
        return first, last

    top, bottom = extent(rows)
    left, right = extent(cols)
    return torch.stack([top, bottom, left, right], dim=1)


class Occlusion(AttributionMethod):
    """Mean score drop when a window around each element is replaced by the baseline; shaped like the inputs.

    Args:
        window: window size — an int (a square ``k × k`` window over all channels for images, ``k``
            features for ``(B, D)``), a pair ``(kh, kw)`` (all channels), or a full per-dimension
            shape such as Captum's ``sliding_window_shapes`` ``(C, kh, kw)``. Default 8.
        stride: int or per-dimension tuple like ``window``. Default 4 (windows overlap by half).
        baseline: what fills the window — ``"mean"`` (default: each image's per-channel mean, a flat
            grey-ish patch), ``"zero"``, a number, or a tensor (e.g. the dataset's per-channel mean
            ``(C,)``), see :mod:`~xai_lightning.attribution.baselines`.
        score: ``"probability"`` (default, the paper's drop in the class probability) or ``"logit"``
            (what Captum's ``Occlusion`` measures on a model returning logits).
        incremental: ``"auto"`` (default): the incremental forward when the model's leading chain
            allows it and it saves at least 30% of the model's multiply-adds, else plain forward
            passes; ``True``: always incremental (raises a ValueError naming why when the model or
            inputs do not allow it); ``False``: always plain. Results are the same either way.

    Output ``(B, C, H, W)`` (or ``(B, D)``); map: the mean over channels. One forward pass per
    ``max_batch`` occluded inputs; ``B × W + B`` forward rows in total (the incremental path adds
    a few rows to analyse the model and one pass of the ``B`` inputs through its leading chain).
    """

    name = "occlusion"
    title = "Occlusion"
    map_reduction = "mean"

    def __init__(
        self,
        window: int | Sequence[int] = 8,
        stride: int | Sequence[int] = 4,
        baseline: BaselineSpec = "mean",
        score: ScoreKind = "probability",
        incremental: bool | Literal["auto"] = "auto",
        **common,
    ) -> None:
        super().__init__(**common)
        if score not in ("probability", "logit"):
            raise ValueError(f"score must be 'probability' or 'logit'; got {score!r}")
        if incremental not in (True, False, "auto"):
            raise ValueError(f"incremental must be True, False or 'auto'; got {incremental!r}")
        self.incremental = incremental
        self.window = window if isinstance(window, int) else tuple(window)
        self.stride = stride if isinstance(stride, int) else tuple(stride)
        self.baseline = baseline
        self.score = score

    def _shape(self, value: int | tuple[int, ...], sample_shape: tuple[int, ...], what: str) -> tuple[int, ...]:
        if isinstance(value, int):
            if len(sample_shape) == 3:
                return (sample_shape[0], value, value)
            return (value,) * len(sample_shape)
        if len(value) == len(sample_shape):
            return value
        if len(sample_shape) == 3 and len(value) == 2:
            return (sample_shape[0], *value)
        raise ValueError(
            f"Occlusion {what} {value} does not fit inputs with sample shape {sample_shape}: give an int, "
            + ("a pair (h, w), " if len(sample_shape) == 3 else "")
            + f"or {len(sample_shape)} values."
        )

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        sample_shape = tuple(inputs.shape[1:])
        window = self._shape(self.window, sample_shape, "window")
        # A channel stride defaults to the full channel window (one window over all channels).
        stride = self._shape(self.stride, sample_shape, "stride")
        if isinstance(self.stride, int) and len(sample_shape) == 3:
            stride = (window[0], *stride[1:])
        # Built on the host, where the incremental forward sizes its patches from them, then moved.
        host_masks = occlusion_windows(sample_shape, window, stride)  # (W, *sample) bool
        masks = host_masks.to(inputs.device)
        count = masks.shape[0]
        batch = inputs.shape[0]
        baselines = make_baseline(self.baseline, inputs)
        targets, _ = explained.resolve(inputs, target, labels)
        original = explained.scores(batch, lambda rows: inputs[rows], targets, self.score, cpu_tuned=True)
        row_targets = targets.repeat_interleave(count)
        incremental = self._incremental_forward(explained, inputs, host_masks)

        def example_and_window(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
            index = torch.arange(rows.start, rows.stop, device=inputs.device)
            return index // count, index % count  # example-major

        if incremental is None:

            def occluded(rows: slice) -> torch.Tensor:
                example, position = example_and_window(rows)
                return torch.where(masks[position], baselines[example], inputs[example])

            scores = explained.scores(batch * count, occluded, row_targets, self.score, cpu_tuned=True)
        else:
            parts = []
            with torch.no_grad():
                # Twice the plain path's CPU passes: the per-layer gathers have fixed costs, and an
                # incremental row holds less than a whole image's activations (SmallCNN, 8×8 windows,
                # stride 4: 2¹⁹ elements 6-7% faster than 2¹⁸ on 1 and 2 threads; 2²⁰ 20-40% slower).
                step = explained.rows_per_pass(inputs[:1], cpu_elements=2 * CPU_INPUT_ELEMENTS_PER_PASS)
                for rows in batch_slices(batch * count, step):
                    example, position = example_and_window(rows)
                    patch = torch.where(
                        incremental.crop(masks, position, position),
                        incremental.crop(baselines, example, position),
                        incremental.crop(inputs, example, position),
                    )
                    logits = score_precision(incremental.logits(example, position, patch))
                    parts.append(scores_from_logits(logits, row_targets[rows], self.score))
            scores = torch.cat(parts)
        drops = original[:, None] - scores.view(batch, count)  # (B, W)
        weights = masks.flatten(1).to(drops.dtype)  # (W, N)
        covered = weights.sum(0)  # every element lies in at least one window
        attribution = (drops @ weights) / covered
        return attribution.view(batch, *sample_shape).to(inputs.dtype), None

    def _incremental_forward(
        self, explained: ExplainedModel, inputs: torch.Tensor, masks: torch.Tensor
    ) -> IncrementalForward | None:
        if self.incremental is False:
            return None
        if explained.score_fn is not None:
            # The incremental path scores class logits of the network; a callable target scores its whole output.
            incremental, why = None, "the target is a callable on the model output"
        elif inputs.dim() == 4:
            incremental, why = IncrementalForward.build(
                explained.model,
                inputs,
                window_boxes(masks),
                explained.output_key,
                min_saving=AUTO_INCREMENTAL_MIN_SAVING if self.incremental == "auto" else 0.0,
            )
        else:
            incremental, why = None, f"inputs of shape {tuple(inputs.shape)} are not images (B, C, H, W)"
        if incremental is None and self.incremental is True:
            raise ValueError(
                f"Occlusion(incremental=True) cannot evaluate this model incrementally: {why}. Use "
                "incremental='auto' to fall back to plain forward passes when it cannot, or incremental=False."
            )
        return incremental
