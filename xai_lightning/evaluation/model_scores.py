"""The model under evaluation: resolved targets and class scores of perturbed inputs, in capped batches.

Every perturbation metric (deletion, insertion, faithfulness correlation, infidelity, ROAD)
generates many perturbed copies of each image — all steps of all images — as *rows* made on
demand and scored by the model in forward passes of at most ``max_batch`` rows (and, on a CPU,
cache-sized passes: :meth:`~xai_lightning.attribution.explained_model.ExplainedModel.scores`).
No Python loop runs over images or steps. Everything happens inside the observer guard (eval
mode, isolated RNG), so a metric can run in the middle of training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import nn

from xai_lightning.attribution.explained_model import ExplainedModel, score_precision
from xai_lightning.core import TargetSpec, observe, unwrap_model

__all__ = ["MetricScore", "check_score", "evaluated_model", "resolve_metric_targets", "row_scores"]

#: What a perturbation metric records for each perturbed input: the target class's softmax
#: probability, its logit, or whether the prediction still equals the target (1.0/0.0).
MetricScore = Literal["probability", "logit", "accuracy"]
SCORES = ("probability", "logit", "accuracy")


def check_score(score: str) -> None:
    if score not in SCORES:
        raise ValueError(f"Unknown score {score!r}; use one of {list(SCORES)}.")


@contextlib.contextmanager
def evaluated_model(
    model: nn.Module,
    output_key: str | int | None = None,
    max_batch: int | None = None,
    like: torch.Tensor | None = None,
) -> Iterator[ExplainedModel]:
    """Enter the observer guard on ``model`` (wrappers looked through) and yield it as an :class:`ExplainedModel`.

    ``like``: an input batch; on CUDA with ``max_batch=None`` it sizes a memory-aware cap on the
    perturbed inputs per pass (a metric's passes multiply the batch by its steps or draws).
    """
    network = unwrap_model(model)
    with observe(network):
        yield ExplainedModel(network, output_key, max_batch, like=like)


def resolve_metric_targets(explained: ExplainedModel, inputs: torch.Tensor, targets: TargetSpec) -> torch.Tensor:
    """``(B,)`` class indices: a tensor/list of them, one index for all, or ``"predicted"``."""
    resolved, _ = explained.resolve(inputs, targets)
    return resolved


def row_scores(
    explained: ExplainedModel,
    total: int,
    make_rows: Callable[[slice], torch.Tensor],
    row_targets: torch.Tensor,
    score: MetricScore,
) -> torch.Tensor:
    """``(total,)`` scores of ``total`` generated inputs, float32 (float64 for a float64 model)."""
    check_score(score)
    if score != "accuracy":
        return explained.scores(total, make_rows, row_targets, score, cpu_tuned=True)
    parts = []
    with torch.no_grad():
        for rows in explained.pass_slices(total, make_rows):
            logits = score_precision(explained.fast_logits(make_rows(rows)))
            parts.append((logits.argmax(1) == row_targets[rows]).to(logits.dtype))
    return torch.cat(parts) if parts else row_targets.new_zeros(0, dtype=torch.float32)
