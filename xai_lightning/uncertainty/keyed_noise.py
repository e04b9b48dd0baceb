"""Random numbers keyed by example: the same draws for an image however it is batched or sharded.

Stochastic uncertainty estimates (MC dropout masks, Bayesian weight noise) drawn from a global
generator depend on which rows share a forward pass: a probe split over two DDP ranks, or into
``max_batch`` chunks, would get different noise than the same probe in one pass, and the figures
would differ. Here every row of a forward pass — one example in one pass — has its own seed, a
hash of ``(seed, example key, pass, stream)`` as in counter-based generators (Salmon et al.,
"Parallel random numbers: as easy as 1, 2, 3", 2011), and its draws come from a private
``torch.Generator`` reseeded with it. The draws are reproducible per image, independent of batch
composition and rank, and no global generator is read (the training's random stream is safe by
construction).

Why a generator per row rather than hashing every element: torch has no vectorised keyed
generator, and hashing elements in int64 tensor arithmetic costs ~60× ``torch.randn`` (measured:
0.6 µs per normal), while reseeding one generator per row costs about what ``torch.randn`` costs
for the same elements (10 M normals over 1,000 rows: 0.18 s against 0.21 s for one ``randn``).
The loop is over rows of noise only; the model's forward stays one batched pass.

The row seeds mix 31-bit integers in int64 arithmetic (products stay below 2**62) and combine
two hashes into a 62-bit seed, so distinct rows practically never share a seed.
"""

from __future__ import annotations

import torch

__all__ = ["KeyedNoise"]

_MASK = (1 << 31) - 1


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
        self._generators: dict[str, torch.Generator] = {}

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

    def _row_seeds(self, stream: int) -> list[int]:
        if self._rows is None:
            raise RuntimeError("KeyedNoise.set_rows() must be called before drawing")
        high = _combine(self._rows, stream)
        low = _mix(high ^ 0x5BD1E995)
        return (high * (1 << 31) + low).tolist()

    def _generator(self, device: torch.device) -> torch.Generator:
        generator = self._generators.get(str(device))
        if generator is None:
            generator = self._generators[str(device)] = torch.Generator(device=device)
        return generator

    def _draw(
        self, kind: str, stream: int, shape: tuple[int, ...], device: torch.device | str | None, dtype: torch.dtype
    ) -> torch.Tensor:
        rows = self.rows
        shape = tuple(int(size) for size in shape)
        if not shape or shape[0] != rows:
            raise ValueError(f"Noise of shape {shape} for {rows} rows: the first dimension must be the rows")
        device = torch.device(device) if device is not None else self._rows.device  # type: ignore[union-attr]
        generator = self._generator(device)
        out = torch.empty(shape, device=device, dtype=torch.float32)
        draw = torch.rand if kind == "uniform" else torch.randn
        for row, seed in enumerate(self._row_seeds(stream)):
            generator.manual_seed(seed)
            draw(shape[1:], generator=generator, device=device, out=out[row])
        return out.to(dtype)

    def uniform(
        self,
        stream: int,
        shape: tuple[int, ...],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Uniform draws in ``[0, 1)`` of ``shape``; ``shape[0]`` is the rows."""
        return self._draw("uniform", 2 * stream, shape, device, dtype)

    def normal(
        self,
        stream: int,
        shape: tuple[int, ...],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Standard normal draws of ``shape``; ``shape[0]`` is the rows."""
        return self._draw("normal", 2 * stream + 1, shape, device, dtype)
