"""The model being explained: class scores and their input gradients, evaluated in ``max_batch`` slices.

Every attribution method talks to the network through :class:`ExplainedModel`. It turns whatever
the network returns into ``(B, num_classes)`` logits (``output_key`` for dict/tuple outputs),
resolves the explained class per example, and evaluates large batches of model inputs — IG path
points, noisy copies, occluded images, masked images, coalitions — as *rows* generated on demand
and pushed through the network at most ``max_batch`` at a time. Nothing here enters the observer
guard: the calling method already runs inside it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import nn

from xai_lightning.core import (
    BatchTargets,
    TargetSpec,
    batch_slices,
    class_scores,
    output_scores,
    resolve_targets,
)
from xai_lightning.core.batching import activation_bytes_per_row, even_slices, memory_aware_max_batch
from xai_lightning.core.fast_forward import CPU_INPUT_ELEMENTS_PER_PASS, FastForward, rows_per_pass
from xai_lightning.core.targets import ScoreFunction

__all__ = ["CPU_INPUT_ELEMENTS_PER_PASS", "ExplainedModel", "ScoreKind", "score_precision", "scores_from_logits"]

#: What a perturbation method measures: the class logit, or its softmax probability.
ScoreKind = Literal["logit", "probability"]

RowMaker = Callable[[slice], torch.Tensor]


def score_precision(logits: torch.Tensor) -> torch.Tensor:
    """Logits in the precision scores are computed in: float32, or float64 for a float64 model
    (perturbation methods difference scores, and large logits lose the difference in float32)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def scores_from_logits(logits: torch.Tensor, targets: torch.Tensor, kind: ScoreKind) -> torch.Tensor:
    """``(R,)`` score of each row's target class: the logit, or the softmax probability."""
    if kind == "logit":
        return class_scores(logits, targets)
    if kind == "probability":
        return class_scores(score_precision(logits).softmax(dim=1), targets)
    raise ValueError(f"Unknown score {kind!r}; use 'logit' or 'probability'.")


class ExplainedModel:
    """A network plus the conventions of one explanation: where the logits are, the batch cap.

    Args:
        model: the network (already unwrapped from DDP/compile wrappers, in eval mode).
        output_key: dict key or tuple index of the logits when the network returns several outputs.
        max_batch: most rows per forward/backward pass. None: everything at once on a CPU (whose
            passes are cut to a cache-friendly size anyway, :meth:`rows_per_pass`); on CUDA, with
            ``like`` given, a cap from the device's free memory and the model's activation size
            per row (:func:`~xai_lightning.core.batching.memory_aware_max_batch`).
        want_delta: the caller asked for a convergence delta (methods skip computing it otherwise).
        score_fn: a callable target (:func:`~xai_lightning.core.split_target`): the network's output
            is explained through ``score_fn(output)``, presented as one-column logits (class 0).
        like: an input batch shaped like the rows to come (only its first row is used, on CUDA).
        fold_batchnorm: fold eval BatchNorms into their convolutions in :meth:`fast_logits`.
    """

    def __init__(
        self,
        model: nn.Module,
        output_key: str | int | None = None,
        max_batch: int | None = None,
        want_delta: bool = False,
        score_fn: ScoreFunction | None = None,
        like: torch.Tensor | None = None,
        fold_batchnorm: bool = True,
    ) -> None:
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 or None; got {max_batch}")
        self.model = model
        self.output_key = output_key
        self.score_fn = score_fn  # before the memory estimate below: it runs :meth:`logits`
        if max_batch is None and like is not None and like.device.type == "cuda" and like.shape[0]:
            row_bytes = activation_bytes_per_row(model, like[:1], self.logits)
            max_batch = memory_aware_max_batch(row_bytes, like.device)
        self.max_batch = max_batch
        self.want_delta = want_delta
        self._fast = FastForward(model, self.logits, fold_batchnorm=fold_batchnorm)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(R, num_classes)`` logits of a forward pass on ``x`` (autograd-connected); ``(R, 1)`` scores
        for a callable target."""
        return output_scores(self.model(x), self.output_key, self.score_fn, batch=x.shape[0])

    def slices(self, total: int) -> Iterator[slice]:
        return batch_slices(total, self.max_batch)

    # ------------------------------------------------------------------ targets
    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, num_classes)`` detached float logits of ``inputs``, without building a graph."""
        with torch.no_grad():
            parts = [self.logits(inputs[rows]).detach().float() for rows in self.slices(inputs.shape[0])]
        return torch.cat(parts)

    def resolve(
        self, inputs: torch.Tensor, target: TargetSpec, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(targets (B,), logits (B, K) or None)``.

        ``"predicted"`` needs the logits of every input; any other target is validated against the
        number of classes, which a forward pass on one input reveals. The logits are returned when
        they were computed, so methods that need ``f(x)`` anyway do not pay for it twice.
        """
        if isinstance(target, str) and target == "predicted":
            logits = self.predict(inputs)
            return resolve_targets(target, logits, labels), logits
        with torch.no_grad():
            probe = self.logits(inputs[:1]).detach().float()
        batch_shaped = probe.new_zeros(inputs.shape[0], probe.shape[1])
        return resolve_targets(target, batch_shaped, labels), None

    # ------------------------------------------------------------------ batched evaluation
    def rows_per_pass(self, row: torch.Tensor, cpu_elements: int = CPU_INPUT_ELEMENTS_PER_PASS) -> int | None:
        """Rows per no-grad forward pass of inputs shaped like ``row`` (``(1, ...)``): ``max_batch``,
        and on a CPU at most ``cpu_elements`` input elements."""
        return rows_per_pass(row, self.max_batch, cpu_elements)

    def fast_logits(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`logits` with images laid out channels-last on a CPU, for scoring and gradient passes.

        PyTorch's CPU convolutions run faster in that layout (SmallCNN, 64 images: forward ~1.4×,
        forward + input gradient 1.25×); the numbers are the same up to float reassociation. The
        copy into that layout is part of the graph, so ``∂/∂x`` still reaches ``x``, in the layout
        the backward pass chose (``AttributionMethod.attribute`` returns results contiguous, in one
        place). A model that cannot take that layout (one that ``.view()``s its input) gets NCHW
        from then on (:class:`~xai_lightning.core.layout.ChannelsLastForward`). Every eval-mode
        BatchNorm that follows a convolution is folded into it for the pass
        (:class:`~xai_lightning.core.batchnorm_folding.BatchNormFolding`: no BatchNorm pass
        forward or backward, the same numbers up to float reassociation).
        """
        return self._fast(x)

    def scores(
        self, total: int, make_rows: RowMaker, row_targets: torch.Tensor, kind: ScoreKind, *, cpu_tuned: bool = False
    ) -> torch.Tensor:
        """``(total,)`` scores of ``total`` model inputs produced slice by slice by ``make_rows``.

        ``cpu_tuned``: slices of :meth:`rows_per_pass` rows, forward passes by :meth:`fast_logits`
        (faster on a CPU; the scores then differ from :meth:`logits`' by float reassociation, so a
        method must score every row it compares this way). Otherwise slices of ``max_batch`` rows.
        """
        self.check_score_kind(kind)
        parts = []
        with torch.no_grad():
            forward = self.fast_logits if cpu_tuned else self.logits
            for rows in self.pass_slices(total, make_rows) if cpu_tuned else self.slices(total):
                logits = score_precision(forward(make_rows(rows)))
                parts.append(scores_from_logits(logits, row_targets[rows], kind))
        return torch.cat(parts) if parts else row_targets.new_zeros(0, dtype=torch.float32)

    def check_score_kind(self, kind: ScoreKind) -> None:
        """A callable target yields one score, not class logits: its softmax "probability" is always 1."""
        if self.score_fn is not None and kind == "probability":
            raise ValueError(
                "A callable target gives one score per example, not class logits, so its softmax probability is "
                "constant; use score='logit' with a callable target."
            )

    def pass_slices(self, total: int, make_rows: RowMaker) -> Iterator[slice]:
        """Slices of :meth:`rows_per_pass` rows of the inputs ``make_rows`` produces (``max_batch``, and
        on a CPU at most :data:`CPU_INPUT_ELEMENTS_PER_PASS` input elements: IG's 3,200 path points of
        3×32×32 ran 1.5× faster per row in passes of 128-256 than all at once). Each row's score and
        gradient depend on that row only: the slicing changes nothing but float reassociation."""
        if total == 0:
            return iter(())
        return even_slices(total, self.rows_per_pass(make_rows(slice(0, 1))))

    def gradients(
        self, total: int, make_rows: RowMaker, row_targets: torch.Tensor
    ) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
        """Yield ``(rows, ∂logit/∂input (r, ...), logit (r,))`` for ``total`` generated inputs.

        Each slice is one forward and one ``torch.autograd.grad`` call; parameters' ``.grad`` is
        never touched.
        """
        for rows in self.pass_slices(total, make_rows):
            x = make_rows(rows).detach().requires_grad_(True)
            logits = self.fast_logits(x)
            score = class_scores(logits, row_targets[rows])
            (gradient,) = torch.autograd.grad(score.sum(), x)
            yield rows, gradient, score.detach().float()

    def input_gradients(
        self, inputs: torch.Tensor, target: TargetSpec, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(∂y_c/∂x (B, ...), logits (B, K), targets (B,))`` at the inputs themselves.

        The explained class is resolved from the same forward pass (``"predicted"`` costs nothing
        extra), slice by slice.
        """
        slice_targets = BatchTargets(target, labels, inputs.shape[0])
        gradients, logits_parts, target_parts = [], [], []
        for rows in self.pass_slices(inputs.shape[0], lambda rows: inputs[rows]):
            x = inputs[rows].detach().requires_grad_(True)
            logits = self.fast_logits(x)
            targets = slice_targets(rows, logits)
            (gradient,) = torch.autograd.grad(class_scores(logits, targets).sum(), x)
            gradients.append(gradient)
            logits_parts.append(logits.detach().float())
            target_parts.append(targets)
        return torch.cat(gradients), torch.cat(logits_parts), torch.cat(target_parts)
