"""Summaries of a sampled predictive distribution, and the batched sampler behind every sampling method.

MC dropout passes, ensemble members and Bayesian weight samples all give ``S`` class-probability
vectors per example, ``samples (S, N, K)``. Their mean is the predictive distribution; its
entropy is the total uncertainty, which splits into the expected entropy of the samples
(aleatoric) and the mutual information between the prediction and the model parameters
(epistemic; BALD, Houlsby et al. 2011; Gal, Islam & Ghahramani 2017):

    H[mean_s p_s]  =  mean_s H[p_s]  +  I(y; θ | x).

Entropies are in nats.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from xai_lightning.core import batch_slices, select_logits
from xai_lightning.uncertainty.keyed_noise import KeyedNoise

__all__ = [
    "PredictiveSummary",
    "entropy",
    "expected_entropy",
    "keyed_forward",
    "mutual_information",
    "predictive_std",
    "sample_passes",
    "sample_passes_sharing_prefix",
    "sampled_logits",
    "summarise_samples",
]


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last dimension, with ``0 log 0 = 0``: ``(..., K) → (...)``."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def expected_entropy(samples: torch.Tensor) -> torch.Tensor:
    """Mean over samples of each sample's entropy: ``samples (S, N, K) → (N,)`` (the aleatoric part)."""
    return entropy(samples).mean(0)


def mutual_information(samples: torch.Tensor) -> torch.Tensor:
    """BALD mutual information ``H[mean_s p_s] − mean_s H[p_s]``: ``samples (S, N, K) → (N,)``, nats, ≥ 0.

    Zero when every sample predicts the same distribution (no disagreement), up to ``log S`` when
    confident samples disagree completely. Tiny negative rounding errors are clamped to 0.
    """
    _check_samples(samples)
    return (entropy(samples.mean(0)) - expected_entropy(samples)).clamp_min(0.0)


def predictive_std(samples: torch.Tensor) -> torch.Tensor:
    """Per-class standard deviation of the probabilities over samples (unbiased): ``(S, N, K) → (N, K)``."""
    _check_samples(samples)
    return samples.std(0, correction=1)


def _check_samples(samples: torch.Tensor) -> None:
    if samples.dim() != 3:
        raise ValueError(f"samples must be (S, N, K) probabilities; got {tuple(samples.shape)}")
    if samples.shape[0] < 2:
        raise ValueError(f"A spread over samples needs at least 2 samples; got S={samples.shape[0]}")


@dataclass(frozen=True)
class PredictiveSummary:
    """The predictive distribution of ``S`` samples and its uncertainty scores, each ``(N,)`` unless noted.

    Attributes:
        mean: ``(N, K)`` mean probability over samples (the predictive distribution).
        entropy: predictive entropy ``H[mean]`` (total uncertainty, nats).
        expected_entropy: ``mean_s H[p_s]`` (aleatoric part).
        mutual_information: BALD, ``entropy − expected_entropy`` (epistemic part).
        std: mean over classes of the per-class standard deviation over samples.
    """

    mean: torch.Tensor
    entropy: torch.Tensor
    expected_entropy: torch.Tensor
    mutual_information: torch.Tensor
    std: torch.Tensor


def summarise_samples(samples: torch.Tensor) -> PredictiveSummary:
    """All the summaries of ``samples (S, N, K)`` probabilities (S ≥ 2) at once."""
    _check_samples(samples)
    mean = samples.mean(0)
    total = entropy(mean)
    aleatoric = expected_entropy(samples)
    return PredictiveSummary(
        mean=mean,
        entropy=total,
        expected_entropy=aleatoric,
        mutual_information=(total - aleatoric).clamp_min(0.0),
        std=predictive_std(samples).mean(-1),
    )


def sample_passes(
    forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    passes: int,
    max_batch: int | None = None,
) -> torch.Tensor:
    """Run ``passes`` stochastic forward passes of ``x (N, ...)`` as a few large batches: ``(passes, N, K)``.

    The input is repeated ``passes`` times along the batch (pass-major rows: row ``t·N + n`` is
    example ``n`` in pass ``t``) and evaluated in slices of at most ``max_batch`` rows (None: one
    forward for everything). ``forward(rows_x, example_index (R,), pass_index (R,))`` returns
    ``(R, K)`` outputs; it receives the indices so that its noise can be keyed by example and
    pass (see :class:`~xai_lightning.uncertainty.KeyedNoise`), which makes the result
    independent of ``max_batch``.
    """
    if passes < 1:
        raise ValueError(f"passes must be >= 1; got {passes}")
    n = x.shape[0]
    total = n * passes
    outputs = []
    for rows in batch_slices(total, max_batch):
        index = torch.arange(rows.start, rows.stop, device=x.device)
        example, pass_index = index % n, index // n
        outputs.append(forward(x[example], example, pass_index))
    out = torch.cat(outputs)
    return out.view(passes, n, *out.shape[1:])


class PrefixNotShareable(RuntimeError):
    """The model's forward does not allow expanding the batch at its first stochastic module."""


def sample_passes_sharing_prefix(
    forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    passes: int,
    stochastic: Sequence[nn.Module],
    max_batch: int | None = None,
) -> torch.Tensor:
    """Like :func:`sample_passes`, but everything before the first stochastic module runs once per example.

    The network is fed ``x`` itself; a forward pre-hook on every module in ``stochastic`` repeats
    its input ``passes`` times along the batch (pass-major) the first time the batch arrives
    un-repeated, so the passes share the deterministic prefix — for a CNN with dropout before its
    classifier, T passes then cost about one forward. ``forward(rows_x, example_index, pass_index)``
    receives the indices of the *expanded* rows. Examples are chunked so that no forward sees
    more than ``max_batch`` expanded rows. Raises :class:`PrefixNotShareable` when the output
    does not come back with ``passes`` rows per example (callers fall back to :func:`sample_passes`).
    """
    if passes < 1:
        raise ValueError(f"passes must be >= 1; got {passes}")
    n = x.shape[0]
    per_chunk = n if max_batch is None else max(1, max_batch // passes)
    outputs = []
    for chunk in batch_slices(n, per_chunk):
        size = chunk.stop - chunk.start

        def expand(_module: nn.Module, args: tuple, size: int = size) -> tuple | None:
            if not args or not isinstance(args[0], torch.Tensor):
                raise PrefixNotShareable("a stochastic module's first argument is not a tensor")
            rows = args[0].shape[0] if args[0].dim() else -1
            if rows == size:
                return (args[0].repeat(passes, *([1] * (args[0].dim() - 1))), *args[1:])
            if rows == size * passes:
                return None
            raise PrefixNotShareable(f"a stochastic module saw {rows} rows, expected {size} or {size * passes}")

        handles = [module.register_forward_pre_hook(expand) for module in stochastic]
        example = torch.arange(chunk.start, chunk.stop, device=x.device).repeat(passes)
        pass_index = torch.arange(passes, device=x.device).repeat_interleave(size)
        try:
            out = forward(x[chunk], example, pass_index)
        except RuntimeError as error:
            if isinstance(error, PrefixNotShareable):
                raise
            raise PrefixNotShareable(f"the forward failed on an expanded batch: {error}") from error
        finally:
            for handle in handles:
                handle.remove()
        if out.shape[0] != size * passes:
            raise PrefixNotShareable(f"the output has {out.shape[0]} rows, not {size * passes}")
        outputs.append(out.view(passes, size, *out.shape[1:]))
    return torch.cat(outputs, dim=1)


def sampled_logits(
    forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    passes: int,
    stochastic: Sequence[nn.Module],
    max_batch: int | None = None,
    share_prefix: bool = True,
) -> torch.Tensor:
    """``(passes, N, ...)`` outputs of ``passes`` stochastic passes, sharing the deterministic prefix when the
    model allows it (checked: the first two examples' first two passes must equal the repeated-input path,
    else the repeated-input path is used for everything). ``forward`` must key its noise by
    ``(example_index, pass_index)``, so that both paths draw the same noise."""
    if share_prefix and stochastic:
        try:
            shared = sample_passes_sharing_prefix(forward, x, passes, stochastic, max_batch)
            head = min(2, x.shape[0])
            reference = sample_passes(forward, x[:head], 2, max_batch)
            if torch.allclose(shared[:2, :head].float(), reference.float(), rtol=1e-4, atol=1e-5):
                return shared
        except PrefixNotShareable:
            pass
    return sample_passes(forward, x, passes, max_batch)


def keyed_forward(
    model: nn.Module, x: torch.Tensor, keys: torch.Tensor | None, seed: int, output_key: str | int | None = None
) -> tuple[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], KeyedNoise]:
    """The ``forward(rows_x, example_index, pass_index)`` that the samplers above call, and its noise.

    Before each forward it tells the :class:`KeyedNoise` which (example key, pass) every row is,
    so that stochastic layers reading that noise draw per image and pass. ``keys (N,)`` identify
    the examples of ``x`` (default ``0..N-1``).
    """
    keys = torch.arange(x.shape[0]) if keys is None else torch.as_tensor(keys).long()
    if keys.shape != x.shape[:1]:
        raise ValueError(f"keys must be (N,) = ({x.shape[0]},); got {tuple(keys.shape)}")
    keys = keys.to(x.device)
    noise = KeyedNoise(seed)

    def forward(rows: torch.Tensor, example: torch.Tensor, pass_index: torch.Tensor) -> torch.Tensor:
        noise.set_rows(keys[example], pass_index)
        return select_logits(model(rows), output_key)

    return forward, noise
