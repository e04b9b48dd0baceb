"""The "packed" layout of a deep ensemble: ``K`` members run as one wide network.

Idea after Laurent et al., "Packed-Ensembles for Efficient Uncertainty Estimation" (ICLR 2023):
for a chain of convolutions, batch norms, element-wise activations, pooling, dropout, a flatten
and linear layers, the ``K`` members of an ensemble are one network whose channels are
*member-major* (channel ``k·C + c`` is channel ``c`` of member ``k``):

* the shared input goes through the first convolution as one dense convolution with ``K·C_out``
  outputs (the input is not repeated);
* later convolutions are grouped convolutions with ``groups = K·groups`` (each member sees only
  its own channels);
* batch norm over ``K·C`` channels is exactly per-member batch norm (statistics are per channel
  anyway), and its running statistics are updated in place in the stacked buffers;
* activations, pooling and dropout act per channel or per element, so they need nothing (dropout
  draws independent masks for every member because every member has its own channels);
* ``flatten(1)`` turns ``(B, K·C, H, W)`` into ``(K, B, C·H·W)`` — each member's own flatten
  order — and linear layers become one batched matrix product (``torch.baddbmm``).

The wide layers' weights are *reshapes* of the stacked ``(K, ...)`` parameters made at forward
time (free views of contiguous tensors), so gradients, optimisers, state dicts and checkpoints see
the stacked parameters exactly as the ``vmap`` layout does.

:func:`packing_plan` reads a member's forward with ``torch.fx`` and accepts only a straight chain of
the operations above (exact module types, no custom subclasses); anything else raises
:class:`UnsupportedForPacking` and the ensemble keeps the ``vmap`` layout.

Activations move through three states: ``shared`` (the input, identical for all members,
``(B, C, ...)``), ``wide`` (``(B, K·C, ...)``, member-major channels) and ``members``
(``(K, B, F)``, after the flatten).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from xai_lightning.models.normalize import Normalize

__all__ = ["PackedStep", "UnsupportedForPacking", "packing_plan", "packed_forward"]


class UnsupportedForPacking(ValueError):
    """The member architecture cannot run in the packed layout (the message says which operation)."""


_ELEMENTWISE = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
)  # fmt: skip
_ELEMENTWISE_FUNCTIONS = {torch.relu, F.relu, torch.tanh, torch.sigmoid, F.gelu, F.silu}
_ELEMENTWISE_METHODS = {"relu", "tanh", "sigmoid"}
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
          nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)  # fmt: skip
_CHANNEL_DROPOUTS = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_CONVOLUTIONS: dict[type[nn.Module], Any] = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class PackedStep:
    """One operation of the chain: ``kind`` (what to do), ``target`` (the submodule's dotted name in
    the member, or ``""`` for a function), ``function`` (the element-wise function when ``target`` is ``""``)."""

    kind: str
    target: str
    function: Any = None


class _Tracer(fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, Normalize) or super().is_leaf_module(module, qualified_name)


def packing_plan(member: nn.Module) -> list[PackedStep]:
    """The chain of packed steps equivalent to ``member.forward``; raises :class:`UnsupportedForPacking`."""
    try:
        graph = _Tracer().trace(member)
    except Exception as error:  # data-dependent control flow, unsupported Python: not a plain chain
        raise UnsupportedForPacking(f"torch.fx cannot trace the member ({type(error).__name__}: {error})") from None
    modules = dict(member.named_modules())
    nodes = list(graph.nodes)
    placeholders = [node for node in nodes if node.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedForPacking(f"the member takes {len(placeholders)} inputs; packing needs exactly one")
    steps: list[PackedStep] = []
    previous = placeholders[0]
    state = "shared"
    for node in nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            if node.args[0] is not previous:
                raise UnsupportedForPacking("the member's output is not the end of one chain of operations")
            break
        if not node.args or node.args[0] is not previous or len(node.users) != 1:
            raise UnsupportedForPacking(f"{node.format_node()} is not part of one straight chain (branches, residuals)")
        if any(isinstance(arg, fx.Node) for arg in list(node.args[1:]) + list(node.kwargs.values())):
            raise UnsupportedForPacking(f"{node.format_node()} depends on more than the previous result")
        step, state = _step(node, modules, state)
        steps.append(step)
        previous = node
    return steps


def _step(node: fx.Node, modules: dict[str, nn.Module], state: str) -> tuple[PackedStep, str]:
    """The packed step for one node and the state after it (see the module docstring)."""
    unsupported = UnsupportedForPacking(f"{node.format_node()} is not supported in state {state!r}")
    if node.op == "call_module":
        module = modules[str(node.target)]
        kind = type(module)
        name = str(node.target)
        if kind in _ELEMENTWISE or (kind is nn.Dropout and state != "shared"):
            return PackedStep("apply", name), state
        if kind in _POOLS and state != "members":
            if getattr(module, "return_indices", False):
                raise unsupported
            return PackedStep("apply", name), state
        if kind is nn.Dropout or (kind in _CHANNEL_DROPOUTS and state != "members"):
            # In the shared state one mask would serve every member: widen first so each draws its own.
            return PackedStep("widen_apply" if state == "shared" else "apply", name), "wide"
        if kind in _CONVOLUTIONS and state != "members":
            if module.padding_mode != "zeros":
                raise unsupported
            dense = state == "shared" and module.groups == 1
            return PackedStep("conv_shared" if dense else "conv", name), "wide"
        if kind in _BATCH_NORMS:
            if module.momentum is None and module.track_running_stats:
                raise UnsupportedForPacking(f"{node.format_node()}: cumulative-average batch norm (momentum=None)")
            return PackedStep("batch_norm", name), "members" if state == "members" else "wide"
        if kind is Normalize and state != "members":
            return PackedStep("normalize", name), "wide"
        if kind is nn.Flatten and module.start_dim == 1 and module.end_dim == -1:
            return PackedStep("flatten", name), "members"
        if kind is nn.Linear and state == "members":
            return PackedStep("linear", name), "members"
        raise unsupported
    if node.op == "call_function" and node.target in _ELEMENTWISE_FUNCTIONS and len(node.args) == 1:
        return PackedStep("apply", "", node.target), state
    if node.op == "call_method" and node.target in _ELEMENTWISE_METHODS and len(node.args) == 1:
        return PackedStep("apply", "", getattr(torch, str(node.target))), state
    if _is_flatten(node):
        return PackedStep("flatten", ""), "members"
    raise unsupported


def _is_flatten(node: fx.Node) -> bool:
    is_call = (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten"
    )
    if not is_call:
        return False
    arguments = list(node.args[1:])
    start = arguments[0] if arguments else node.kwargs.get("start_dim", 0)
    end = arguments[1] if len(arguments) > 1 else node.kwargs.get("end_dim", -1)
    return operator.eq(start, 1) and operator.eq(end, -1)


def _widen(x: torch.Tensor, k: int) -> torch.Tensor:
    """Shared ``(B, C, ...)`` → wide ``(B, K·C, ...)``: the input copied once for every member."""
    return x.unsqueeze(1).expand(x.shape[0], k, *x.shape[1:]).reshape(x.shape[0], k * x.shape[1], *x.shape[2:])


def packed_forward(
    plan: list[PackedStep], stacked: nn.Module, k: int, x: torch.Tensor, channels_last: bool = False
) -> torch.Tensor:
    """Run the packed chain on the shared input ``x``: ``(K, B, ...)`` outputs, as ``vmap`` would give.

    ``stacked`` holds the ``(K, ...)`` parameters and buffers under the member's names; training
    mode is read from each of its submodules. ``channels_last``: 2-D convolutions get channels-last
    inputs (so do the batch norms and pools after them) — only the memory layout changes, the
    values agree up to float rounding.
    """
    state = "shared"
    for step in plan:
        # Modules are looked up in ``stacked`` (not kept in the plan): its training flags are the truth.
        # ``.forward``, not ``__call__``: hooks on ``stacked`` never fire in the vmap layout either, and
        # must not see wide (B, K·C, ...) tensors here.
        if step.kind == "apply":
            x = (stacked.get_submodule(step.target).forward if step.target else step.function)(x)
        elif step.kind == "widen_apply":
            x, state = stacked.get_submodule(step.target).forward(_widen(x, k)), "wide"
        elif step.kind == "normalize":
            normalize = cast(Normalize, stacked.get_submodule(step.target))
            if state == "shared":
                x, state = _widen(x, k), "wide"
            channels = (1, -1) + (1,) * (x.dim() - 2)
            x = (x - normalize.mean.reshape(channels)) / normalize.std.reshape(channels)
        elif step.kind in ("conv", "conv_shared"):
            x, state = _convolution(step, stacked, k, x, state, channels_last), "wide"
        elif step.kind == "batch_norm":
            x = _batch_norm(cast(_BatchNorm, stacked.get_submodule(step.target)), k, x, state)
            state = "members" if state == "members" else "wide"
        elif step.kind == "flatten":
            if state == "shared":
                x = x.flatten(1).unsqueeze(0).expand(k, -1, -1)
            elif state == "wide":
                x = x.reshape(x.shape[0], k, -1).transpose(0, 1)
            state = "members"
        elif step.kind == "linear":
            linear = cast(nn.Linear, stacked.get_submodule(step.target))
            weight = linear.weight.transpose(1, 2)  # (K, in, out)
            x = torch.bmm(x, weight) if linear.bias is None else torch.baddbmm(linear.bias.unsqueeze(1), x, weight)
        else:  # pragma: no cover - packing_plan only makes the kinds above
            raise AssertionError(step.kind)
    if state == "wide":
        return x.reshape(x.shape[0], k, -1, *x.shape[2:]).transpose(0, 1)
    if state == "shared":
        return x.unsqueeze(0).expand(k, *x.shape)
    return x


def _convolution(
    step: PackedStep, stacked: nn.Module, k: int, x: torch.Tensor, state: str, channels_last: bool
) -> torch.Tensor:
    conv = cast(_ConvNd, stacked.get_submodule(step.target))
    weight = conv.weight.reshape(-1, *conv.weight.shape[2:])  # (K·C_out, C_in/groups, *kernel)
    bias = None if conv.bias is None else conv.bias.reshape(-1)
    convolve = _CONVOLUTIONS[type(conv)]
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    if step.kind == "conv_shared":
        groups = 1
    else:
        if state == "shared":
            x = _widen(x, k)
        groups = k * conv.groups
    return convolve(x, weight, bias, conv.stride, conv.padding, conv.dilation, groups)


def _batch_norm(norm: _BatchNorm, k: int, x: torch.Tensor, state: str) -> torch.Tensor:
    """Batch norm over member-major channels: per-member statistics, running stats updated in place."""
    if state == "shared":
        x = _widen(x, k)
    if state == "members":  # (K, B, F) → (B, K·F) and back
        batch = x.shape[1]
        return _batch_norm(norm, k, x.transpose(0, 1).reshape(batch, -1), "wide").reshape(batch, k, -1).transpose(0, 1)
    momentum = 0.0 if norm.momentum is None else norm.momentum
    if norm.training and norm.track_running_stats and norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
    use_batch_statistics = norm.training or (norm.running_mean is None and norm.running_var is None)
    keep_running = not norm.training or norm.track_running_stats
    # .view (not .reshape): the in-place update must land in the stacked buffers.
    running_mean = norm.running_mean.view(-1) if keep_running and norm.running_mean is not None else None
    running_var = norm.running_var.view(-1) if keep_running and norm.running_var is not None else None
    weight = None if norm.weight is None else norm.weight.reshape(-1)
    bias = None if norm.bias is None else norm.bias.reshape(-1)
    return F.batch_norm(x, running_mean, running_var, weight, bias, use_batch_statistics, momentum, norm.eps)
