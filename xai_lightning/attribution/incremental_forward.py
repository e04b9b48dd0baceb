"""Exact incremental forward passes of locally changed images (Krishnan & Kumar, "Incremental and
Approximate Inference for Faster Occlusion-based Deep CNN Explanations", SIGMOD 2019 — Krypton).

Occluding a window of an image changes only a patch of the first layers' outputs: the window
grown, layer by layer, by each layer's receptive field. Instead of running the whole network on
every occluded copy, compute the unoccluded activations once, then for every (image, window) row
recompute only the changed patch of each layer of the network's *leading chain* — reading the
unchanged halo around it from the cached activations — paste the last patch into a copy of the
cached activation and run the rest of the network from there.

The leading chain is found by tracing one forward pass: the leaf modules called first, each one
reading exactly the previous one's output (the first one reads the model's input), of the types
``Conv2d`` (zero padding; any stride, dilation and groups), ``MaxPool2d`` (no indices),
``BatchNorm2d`` in eval mode with running statistics, ``ReLU``, ``Identity`` and our ``Normalize``
(exact types: a subclass may compute something else). It stops at the first other module, at a
module called twice, at a module with forward hooks, and before any tensor inside it that some
later module also reads (a residual branch: on a CIFAR ResNet the chain is the stem). The
incremental part ends before the first ``Conv2d``/``MaxPool2d`` whose changed patch would cover
more than ``max_patch_fraction`` of its output map (from there on, the whole map changes anyway).

It is exact: every patch is computed by the layer's own operation on the exact input values it
reads (zero / −∞ padding outside the map, as the layer pads), so results equal the plain forward
up to float reassociation. Models whose forward also reads the input or an inner activation of
the chain outside the chain's modules (invisible to module hooks) are caught by a check pass:
the rest of the network runs with NaN in place of everything but the pasted activation and must
reproduce the plain logits, otherwise :meth:`IncrementalForward.build` reports why and callers
take the plain path.

Layout: patches and pasted activations are channels-last (``(N, C, H, W)`` tensors with NHWC
memory) — the gathers copy whole channel vectors, and CPU convolutions run faster in that layout.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from xai_lightning.core import select_logits
from xai_lightning.models.normalize import Normalize

__all__ = ["ChainLayer", "IncrementalForward", "LeadingChain", "trace_leading_chain"]

LayerKind = Literal["pointwise", "conv", "pool"]
POINTWISE_TYPES = (nn.Identity, nn.ReLU, Normalize)


@dataclass(frozen=True)
class Geometry:
    """How a conv/pool layer reads its input along one spatial dimension: output ``o`` reads
    inputs ``o·stride − pad_before … o·stride − pad_before + extent − 1``."""

    extent: int  # dilation · (kernel − 1) + 1
    stride: int
    pad_before: int


@dataclass
class ChainLayer:
    """One module of the leading chain, with the shapes it saw when traced (without the batch)."""

    name: str
    module: nn.Module
    kind: LayerKind
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    geometry: tuple[Geometry, Geometry] | None = None  # (height, width); None for pointwise layers


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _geometries(
    kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]
) -> tuple[Geometry, Geometry]:
    """``(height, width)`` geometry of a conv/pool layer from its per-dimension settings."""
    height, width = (Geometry(d * (k - 1) + 1, s, p) for k, s, p, d in zip(kernel, stride, padding, dilation))
    return height, width


def _describe(module: nn.Module) -> tuple[LayerKind | None, tuple[Geometry, Geometry] | None, str]:
    """``(kind, geometry, why not)`` of a module the chain may contain."""
    if module._forward_hooks or module._forward_pre_hooks or "forward" in module.__dict__:
        return None, None, "it has forward hooks or a replaced forward"
    kind = type(module)
    if kind in POINTWISE_TYPES:
        return "pointwise", None, ""
    if kind is nn.BatchNorm2d:
        if module.training or not module.track_running_stats or module.running_mean is None:
            return None, None, "a BatchNorm2d normalising with batch statistics (train mode) mixes the rows"
        return "pointwise", None, ""
    if kind is nn.Conv2d:
        if module.padding_mode != "zeros":
            return None, None, f"Conv2d padding_mode {module.padding_mode!r} is not zero padding"
        kernel, stride, dilation = _pair(module.kernel_size), _pair(module.stride), _pair(module.dilation)
        if module.padding == "valid":
            padding = (0, 0)
        elif module.padding == "same":
            padding = (dilation[0] * (kernel[0] - 1) // 2, dilation[1] * (kernel[1] - 1) // 2)
        else:
            padding = _pair(module.padding)
        return "conv", _geometries(kernel, stride, padding, dilation), ""
    if kind is nn.MaxPool2d:
        if module.return_indices:
            return None, None, "MaxPool2d returns indices"
        kernel, dilation, padding = _pair(module.kernel_size), _pair(module.dilation), _pair(module.padding)
        stride = _pair(module.stride if module.stride is not None else module.kernel_size)
        return "pool", _geometries(kernel, stride, padding, dilation), ""
    return None, None, f"{kind.__name__} is not one of Conv2d, MaxPool2d, BatchNorm2d (eval), ReLU, Identity, Normalize"


@dataclass
class LeadingChain:
    """The leading module chain of ``model`` (see the module docstring) and how to run the rest.

    ``reason`` says why the chain ends where it does (for messages); ``layers`` may be empty.
    """

    model: nn.Module
    output_key: str | int | None
    input_shape: tuple[int, ...]
    layers: list[ChainLayer] = field(default_factory=list)
    reason: str = ""
    #: multiply-adds per example of every Conv2d and Linear call of the traced forward pass.
    model_macs: int = 0

    def activations(self, x: torch.Tensor, count: int) -> list[torch.Tensor]:
        """Outputs of the first ``count`` chain layers on ``x`` (each layer's own forward)."""
        outputs = []
        for layer in self.layers[:count]:
            x = type(layer.module).forward(layer.module, x)
            outputs.append(x)
        return outputs

    def run_rest(self, count: int, activation: torch.Tensor) -> torch.Tensor:
        """Logits ``(R, K)`` of the model whose first ``count`` chain layers output ``activation``.

        The network runs as usual with the chain's forwards replaced for the call: the last one
        returns ``activation``, the ones before it NaN placeholders (which a model reading them
        elsewhere would turn into NaN logits — the check in :meth:`IncrementalForward.build`).
        """
        rows = activation.shape[0]
        members = self.layers[:count]

        def constant(value: torch.Tensor):
            return lambda *args, **kwargs: value

        def nan(shape: tuple[int, ...]) -> torch.Tensor:
            return activation.new_full((1, *shape), math.nan).expand(rows, *shape)

        try:
            for index, layer in enumerate(members):
                value = activation if index == count - 1 else nan(layer.output_shape)
                layer.module.forward = constant(value)
            output = self.model(nan(self.input_shape))
        finally:
            for layer in members:
                layer.module.__dict__.pop("forward", None)
        return select_logits(output, self.output_key)


def trace_leading_chain(model: nn.Module, sample: torch.Tensor, output_key: str | int | None = None) -> LeadingChain:
    """Trace one forward pass of ``sample`` (a few rows) and return the model's leading chain."""
    chain = LeadingChain(model, output_key, tuple(sample.shape[1:]))
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        chain.reason = "global module hooks are registered"
        return chain
    names = {module: name for name, module in model.named_modules()}
    leaves = [module for module in model.modules() if module is not model and next(module.children(), None) is None]
    described = {module: _describe(module) for module in leaves}  # before our own hooks are added
    calls: list[tuple[nn.Module, object, object]] = []

    def record(module, args, output):
        calls.append((module, args[0] if args else None, output))
        if isinstance(output, torch.Tensor) and isinstance(module, (nn.Conv2d, nn.Linear)):
            chain.model_macs += _macs_per_output(module) * output[0].numel()

    handles = [module.register_forward_hook(record) for module in leaves]
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    counts = Counter(id(module) for module, _, _ in calls)
    expected: object = sample
    tensors: list[object] = [sample]  # tensors[k] is what chain layer k reads
    chain.reason = "the forward pass ends"
    for module, first, output in calls:
        kind, geometry, why = described[module]
        # ``first is expected`` already makes ``first`` a tensor (the sample or a checked output): the
        # isinstance only tells the type checker.
        if (
            first is not expected
            or not isinstance(first, torch.Tensor)
            or not isinstance(output, torch.Tensor)
            or output.dim() != 4
        ):
            chain.reason = f"{names[module]} does not read the previous layer's output as an image batch"
            break
        if counts[id(module)] != 1:
            chain.reason = f"{names[module]} is called more than once"
            break
        if kind is None:
            chain.reason = f"{names[module]}: {why}"
            break
        chain.layers.append(
            ChainLayer(
                names[module],
                module,
                kind,
                tuple(first.shape[1:]),
                tuple(output.shape[1:]),
                geometry,
            )
        )
        expected = output
        tensors.append(output)
    # A tensor inside the chain that a later module also reads (a residual shortcut) must be where
    # the chain ends: only the chain's last output is handed, whole, to the rest of the network.
    end = len(chain.layers)
    for module, first, _ in calls[len(chain.layers) :]:
        for index in range(end):
            if first is tensors[index]:
                end = index
                chain.reason = f"{names[module]} also reads the input of {chain.layers[index].name}"
                break
    del chain.layers[end:]
    return chain


def _macs_per_output(module: nn.Module) -> int:
    """Multiply-adds per output element of a Conv2d or Linear layer."""
    if isinstance(module, nn.Conv2d):
        return module.in_channels // module.groups * math.prod(_pair(module.kernel_size))
    if isinstance(module, nn.Linear):
        return module.in_features
    raise TypeError(f"multiply-adds are counted for Conv2d and Linear layers only; got {type(module).__name__}")


@dataclass
class _Plan:
    """Where one layer's patch lies for every window: fixed size, per-window start."""

    size: tuple[int, int]
    start: tuple[torch.Tensor, torch.Tensor]  # (W,) each
    changed: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # lo_h, hi_h, lo_w, hi_w (inclusive)


def _ceil_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return -torch.div(-a, b, rounding_mode="floor")


def _propagate(layer: ChainLayer, previous: _Plan) -> _Plan:
    if layer.geometry is None:
        return previous
    bounds, sizes, starts = [], [], []
    for dim, geometry in enumerate(layer.geometry):
        out_size = layer.output_shape[1 + dim]
        lo, hi = previous.changed[2 * dim], previous.changed[2 * dim + 1]
        # Output o reads inputs [o·s − p, o·s − p + e − 1]: it changes iff that meets [lo, hi].
        new_lo = _ceil_div(lo + geometry.pad_before - geometry.extent + 1, geometry.stride).clamp(0, out_size - 1)
        new_hi = torch.div(hi + geometry.pad_before, geometry.stride, rounding_mode="floor").clamp(max=out_size - 1)
        new_hi = torch.maximum(new_hi, new_lo)  # nothing changed (stride gaps): recompute one position
        size = int((new_hi - new_lo + 1).max())
        bounds += [new_lo, new_hi]
        sizes.append(size)
        starts.append(new_lo.clamp(max=out_size - size))  # fixed-size patch inside the map covering [lo, hi]
    return _Plan((sizes[0], sizes[1]), (starts[0], starts[1]), (bounds[0], bounds[1], bounds[2], bounds[3]))


class IncrementalForward:
    """Logits of many ``(image, window)`` rows whose inputs differ from ``inputs`` only inside a window.

    Build with :meth:`build` (which may decline, saying why), then call :meth:`logits` on slices of
    rows. Rows are identified by ``examples`` (index into ``inputs``) and ``windows`` (index into
    the boxes); the caller supplies each row's changed input values over :meth:`crop`'s box.

    Memory: the unoccluded activations of the incremental layers for all ``B`` inputs (about one
    forward pass of ``B`` rows through those layers), plus per slice of ``r`` rows the patches
    and the pasted ``(r, C, H, W)`` activation a plain forward of ``r`` rows would hold anyway.
    """

    def __init__(
        self, chain: LeadingChain, count: int, plans: list[_Plan], input_plan: _Plan, inputs: torch.Tensor
    ) -> None:
        self.chain = chain
        self.count = count
        self.layers = chain.layers[:count]
        self.plans = plans
        self.input_plan = input_plan
        self.reason = ""  # why the incremental part ends where it does
        device = inputs.device
        # Plans live on the CPU (their sizes are read as Python ints: no device synchronisation);
        # the index tensors built from them go to the inputs' device.
        host = torch.device("cpu")
        # Cached (unoccluded) activations in NHWC memory, flattened to (B·H·W, C) for row gathers:
        # the padded input of every conv/pool layer, and the last layer's output.
        self._sources: list[torch.Tensor | None] = []
        self._read: list[torch.Tensor | None] = []  # (W, Qh·Qw) index into one example's padded map
        self._paste: list[torch.Tensor | None] = []  # (W, Ph·Pw) index into the canvas, −1 outside
        self._paste_everywhere: list[bool] = []
        self._canvas: list[tuple[int, int, int, int]] = []  # (Qh, Qw, Hp, Wp)
        outputs = [inputs] + chain.activations(inputs, count)
        previous = input_plan
        for index, (layer, plan) in enumerate(zip(self.layers, plans)):
            if layer.geometry is None:  # pointwise: works on the patch alone, nothing cached
                self._sources.append(None)
                self._read.append(None)
                self._paste.append(None)
                self._paste_everywhere.append(True)
                self._canvas.append((0, 0, 0, 0))
                previous = plan
                continue
            reads, pads, spans = [], [], []
            for dim, geometry in enumerate(layer.geometry):
                in_size = layer.input_shape[1 + dim]
                read_start = plan.start[dim] * geometry.stride - geometry.pad_before  # (W,)
                span = (plan.size[dim] - 1) * geometry.stride + geometry.extent
                before = max(0, -int(read_start.min()))
                after = max(0, int(read_start.max()) + span - in_size)
                reads.append(read_start)
                pads.append((before, after))
                spans.append(span)
            fill = 0.0 if layer.kind == "conv" else -math.inf
            cached = outputs[index].permute(0, 2, 3, 1)  # (B, H, W, C) view
            padded = F.pad(cached, (0, 0, pads[1][0], pads[1][1], pads[0][0], pads[0][1]), value=fill).contiguous()
            height, width = padded.shape[1:3]
            self._sources.append(padded.view(-1, padded.shape[-1]))
            rows = (reads[0] + pads[0][0])[:, None] + torch.arange(spans[0], device=host)  # (W, Qh)
            cols = (reads[1] + pads[1][0])[:, None] + torch.arange(spans[1], device=host)  # (W, Qw)
            self._read.append((rows[:, :, None] * width + cols[:, None, :]).flatten(1).to(device))
            # Where the previous layer's patch lands in this canvas (parts outside it are not read).
            inside_rows = (previous.start[0] - reads[0])[:, None] + torch.arange(previous.size[0], device=host)
            inside_cols = (previous.start[1] - reads[1])[:, None] + torch.arange(previous.size[1], device=host)
            valid = ((inside_rows >= 0) & (inside_rows < spans[0]))[:, :, None] & (
                (inside_cols >= 0) & (inside_cols < spans[1])
            )[:, None, :]
            local = inside_rows[:, :, None] * spans[1] + inside_cols[:, None, :]
            self._paste.append(torch.where(valid, local, -1).flatten(1).to(device))
            self._paste_everywhere.append(bool(valid.all()))
            self._canvas.append((spans[0], spans[1], height, width))
            previous = plan
        last = outputs[count].permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)
        self._final_shape = tuple(last.shape[1:])
        self._final = last.view(-1, last.shape[-1])
        height, width = self._final_shape[:2]
        plan = plans[-1]
        rows = plan.start[0][:, None] + torch.arange(plan.size[0], device=host)
        cols = plan.start[1][:, None] + torch.arange(plan.size[1], device=host)
        self._final_paste = (rows[:, :, None] * width + cols[:, None, :]).flatten(1).to(device)
        self.clean_activation = outputs[count]
        self._input_start = (input_plan.start[0].to(device), input_plan.start[1].to(device))

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        model: nn.Module,
        inputs: torch.Tensor,
        boxes: torch.Tensor,
        output_key: str | int | None = None,
        max_patch_fraction: float = 0.5,
        min_saving: float = 0.0,
        reference_logits: torch.Tensor | None = None,
    ) -> tuple["IncrementalForward | None", str]:
        """``(incremental forward, "")``, or ``(None, why not)`` for a model or windows it cannot speed up.

        Args:
            model: the network (eval mode, inside the observer guard).
            inputs: ``(B, C, H, W)`` unoccluded images.
            boxes: ``(W, 4)`` long tensor ``(top, bottom, left, right)`` (exclusive ends) of the
                region each window changes.
            max_patch_fraction: the incremental part ends before the first conv/pool layer whose
                patch would cover more than this fraction of its output map.
            min_saving: decline when the patches would save less than this fraction of the model's
                multiply-adds (its Conv2d and Linear layers): gathering and pasting patches costs
                memory traffic that a small saving does not repay (a CIFAR ResNet's stem: ~1%).
            reference_logits: plain logits of ``inputs[:2]`` for the check pass (computed if None).
        """
        if inputs.dim() != 4:
            return None, f"inputs of shape {tuple(inputs.shape)} are not images (B, C, H, W)"
        probe = inputs[:2]
        chain = trace_leading_chain(model, probe, output_key)
        boxes = boxes.to(device="cpu", dtype=torch.long)  # plans are sized on the host (see __init__)
        lo_h, hi_h, lo_w, hi_w = boxes[:, 0], boxes[:, 1] - 1, boxes[:, 2], boxes[:, 3] - 1
        height, width = inputs.shape[2:]
        size = (int((hi_h - lo_h + 1).max()), int((hi_w - lo_w + 1).max()))
        input_plan = _Plan(
            size, (lo_h.clamp(max=height - size[0]), lo_w.clamp(max=width - size[1])), (lo_h, hi_h, lo_w, hi_w)
        )
        plans, count, previous, why = [], 0, input_plan, chain.reason
        for index, layer in enumerate(chain.layers):
            plan = _propagate(layer, previous)
            if layer.geometry is not None:
                area = layer.output_shape[1] * layer.output_shape[2]
                if plan.size[0] * plan.size[1] > max_patch_fraction * area:
                    why = f"the patches cover more than {max_patch_fraction:.0%} of {layer.name}'s output"
                    break
            plans.append(plan)
            count, previous = index + 1, plan
        if not any(layer.geometry is not None for layer in chain.layers[:count]):
            return None, f"no convolution or pooling can be computed incrementally ({why})"
        saved = sum(
            _macs_per_output(layer.module)
            * layer.output_shape[0]
            * (layer.output_shape[1] * layer.output_shape[2] - plan.size[0] * plan.size[1])
            for layer, plan in zip(chain.layers[:count], plans)
            if layer.kind == "conv"
        )
        if saved < min_saving * chain.model_macs:
            return None, (
                f"the patches would save {saved / max(chain.model_macs, 1):.0%} of the model's multiply-adds "
                f"(less than {min_saving:.0%}; {why})"
            )
        incremental = cls(chain, count, plans, input_plan, inputs)
        with torch.no_grad():
            if reference_logits is None:
                reference_logits = select_logits(model(probe), output_key)
            try:
                replayed = chain.run_rest(
                    count, incremental.clean_activation[: probe.shape[0]].contiguous(memory_format=torch.channels_last)
                )
            except RuntimeError as error:  # the rest of the network rejected the replaced chain
                return None, f"the rest of the network cannot start from {chain.layers[count - 1].name}: {error}"
        reference = reference_logits.float()
        tolerance = 1e-4 * (reference.abs().max() + 1.0)
        if not bool(((replayed.float() - reference).abs() <= tolerance).all()):  # one synchronisation
            return None, (
                "the network reads the input or an inner activation of the chain outside the chain's modules "
                f"(a check pass starting from {chain.layers[count - 1].name} did not reproduce the logits)"
            )
        incremental.reason = why
        return incremental, ""

    # ------------------------------------------------------------------ evaluation
    @property
    def input_box_size(self) -> tuple[int, int]:
        """``(Ph, Pw)``: size of the input patch :meth:`logits` expects."""
        return self.input_plan.size

    def crop(self, source: torch.Tensor, index: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """``(r, C, Ph, Pw)``: the input-patch box of each row's window cut out of ``source[index]``.

        ``source`` is ``(N, C, H, W)`` (inputs, baselines, or per-window masks with ``index = windows``).
        """
        rows = self._input_start[0][windows][:, None] + torch.arange(self.input_plan.size[0], device=source.device)
        cols = self._input_start[1][windows][:, None] + torch.arange(self.input_plan.size[1], device=source.device)
        cropped = source.permute(0, 2, 3, 1)[index[:, None, None], rows[:, :, None], cols[:, None, :]]
        return cropped.permute(0, 3, 1, 2)

    def logits(self, examples: torch.Tensor, windows: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
        """``(r, K)`` logits of ``inputs[examples]`` with the box of ``windows`` replaced by ``patch``.

        Args:
            examples, windows: ``(r,)`` long tensors.
            patch: ``(r, C, Ph, Pw)`` input values over :meth:`crop`'s box (unchanged values included).
        """
        rows = examples.shape[0]
        row_index = torch.arange(rows, device=patch.device)[:, None]
        for index, layer in enumerate(self.layers):
            if layer.geometry is None:
                patch = type(layer.module).forward(layer.module, patch)
                continue
            span_h, span_w, height, width = self._canvas[index]
            channels = patch.shape[1]
            source, read_index, paste_index = self._sources[index], self._read[index], self._paste[index]
            assert source is not None and read_index is not None and paste_index is not None  # cached for conv/pool
            read = (examples[:, None] * (height * width) + read_index[windows]).flatten()
            canvas = source.index_select(0, read)  # (r·Qh·Qw, C)
            paste = paste_index[windows]  # (r, Ph·Pw)
            values = patch.permute(0, 2, 3, 1).reshape(-1, channels)
            target = (row_index * (span_h * span_w) + paste).flatten()
            if not self._paste_everywhere[index]:
                keep = (paste >= 0).flatten()
                target, values = target[keep], values[keep]
            canvas.index_copy_(0, target, values)
            canvas = canvas.view(rows, span_h, span_w, channels).permute(0, 3, 1, 2)
            if layer.kind == "conv":
                conv = cast(nn.Conv2d, layer.module)
                patch = F.conv2d(canvas, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)
            else:
                pool = cast(nn.MaxPool2d, layer.module)
                patch = F.max_pool2d(canvas, pool.kernel_size, pool.stride, 0, pool.dilation)
        height, width, channels = self._final_shape
        area = height * width
        full = self._final.view(-1, area, channels).index_select(0, examples).view(-1, channels)
        target = (row_index * area + self._final_paste[windows]).flatten()
        full.index_copy_(0, target, patch.permute(0, 2, 3, 1).reshape(-1, channels))
        return self.chain.run_rest(self.count, full.view(rows, height, width, channels).permute(0, 3, 1, 2))
