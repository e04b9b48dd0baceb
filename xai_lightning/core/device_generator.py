"""Random draws of an explanation on the device the model runs on, from a seeded generator.

SmoothGrad noise, RISE masks and random baselines used to be drawn on the CPU and copied to the
device — a host-to-device transfer of ``N × C × H × W`` values per call. :func:`device_generator`
gives a generator for the inputs' device instead:

* on a CPU, ``None``: the global generator, which the observer guard isolates (and seeds with the
  method's ``seed``), so CPU results are exactly what they were;
* elsewhere, a ``torch.Generator`` on that device, seeded from one draw of that same isolated CPU
  generator — reproducible for a given ``seed``, independent of whatever else draws on the
  device, and untouched by the training's random stream. (CPU and GPU draws differ: the
  generators are different algorithms.)
"""

from __future__ import annotations

import torch

__all__ = ["device_generator"]


def device_generator(device: torch.device | str) -> torch.Generator | None:
    """A generator for draws on ``device`` (None on a CPU: the isolated global generator)."""
    device = torch.device(device)
    if device.type == "cpu":
        return None
    seed = int(torch.randint(0, 2**62, (1,)))  # a CPU draw: no device synchronisation
    return torch.Generator(device=device).manual_seed(seed)
