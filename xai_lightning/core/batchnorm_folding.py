"""Observing passes with every eval-mode BatchNorm folded into the convolution before it.

In eval mode a ``BatchNorm2d`` is a per-channel affine map, ``y = s ⊙ z + t`` with
``s = γ / √(σ² + ε)`` and ``t = β − s ⊙ μ``; after a convolution ``z = W ∗ x + b`` the pair is one
convolution with weights ``s ⊙ W`` and bias ``s ⊙ b + t``. Explanation passes (forward and input
gradient) run that single convolution and skip the BatchNorm: no BatchNorm pass forward, none
backward (SmallCNN and ResNet-20 have one after every convolution; ~10 % of a pass on a CPU). The
numbers are the same up to float reassociation, which a check pass confirms before a model's
first folded pass (:class:`BatchNormFolding`). Used by attribution passes, TCAV's activations and
gradients, and network dissection's forwards.

A pair is folded when one traced forward pass shows a ``Conv2d`` whose output only an eval-mode
``BatchNorm2d`` (with running statistics) reads, each module called once. Pairs where either
module carries hooks at the time of the pass (a captured layer, a user's hook) are left alone, so
a hooked layer's output is what it always is. Models whose forward reads a convolution's output
outside modules (invisible to hooks) are caught by the check: folded and plain logits of a traced
row must agree, or nothing is folded for that model. The folded modules' ``forward`` is replaced
for the duration of one pass only, inside the observer guard, and restored in ``finally``.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable
from typing import TypeVar, cast

import torch
from torch import nn

__all__ = ["BatchNormFolding", "foldable_pairs"]

Result = TypeVar("Result")

# model → (input sample shape, its foldable pairs after the check pass: [] when folding changed the logits)
_CHECKED: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], list[tuple[nn.Conv2d, nn.BatchNorm2d]]]] = (
    weakref.WeakKeyDictionary()
)


def _foldable_norm(module: nn.Module) -> bool:
    return (
        type(module) is nn.BatchNorm2d
        and not module.training
        and module.track_running_stats
        and module.running_mean is not None
        and module.running_var is not None
    )


def foldable_pairs(
    model: nn.Module, sample: torch.Tensor, forward: Callable[[torch.Tensor], object]
) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """The ``(Conv2d, BatchNorm2d)`` pairs of one traced no-grad pass of ``sample`` in which the
    norm is the only reader of the convolution's output (see the module docstring)."""
    leaves = [module for module in model.modules() if next(module.children(), None) is None]
    calls: list[tuple[nn.Module, tuple, object]] = []

    def record(module: nn.Module, args: tuple, output: object) -> None:
        calls.append((module, args, output))

    handles = [module.register_forward_hook(record) for module in leaves]
    try:
        with torch.no_grad():
            forward(sample)
    finally:
        for handle in handles:
            handle.remove()
    called = Counter(id(module) for module, _, _ in calls)
    reads = Counter(id(arg) for _, args, _ in calls for arg in args if isinstance(arg, torch.Tensor))
    producers = {
        id(output): module
        for module, _, output in calls
        if type(module) is nn.Conv2d and isinstance(output, torch.Tensor)
    }
    pairs = []
    for module, args, _ in calls:
        if not _foldable_norm(module) or not args or not isinstance(args[0], torch.Tensor):
            continue
        conv = producers.get(id(args[0]))
        if conv is None or reads[id(args[0])] != 1 or called[id(conv)] != 1 or called[id(module)] != 1:
            continue
        pairs.append((conv, cast(nn.BatchNorm2d, module)))
    return pairs


def _hooked(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or getattr(module, "_backward_pre_hooks", None)
        or "forward" in module.__dict__
    )


def _folded_weights(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s ⊙ W, s ⊙ b + t)``, detached: explanations never differentiate parameters."""
    assert norm.running_var is not None and norm.running_mean is not None  # _foldable_norm checked them
    with torch.no_grad():
        scale = norm.running_var.add(norm.eps).rsqrt()
        shift = -norm.running_mean * scale
        if norm.weight is not None:
            scale = scale * norm.weight
            shift = shift * norm.weight
        if norm.bias is not None:
            shift = shift + norm.bias
        bias = shift if conv.bias is None else conv.bias * scale + shift
        weight = conv.weight * scale.view(-1, *([1] * (conv.weight.dim() - 1))).to(conv.weight.dtype)
    return weight, bias.to(conv.weight.dtype)


class BatchNormFolding:
    """``folding(forward, x)``: ``forward(x)`` with the model's foldable BatchNorms folded.

    One instance per explanation (the folded weights are computed once, from the weights as they
    are); which pairs fold is traced and checked once per model and input shape (cached).
    ``enabled=False`` runs ``forward`` as it is.
    """

    def __init__(self, model: nn.Module, enabled: bool = True) -> None:
        self.model = model
        self.enabled = enabled
        self._weights: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _check(
        self, x: torch.Tensor, forward: Callable[[torch.Tensor], object]
    ) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
        """The pairs that fold for passes shaped like ``x``: traced, then checked on two rows."""
        # Two rows: DeepLIFT's passes need an even batch ([inputs; references] halves).
        sample = x[: min(2, x.shape[0])].detach()
        pairs = foldable_pairs(self.model, sample, forward)
        if pairs:
            with torch.no_grad():
                plain, folded = _tensors(forward(sample)), _tensors(self._run(pairs, forward, sample))
            if len(plain) != len(folded) or not plain or not all(map(_close, plain, folded)):
                pairs = []  # the forward reads a convolution's output outside modules
        return pairs

    def _run(
        self, pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]], forward: Callable[[torch.Tensor], Result], x: torch.Tensor
    ) -> Result:
        active = [(conv, norm) for conv, norm in pairs if not (_hooked(conv) or _hooked(norm))]
        try:
            for conv, norm in active:
                if id(conv) not in self._weights:
                    self._weights[id(conv)] = _folded_weights(conv, norm)
                weight, bias = self._weights[id(conv)]
                conv.forward = _folded_forward(conv, weight, bias)  # type: ignore[method-assign,assignment]
                norm.forward = _identity  # type: ignore[method-assign,assignment]
            return forward(x)
        finally:
            for conv, norm in active:
                conv.__dict__.pop("forward", None)
                norm.__dict__.pop("forward", None)

    def __call__(self, forward: Callable[[torch.Tensor], Result], x: torch.Tensor) -> Result:
        if (
            not self.enabled
            or x.shape[0] == 0
            or nn.modules.module._global_forward_hooks
            or nn.modules.module._global_forward_pre_hooks
        ):
            return forward(x)
        key = tuple(x.shape[1:])
        checked = _CHECKED.setdefault(self.model, {})
        if key not in checked:
            try:
                checked[key] = self._check(x, forward)
            except (RuntimeError, TypeError, ValueError) as first:
                result = forward(x)  # the pass as it is; its own error, if any, is the one to see
                try:  # does the trace fail again, i.e. is tracing two rows of this pass the cause?
                    checked[key] = self._check(x, forward)
                except (RuntimeError, TypeError, ValueError):
                    checked[key] = []  # this pass cannot be traced on a slice of it: it runs as it is
                    return result
                raise first  # a one-off failure of the model, not of the tracing: never hide it
        pairs = checked[key]
        return self._run(pairs, forward, x) if pairs else forward(x)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _folded_forward(
    conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``conv``'s forward with the folded ``weight`` and ``bias`` (its own padding, stride, groups)."""

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        return type(conv)._conv_forward(conv, inputs, weight, bias)

    return forward


def _tensors(result: object) -> list[torch.Tensor]:
    """The tensors a pass returned: a tensor, or the values of a dict/tuple/list of them."""
    if isinstance(result, torch.Tensor):
        return [result]
    values = result.values() if isinstance(result, dict) else result if isinstance(result, (tuple, list)) else ()
    return [value for value in values if isinstance(value, torch.Tensor)]


def _close(plain: torch.Tensor, folded: torch.Tensor) -> bool:
    if plain.shape != folded.shape:
        return False
    tolerance = 1e-4 * (float(plain.abs().max()) + 1.0) if plain.numel() else 0.0
    return bool(((plain.float() - folded.float()).abs() <= tolerance).all())
