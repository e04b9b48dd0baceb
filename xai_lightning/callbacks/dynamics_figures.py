"""Figures of the training-dynamics callbacks: curves over epochs, quartile bands, scatter plots, the
information plane. Object-oriented matplotlib (``matplotlib.figure.Figure``), no pyplot state; the
experiment report (``experiments/dynamics``) draws the same figures from the callbacks' histories.

They are drawn every observed epoch, so they are kept cheap: fixed margins instead of
``tight_layout`` (which renders the figure once more to measure it) and one scatter artist per panel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.colors import is_color_like
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

__all__ = ["band_figure", "curves_figure", "history_series", "history_so_far", "plane_figure", "scatter_figure"]

_COLOURS = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:grey",
    "tab:olive",
    "tab:cyan",
)


def history_so_far(history: Sequence[Mapping[str, float]], epoch: int, scalars: Mapping[str, float]) -> list[dict]:
    """An observer's history plus the record it is about to append (``report`` runs before the base appends)."""
    return [*map(dict, history), {"epoch": float(epoch), **scalars}]


def _finish_epoch_axis(figure: Figure, axis, title: str, ylabel: str, legend: bool) -> Figure:
    axis.set_xlabel("epoch")
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    if legend:
        axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.subplots_adjust(left=0.11, right=0.68, bottom=0.14, top=0.9)
    return figure


def history_series(history: Sequence[Mapping[str, float]], key: str) -> tuple[list[float], list[float]]:
    """``(epochs, values)`` of ``key`` over the records of an observer's history that have it."""
    records = [record for record in history if key in record]
    return [float(r["epoch"]) for r in records], [float(r[key]) for r in records]


def curves_figure(
    lines: Sequence[tuple[str, Sequence[float], Sequence[float], int, str]],
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
) -> Figure:
    """One axis of curves ``(label, epochs, values, colour index, linestyle)`` over epochs."""
    figure = Figure(figsize=(5.6, 3.4))
    axis = figure.subplots()
    for label, epochs, values, colour, style in lines:
        axis.plot(epochs, values, style, color=_COLOURS[colour % len(_COLOURS)], marker="o", markersize=3, label=label)
    if ylim is not None:
        axis.set_ylim(*ylim)
    return _finish_epoch_axis(figure, axis, title, ylabel, bool(lines))


def band_figure(
    bands: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float], Sequence[float]]],
    title: str,
    ylabel: str,
) -> Figure:
    """Median lines with a shaded inter-quartile band: ``{label: (epochs, median, q25, q75)}``."""
    figure = Figure(figsize=(5.6, 3.4))
    axis = figure.subplots()
    for index, (label, (epochs, median, low, high)) in enumerate(bands.items()):
        colour = _COLOURS[index % len(_COLOURS)]
        axis.plot(epochs, median, "-o", color=colour, markersize=3, label=f"{label} (median)")
        axis.fill_between(epochs, low, high, color=colour, alpha=0.2, label=f"{label} (quartiles)")
    return _finish_epoch_axis(figure, axis, title, ylabel, bool(bands))


def scatter_figure(
    points: np.ndarray,
    colourings: Sequence[tuple[str, np.ndarray, Sequence[str]]],
    title: str,
    axis_labels: tuple[str, str] = ("1", "2"),
) -> Figure:
    """2-D ``points (N, 2)``, one panel per colouring ``(name, codes (N,) int, names of the codes)``."""
    panels = max(len(colourings), 1)
    figure = Figure(figsize=(4.2 * panels, 3.8))
    axes = np.atleast_1d(figure.subplots(1, panels))
    for axis, (name, codes, names) in zip(axes, colourings):
        codes = np.asarray(codes).astype(int)
        present = np.unique(codes)
        labels = [names[c] if 0 <= c < len(names) else str(c) for c in present]
        # A factor whose values are colours ("red", "green", …) is drawn in those colours.
        palette = {
            c: (label if is_color_like(label) else _COLOURS[c % len(_COLOURS)]) for c, label in zip(present, labels)
        }
        axis.scatter(points[:, 0], points[:, 1], s=9, c=[palette[c] for c in codes])
        handles = [Line2D([], [], marker="o", linestyle="", markersize=4, color=palette[c]) for c in present]
        axis.legend(handles, labels, fontsize=6, loc="best")
        axis.set_title(f"{title}\ncoloured by {name}", fontsize=9)
        axis.set_xlabel(axis_labels[0])
        axis.set_ylabel(axis_labels[1])
    figure.subplots_adjust(left=0.11, right=0.98, bottom=0.13, top=0.86, wspace=0.3)
    return figure


def plane_figure(
    trajectories: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    title: str = "information plane",
) -> Figure:
    """Trajectories ``{layer: (epochs, I(x;h), I(y;h))}``: a line per layer, points coloured by epoch."""
    figure = Figure(figsize=(5.8, 4.0))
    axis = figure.subplots()
    every_epoch = [e for epochs, _, _ in trajectories.values() for e in epochs]
    low, high = (min(every_epoch), max(every_epoch)) if every_epoch else (0.0, 1.0)
    scatter = None
    markers = "osD^v<>"
    for index, (layer, (epochs, ixh, iyh)) in enumerate(trajectories.items()):
        axis.plot(ixh, iyh, "-", color="0.6", linewidth=1, zorder=1)
        scatter = axis.scatter(
            ixh,
            iyh,
            c=epochs,
            cmap="viridis",
            vmin=low,
            vmax=max(high, low + 1e-9),
            marker=markers[index % len(markers)],
            s=28,
            zorder=2,
            label=layer,
        )
    if scatter is not None:
        figure.colorbar(scatter, ax=axis, label="epoch")
        axis.legend(fontsize=7, loc="best")
    axis.set_xlabel("I(x; h) estimate (bits)")
    axis.set_ylabel("I(y; h) lower bound (bits)")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    figure.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.92)
    return figure
