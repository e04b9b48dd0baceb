"""Monte Carlo dropout (Gal & Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016).

``T`` stochastic forward passes with dropout active and everything else in eval mode — BatchNorm
uses its running statistics and never updates them — approximate samples from the posterior
predictive. The passes are batched into one forward (or a few, capped by ``max_batch``), not
``T`` Python-loop forwards; and since every pass computes the same thing before the first
dropout layer, that part runs once per example and only its output is repeated ``T`` times
(``share_prefix``; verified against repeating the input, which is the fallback).

How dropout is made active: the whole model runs in eval mode, and a forward hook on every dropout
module multiplies its output by a Bernoulli(1 − p) mask scaled by 1 / (1 − p) — exactly what the
module does in train mode — with the mask drawn from :class:`~xai_lightning.uncertainty.KeyedNoise`
keyed by (seed, example, pass, layer). So the passes are reproducible per image (the same masks
whatever the batch composition, ``max_batch`` or DDP sharding), no global random generator is
read, and every module's ``training`` flag is restored afterwards. ``nn.Dropout`` drops elements;
``nn.Dropout1d/2d/3d`` drop whole channels, as they do in training. Dropout applied with
``F.dropout`` inside a ``forward`` (not as a module) cannot be seen and is not sampled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from xai_lightning.core.eval_mode import eval_mode
from xai_lightning.uncertainty.keyed_noise import KeyedNoise
from xai_lightning.uncertainty.predictive import (
    PredictiveSummary,
    keyed_forward,
    sampled_logits,
    summarise_samples,
)

__all__ = ["MCDropoutError", "dropout_layers", "keyed_dropout", "mc_dropout_logits", "mc_dropout_predict"]

_CHANNEL_DROPOUT = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_UNSUPPORTED = (nn.AlphaDropout, nn.FeatureAlphaDropout)


class MCDropoutError(ValueError):
    """The model cannot be sampled with MC dropout (no dropout layers, or none that run)."""


def dropout_layers(model: nn.Module) -> list[tuple[str, _DropoutNd]]:
    """``(name, module)`` of every dropout module with ``0 < p``, in registration order.

    Raises :class:`MCDropoutError` (naming the fix) when there is none, or for alpha dropout,
    whose SELU-specific noise is not a Bernoulli mask.
    """
    found: list[tuple[str, _DropoutNd]] = []
    zero: list[tuple[str, _DropoutNd]] = []
    for name, module in model.named_modules():
        if isinstance(module, _UNSUPPORTED):
            raise MCDropoutError(
                f"MC dropout supports nn.Dropout and nn.Dropout1d/2d/3d; {name!r} is "
                f"{type(module).__name__}. Replace it, or do not request MC dropout."
            )
        if isinstance(module, _DropoutNd):
            (found if module.p > 0 else zero).append((name, module))
    if not found:
        detail = (
            f"its dropout layers {[name for name, _ in zero]} all have p=0"
            if zero
            else "it has no dropout layer (nn.Dropout, nn.Dropout1d/2d/3d)"
        )
        raise MCDropoutError(
            f"MC dropout samples the model's dropout layers, but {detail}. Add dropout with p > 0 "
            f"(e.g. SmallCNN(dropout=0.2), or nn.Dropout(0.2) before the classifier) and train with it, or "
            f"choose an uncertainty method that needs no dropout (an EnsembleClassifier, a VariationalClassifier)."
        )
    return found


@contextlib.contextmanager
def keyed_dropout(model: nn.Module, noise: KeyedNoise) -> Iterator[list[int]]:
    """Within the block: ``model`` in eval mode, its dropout layers sampled with masks from ``noise``.

    Yields a one-element list counting the dropout applications (to detect dropout modules that
    never run). Restores every module's ``training`` flag and removes the hooks on exit.
    """
    layers = dropout_layers(model)
    calls = [0]
    handles = []

    def hook_for(stream: int, module: _DropoutNd):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
            if output.shape[0] != noise.rows:
                raise RuntimeError(
                    f"dropout saw a batch of {output.shape[0]} rows, the keyed noise {noise.rows}: "
                    f"the model must keep the batch as its first dimension"
                )
            calls[0] += 1
            p = float(module.p)
            if p >= 1.0:
                return torch.zeros_like(output)
            if isinstance(module, _CHANNEL_DROPOUT) and output.dim() >= 2:
                shape = tuple(output.shape[:2]) + (1,) * (output.dim() - 2)
            else:
                shape = tuple(output.shape)
            keep = noise.uniform(stream, shape, device=output.device) >= p
            return output * keep.to(output.dtype) / (1.0 - p)

        return hook

    with eval_mode(model):
        try:
            for stream, (_, layer) in enumerate(layers):
                handles.append(layer.register_forward_hook(hook_for(stream + 1, layer)))
            yield calls
        finally:
            for handle in handles:
                handle.remove()


def mc_dropout_logits(
    model: nn.Module,
    x: torch.Tensor,
    passes: int = 20,
    seed: int = 0,
    keys: torch.Tensor | None = None,
    max_batch: int | None = None,
    output_key: str | int | None = None,
    share_prefix: bool = True,
) -> torch.Tensor:
    """Logits of ``passes`` MC-dropout passes of ``x (N, ...)``: ``(passes, N, K)``.

    Args:
        model: a network with dropout modules; its modes and BatchNorm statistics are left as they were.
        passes: T ≥ 2 stochastic passes (20–50 are usual).
        seed: the masks are a pure function of ``(seed, keys, pass, layer)``.
        keys: ``(N,)`` integer ids of the examples (e.g. their dataset index); default ``0..N-1``.
        max_batch: cap on rows (examples × passes) per forward; None: all passes in one forward.
        output_key: where the logits are when the model returns a dict/tuple.
        share_prefix: run the layers before the first dropout layer once per example and repeat only
            their output (see :func:`~xai_lightning.uncertainty.predictive.sample_passes_sharing_prefix`;
            checked against the repeated-input passes on two examples, which are used instead when
            the model's forward does not allow it). Same masks, same result, far less work when the
            dropout sits near the output.
    """
    if passes < 2:
        raise ValueError(f"MC dropout needs at least 2 passes (T >= 2) to measure a spread; got {passes}")
    forward, noise = keyed_forward(model, x, keys, seed, output_key)

    with torch.no_grad(), keyed_dropout(model, noise) as calls:
        modules = [module for _, module in dropout_layers(model)] if share_prefix else []
        logits = sampled_logits(forward, x, passes, modules, max_batch, share_prefix)
    if calls[0] == 0:
        raise MCDropoutError(
            "MC dropout: the model has dropout modules but none of them ran in the forward pass (e.g. a "
            "vectorised ensemble calls a copy of its modules). Sample such a model another way: an "
            "EnsembleClassifier's members, a VariationalClassifier's weights."
        )
    return logits


def mc_dropout_predict(
    model: nn.Module,
    x: torch.Tensor,
    passes: int = 20,
    seed: int = 0,
    keys: torch.Tensor | None = None,
    max_batch: int | None = None,
    output_key: str | int | None = None,
    share_prefix: bool = True,
) -> PredictiveSummary:
    """MC-dropout predictive distribution of ``x``: mean probabilities ``(N, K)``, predictive entropy,
    expected entropy, mutual information (BALD) and predictive std, each ``(N,)`` (see
    :class:`~xai_lightning.uncertainty.PredictiveSummary`)."""
    logits = mc_dropout_logits(model, x, passes, seed, keys, max_batch, output_key, share_prefix)
    return summarise_samples(logits.float().softmax(-1))
