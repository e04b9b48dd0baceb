"""Row captions of probe grids: the label, the prediction and its probability, and the explained class."""

from __future__ import annotations

import torch

from xai_lightning.callbacks.probe import ProbeSet

__all__ = ["probe_captions"]


def probe_captions(probe: ProbeSet, logits: torch.Tensor, targets: torch.Tensor, shown: int,
                   explained_tag: str = "cam") -> list[str]:
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
