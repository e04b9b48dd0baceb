"""The observer guard: explain a model mid-training without disturbing the training.

Every explanation in xai_lightning runs inside :func:`observe`. For its duration the guard

* switches the model to eval mode and afterwards restores **each submodule's own**
  ``training`` flag (a BatchNorm frozen in eval stays frozen, a train-mode Dropout returns
  to train mode) — never a blanket ``.train()``;
* isolates every random number generator the training could read (torch CPU, every
  initialised CUDA device, NumPy's and Python's global generators), so that noise,
  sampling and shuffling inside an explanation leave the training stream untouched;
* enables autograd even inside Lightning's ``torch.no_grad`` validation loop and
  ``trainer.validate``'s ``torch.inference_mode`` (:meth:`ObserverGuard.input` clones
  inference tensors into ordinary ones);
* runs under the trainer's precision (see *Precision* below) when a trainer is given;
* runs every compiled (``torch.compile``) submodule eagerly (its ``_orig_mod``): a compiled graph skips
  hooks registered after its first call, so explanations would silently miss their layers;
* removes every hook registered through :meth:`ObserverGuard.add_hook` in ``finally``,
  also when the explained forward raises.

Gradients inside the guard are taken with ``torch.autograd.grad`` only, so parameters'
``.grad`` fields are never read or written. This module imports no Lightning: the trainer is
duck-typed (anything with ``precision_plugin.forward_context()``).

Precision. With a trainer, the guard enters its precision plugin's ``forward_context()``: autocast
for ``"16-mixed"``/``"bf16-mixed"``, exactly as the training forward runs. The *true* precisions
(``"bf16-true"``, ``"16-true"``, ``"64-true"``) convert the model's weights; for them the guard
casts every floating-point input of the model's forward to the weights' dtype (in a pre-hook
removed on exit; autograd flows through the cast, so gradients with respect to a float32 input
come back in float32), and keeps the default dtype that was set outside, so the explanation's own
bookkeeping (baselines, masks, running sums) stays float32 instead of silently becoming bfloat16.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from xai_lightning.core.eval_mode import eval_mode

__all__ = ["ObserverGuard", "compiled_submodules", "isolated_rng", "observe"]


class _RNGSnapshot:
    """The state of every global generator a training loop may draw from."""

    def __init__(self) -> None:
        self.torch_cpu = torch.get_rng_state()
        # Only initialised CUDA devices have a state worth saving; querying an uninitialised
        # device would initialise CUDA, which is itself a side effect.
        self.torch_cuda = (
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        )
        self.numpy = np.random.get_state()
        self.python = random.getstate()

    def restore(self) -> None:
        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda is not None:
            torch.cuda.set_rng_state_all(self.torch_cuda)
        np.random.set_state(self.numpy)
        random.setstate(self.python)


@contextlib.contextmanager
def isolated_rng():
    """Restore every global generator (torch CPU/CUDA, NumPy, Python) on exit.

    For work that must not shift the training's random stream but needs no other protection,
    e.g. building a probe set from a user's dataloader.
    """
    snapshot = _RNGSnapshot()
    try:
        yield
    finally:
        snapshot.restore()


class ObserverGuard:
    """Context manager that makes a model safe to explain in the middle of training.

    Args:
        model: the module to explain. Its submodules' ``training`` flags are saved on entry
            and restored one by one on exit.
        trainer: optional Lightning trainer (duck-typed); its precision plugin's
            ``forward_context()`` is entered so explanations run in the training precision.
        seed: when given, the (isolated) global torch generator is seeded with it on entry,
            which makes stochastic explanations (SmoothGrad noise, RISE masks) reproducible
            epoch after epoch. The training stream is unaffected either way.

    Example::

        with observe(model) as guard:
            x = guard.input(images)                 # autograd-ready copy
            logits = model(x)
            (grad,) = torch.autograd.grad(logits[:, 3].sum(), x)
    """

    def __init__(self, model: nn.Module, trainer: Any | None = None, seed: int | None = None) -> None:
        self.model = model
        self.trainer = trainer
        self.seed = seed
        self._hooks: list[RemovableHandle] = []
        self._rng: _RNGSnapshot | None = None
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> "ObserverGuard":
        self._rng = _RNGSnapshot()
        stack = contextlib.ExitStack()
        try:
            # inference_mode(False) must come first: enable_grad alone cannot leave inference mode.
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
            stack.enter_context(_eager_submodules(self.model))
            precision_plugin = getattr(self.trainer, "precision_plugin", None)
            if precision_plugin is not None and hasattr(precision_plugin, "forward_context"):
                outside_dtype = torch.get_default_dtype()
                stack.enter_context(precision_plugin.forward_context())
                # True-precision plugins set the default dtype for the training forward; our own
                # tensors keep the caller's (see "Precision" above).
                stack.enter_context(_default_dtype(outside_dtype))
                self.add_hook(self.model.register_forward_pre_hook(_cast_inputs_to_weights, with_kwargs=True))
            if self.seed is not None:
                # Seed only generators the snapshot restores: torch.manual_seed would also queue a
                # lazy seed for a not-yet-initialised CUDA, which would leak into training later.
                torch.default_generator.manual_seed(self.seed)
                if self._rng.torch_cuda is not None:
                    torch.cuda.manual_seed_all(self.seed)
            # Eval mode; on exit every module gets its own training flag back.
            stack.enter_context(eval_mode(self.model))
        except BaseException:
            stack.close()
            self._restore()
            raise
        self._stack = stack
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.remove_hooks()
        finally:
            try:
                if self._stack is not None:
                    self._stack.close()
            finally:
                self._restore()

    def _restore(self) -> None:
        if self._rng is not None:
            self._rng.restore()

    # ------------------------------------------------------------------ helpers
    def add_hook(self, handle: RemovableHandle) -> RemovableHandle:
        """Track a hook handle so that it is removed when the guard exits."""
        self._hooks.append(handle)
        return handle

    def remove_hooks(self) -> None:
        while self._hooks:
            self._hooks.pop().remove()

    @staticmethod
    def input(x: torch.Tensor, requires_grad: bool = True) -> torch.Tensor:
        """An autograd-ready copy of ``x``, detached from the training graph.

        Cloning is what turns an inference tensor (created under ``torch.inference_mode``)
        into an ordinary one that autograd can differentiate.
        """
        copy = x.detach().clone()
        if requires_grad and copy.is_floating_point():
            copy.requires_grad_(True)
        return copy


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _cast_floats(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_floats(item, dtype) for item in value)
    if isinstance(value, dict):
        return {key: _cast_floats(item, dtype) for key, item in value.items()}
    return value


def _cast_inputs_to_weights(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """Forward pre-hook: floating-point inputs take the dtype of the module's (first floating) weights.

    The weights' dtype, not the plugin's: Lightning converts the model after the callbacks' ``setup``.
    """
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if dtype is None:
        return None
    return _cast_floats(args, dtype), _cast_floats(kwargs, dtype)


def compiled_submodules(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """``(parent, attribute, compiled)`` for every ``torch.compile`` wrapper below ``model``.

    A compiled wrapper keeps the eager module as ``_orig_mod``; it is recognised by that attribute,
    without importing ``torch._dynamo``.
    """
    found = []
    for parent in model.modules():
        for attribute, child in parent.named_children():
            if isinstance(getattr(child, "_orig_mod", None), nn.Module):
                found.append((parent, attribute, child))
    return found


@contextlib.contextmanager
def _eager_submodules(model: nn.Module) -> Iterator[None]:
    """Put each compiled submodule's eager module in its place for the duration (same parameters).

    Hooks registered on a module after its compiled wrapper first ran are skipped by the compiled
    graph; running the eager module makes every hook fire, and layer names read as the user wrote
    them (no ``_orig_mod.``).
    """
    swapped = []
    try:
        while True:  # a compiled module may contain compiled modules
            found = compiled_submodules(model)
            if not found:
                break
            for parent, attribute, compiled in found:
                setattr(parent, attribute, compiled._orig_mod)
                swapped.append((parent, attribute, compiled))
        yield
    finally:
        for parent, attribute, compiled in reversed(swapped):
            setattr(parent, attribute, compiled)


def observe(model: nn.Module, trainer: Any | None = None, seed: int | None = None) -> ObserverGuard:
    """Return an :class:`ObserverGuard` for ``model``; use it as ``with observe(model) as guard:``."""
    return ObserverGuard(model, trainer=trainer, seed=seed)
