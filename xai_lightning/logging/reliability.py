"""Reliability diagram (Guo et al. 2017): per-bin accuracy against confidence, with the count histogram."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

__all__ = ["reliability_diagram"]

# Per-bin values as a tensor (e.g. a ``CalibrationReport`` field), an array or a plain sequence.
BinValues = Sequence[float] | np.ndarray | torch.Tensor


def _array(values: BinValues) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def reliability_diagram(
    bin_edges: BinValues,
    bin_accuracy: BinValues,
    bin_confidence: BinValues,
    bin_count: BinValues,
    title: str = "",
    ece: float | None = None,
) -> Figure:
    """A matplotlib figure: bars of accuracy per confidence bin over the diagonal (perfect calibration),
    the gap to each bin's mean confidence shaded, and below it the share of predictions per bin.

    Args:
        bin_edges: ``(B + 1,)`` boundaries; ``bin_accuracy``, ``bin_confidence``: ``(B,)`` (NaN for
            empty bins, which are left blank); ``bin_count``: ``(B,)`` predictions per bin. Tensors
            or arrays (e.g. the fields of ``xai_lightning.uncertainty.CalibrationReport``).
        title: figure title; ``ece``, when given, is printed in the corner.
    """
    edges, accuracy = _array(bin_edges), _array(bin_accuracy)
    confidence, count = _array(bin_confidence), _array(bin_count)
    if not (len(edges) - 1 == len(accuracy) == len(confidence) == len(count)):
        raise ValueError(
            f"reliability_diagram needs B + 1 edges and B values per bin; got {len(edges)} edges, "
            f"{len(accuracy)}, {len(confidence)}, {len(count)} values"
        )
    left, width = edges[:-1], np.diff(edges)
    filled = count > 0
    figure = Figure(figsize=(4.2, 4.8), dpi=100)
    axes, histogram = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    axes.bar(
        left[filled],
        accuracy[filled],
        width=width[filled],
        align="edge",
        color="tab:blue",
        edgecolor="black",
        linewidth=0.5,
        label="accuracy",
    )
    gap_bottom = np.minimum(accuracy, confidence)[filled]
    axes.bar(
        left[filled],
        np.abs(confidence - accuracy)[filled],
        bottom=gap_bottom,
        width=width[filled],
        align="edge",
        color="tab:red",
        alpha=0.3,
        edgecolor="tab:red",
        linewidth=0.5,
        hatch="//",
        label="gap to confidence",
    )
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_ylabel("accuracy")
    axes.legend(loc="upper left", fontsize=7)
    if ece is not None:
        axes.text(
            0.97,
            0.04,
            f"ECE = {ece:.3f}",
            ha="right",
            va="bottom",
            fontsize=9,
            transform=axes.transAxes,
            bbox={"facecolor": "white", "edgecolor": "grey", "alpha": 0.8},
        )
    if title:
        axes.set_title(title, fontsize=9)
    total = max(count.sum(), 1.0)
    histogram.bar(left, count / total, width=width, align="edge", color="tab:grey", edgecolor="black", linewidth=0.5)
    histogram.set_xlabel("confidence (max probability)")
    histogram.set_ylabel("share")
    figure.tight_layout()
    return figure
