"""Row captions of probe grids and the per-probe table beside them: label, prediction, probability, scores."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from xai_lightning.callbacks.probe import ProbeSet

__all__ = ["probe_captions", "probe_table"]


def probe_captions(
    probe: ProbeSet, logits: torch.Tensor, targets: torch.Tensor, shown: int, explained_tag: str = "cam"
) -> list[str]:
    """``y=<label> pred=<class> p=<probability>`` per row, plus ``<tag>=<class>`` when the explained
    class is neither the label nor the prediction."""
    probabilities = logits.float().softmax(1)
    predicted = probabilities.argmax(1)
    names = probe.class_names

    def name(k: int) -> str:
        return names[k] if names is not None and 0 <= k < len(names) else str(k)

    captions = []
    for row in range(shown):
        pred = int(predicted[row])
        text = f"pred={name(pred)} p={float(probabilities[row, pred]):.2f}"
        if probe.labels is not None:
            text = f"y={name(int(probe.labels[row]))} " + text
        explained = int(targets[row])
        if explained != pred and (probe.labels is None or explained != int(probe.labels[row])):
            text += f" {explained_tag}={name(explained)}"
        captions.append(text)
    return captions


def probe_table(
    probe: ProbeSet,
    logits: torch.Tensor,
    targets: torch.Tensor,
    shown: int,
    images: np.ndarray,
    maps: Mapping[str, torch.Tensor],
) -> tuple[list[str], list[list[Any]]]:
    """A per-probe table beside a grid: ``(columns, rows)`` for ``sinks.table``.

    One row per shown probe image: ``images[row]`` (uint8 ``(H, W, 3)``, e.g. its overlay), the
    label, the prediction, its probability, the explained class, and for each map (a layer or a
    method) the image's energy in the object mask and pointing-game hit (with object masks).
    """
    from xai_lightning.evaluation import energy_in_mask, pointing_game

    probabilities = logits.float().softmax(1)
    predicted = probabilities.argmax(1)
    names = probe.class_names

    def name(k: int) -> str:
        return names[k] if names is not None and 0 <= k < len(names) else str(k)

    columns = ["image", "label", "prediction", "probability", "explained"]
    scores: list[torch.Tensor] = []
    if probe.object_masks is not None:
        for key, values in maps.items():
            columns += [f"energy_in_mask/{key}", f"pointing_game/{key}"]
            masks = probe.object_masks[:shown]
            scores += [energy_in_mask(values[:shown].float(), masks), pointing_game(values[:shown].float(), masks)]
    rows = []
    for row in range(shown):
        label = name(int(probe.labels[row])) if probe.labels is not None else ""
        pred = int(predicted[row])
        cells: list[Any] = [
            images[row],
            label,
            name(pred),
            round(float(probabilities[row, pred]), 4),
            name(int(targets[row])),
        ]
        cells += [float(values[row]) for values in scores]
        rows.append(cells)
    return columns, rows
