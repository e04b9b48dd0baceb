"""Counter-based random numbers keyed by example: the same draws for an image however it is batched or sharded.

Stochastic uncertainty estimates (MC dropout masks, Bayesian weight noise) drawn from a global
generator depend on which rows share a forward pass: a probe split over two DDP ranks, or into
``max_batch`` chunks, would get different noise than the same probe in one pass, and the figures
would differ. Here every random number is a pure function of ``(seed, example key, pass, stream,
element)`` — a hash, as in counter-based generators (Salmon et al., "Parallel random numbers: as
easy as 1, 2, 3", 2011) — so it is reproducible per image, independent of batch composition,
device and rank, and never touches any global generator (the training's random stream is safe by
construction).

The hash mixes 31-bit integers in int64 arithmetic (products stay below 2**62), so results are
bit-identical on every device.
"""

from __future__ import annotations

import torch

__all__ = ["KeyedNoise"]

_MASK = (1 << 31) - 1
_SCALE = float(1 << 31)


def _mix(h: torch.Tensor) -> torch.Tensor:
    """Avalanche a tensor of 31-bit integers (int64) into 31-bit integers."""
    for _ in range(3):
        h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & _MASK
        h = ((h ^ (h >> 13)) * 0x297A2D39) & _MASK
    return h ^ (h >> 16)


def _combine(h: torch.Tensor, value: torch.Tensor | int) -> torch.Tensor:
    """Fold ``value`` (any int64) into the hash state ``h``."""
    if isinstance(value, int):
        value = torch.tensor(value, dtype=torch.int64, device=h.device)
    return _mix((h * 0x01000193 + (value & _MASK)) & _MASK)


class KeyedNoise:
    """Uniform and normal draws for rows identified by ``(example key, pass)``.

    Set the rows of the next forward pass with :meth:`set_rows`; layers then ask for
    :meth:`uniform`/:meth:`normal` tensors whose first dimension is those rows, giving a
    ``stream`` number of their own (e.g. their position in the model) so that two layers never
    share draws.

    Args:
        seed: the draws are a pure function of it (and of the keys); the same seed gives the same
            noise every epoch.

    Example::

        noise = KeyedNoise(seed=0)
        noise.set_rows(keys=torch.tensor([4, 9]), passes=torch.tensor([0, 0]))
        masks = noise.uniform(stream=1, shape=(2, 16)) >= 0.5
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self._rows: torch.Tensor | None = None

    def set_rows(self, keys: torch.Tensor, passes: torch.Tensor) -> None:
        """Identify the rows of the next forward pass: ``keys (R,)`` example ids, ``passes (R,)`` pass numbers."""
        keys, passes = torch.as_tensor(keys).long(), torch.as_tensor(passes).long()
        if keys.shape != passes.shape or keys.dim() != 1:
            raise ValueError(f"keys and passes must be (R,) alike; got {tuple(keys.shape)} and {tuple(passes.shape)}")
        state = _mix(torch.full_like(keys, self.seed & _MASK))
        self._rows = _combine(_combine(state, keys), passes)

    @property
    def rows(self) -> int:
        if self._rows is None:
            raise RuntimeError("KeyedNoise.set_rows() must be called before drawing")
        return self._rows.shape[0]

    def _bits(self, stream: int, shape: tuple[int, ...], device: torch.device | str | None) -> torch.Tensor:
        if self._rows is None:
            raise RuntimeError("KeyedNoise.set_rows() must be called before drawing")
        if not shape or shape[0] != self._rows.shape[0]:
            raise ValueError(f"Noise of shape {tuple(shape)} for {self._rows.shape[0]} rows: the first dimension must be the rows")
        rows = self._rows.to(device) if device is not None else self._rows
        per_row = 1
        for size in shape[1:]:
            per_row *= int(size)
        state = _combine(rows, stream).view(-1, 1)
        element = torch.arange(per_row, dtype=torch.int64, device=rows.device).view(1, -1)
        return _combine(state, element).view(*shape)

    def uniform(self, stream: int, shape: tuple[int, ...], device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform draws in ``[0, 1)`` (31-bit resolution) of ``shape``; ``shape[0]`` is the rows."""
        return (self._bits(3 * stream, tuple(shape), device).double() / _SCALE).to(dtype)

    def normal(self, stream: int, shape: tuple[int, ...], device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal draws of ``shape`` (Box–Muller on two independent uniform streams)."""
        shape = tuple(shape)
        first = (self._bits(3 * stream + 1, shape, device).double() + 1.0) / _SCALE  # (0, 1]: log is finite
        second = self._bits(3 * stream + 2, shape, device).double() / _SCALE
        return (torch.sqrt(-2.0 * torch.log(first)) * torch.cos(2.0 * torch.pi * second)).to(dtype)
