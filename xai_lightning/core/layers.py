"""Find layers by their dotted module path, through DDP and ``torch.compile`` wrappers.

Names are the ones ``model.named_modules()`` prints for the *unwrapped* model, e.g.
``"model.layer4.1.conv2"``. The wrapper prefixes ``module.`` (DistributedDataParallel,
DataParallel) and ``_orig_mod.`` (``torch.compile``) are accepted and ignored, so a name
copied from a wrapped model's ``state_dict`` works too.

A *layer spec* adds two optional parts to the name, so that transformers read like CNNs:

    "<module path>[:input|:output][@<reshape>]"      e.g. "vit.layers.3.layernorm_before:input@vit"

* ``:input`` reads the tensor the module *receives* (its first argument) instead of what it returns
  — for a pre-LN transformer block, the input of its first LayerNorm is the residual stream;
* ``@<reshape>`` folds the tensor into feature maps ``(B, C, h, w)`` (``@vit``: drop the CLS token
  and fold the patch tokens to a grid; see :mod:`xai_lightning.core.reshape`).

:class:`LayerSpec` is the parsed form; its :attr:`~LayerSpec.key` (the canonical string) names the
layer in results, logged keys and checkpoints. ``"auto"`` picks the last module with a spatial 4-D
output — or, for a vision transformer, the input of the last block's first LayerNorm, folded to
its patch grid: the last place where patch tokens still reach the CLS token (the last block's
*output* patch tokens never do, so Grad-CAM there is all zero).
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from xai_lightning.core.reshape import Reshape, get_reshape, reshape_name

__all__ = [
    "AUTO",
    "LayerNotFoundError",
    "LayerSpec",
    "LayerSpecLike",
    "auto_layer",
    "embedding_layer",
    "get_layer",
    "layer_names",
    "normalize_layer_name",
    "parse_layer",
    "resolve_layer_specs",
    "resolve_layers",
    "special_tokens",
    "unwrap_model",
]

AUTO = "auto"
_WRAPPER_PREFIXES = ("module", "_orig_mod")
Capture = Literal["output", "input"]


class LayerNotFoundError(ValueError):
    """A layer name that does not exist in the model; the message lists the valid names."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers.

    Hooks registered on a compiled wrapper are ignored by the compiled graph, so explanations
    always run on the eager module underneath.
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def normalize_layer_name(name: str) -> str:
    """Drop wrapper components: ``"module._orig_mod.layer4.1"`` → ``"layer4.1"`` (spec suffixes are kept)."""
    parts = [part for part in name.split(".") if part not in _WRAPPER_PREFIXES]
    return ".".join(parts)


@dataclass(frozen=True)
class LayerSpec:
    """Which tensor of which module to read, and how to fold it into ``(B, C, h, w)``.

    Attributes:
        name: dotted module path in the unwrapped model (wrapper prefixes removed).
        capture: ``"output"`` (what the module returns) or ``"input"`` (its first argument).
        reshape: name of a reshape (:mod:`~xai_lightning.core.reshape`) or None; a callable given
            here is registered under its ``__name__``.
    """

    name: str
    capture: Capture = "output"
    reshape: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalize_layer_name(self.name))
        if self.capture not in ("output", "input"):
            raise ValueError(f"A layer is read at its 'output' or 'input'; got capture={self.capture!r}")
        if self.reshape is not None:
            object.__setattr__(self, "reshape", reshape_name(self.reshape))

    @property
    def key(self) -> str:
        """The canonical string of this spec, e.g. ``"blocks.3.norm1:input@vit"``."""
        return self.name + (":input" if self.capture == "input" else "") + (f"@{self.reshape}" if self.reshape else "")

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        """The layer's tensor as this spec presents it (reshaped when a reshape is set)."""
        reshape = self.reshape_fn
        return tensor if reshape is None else reshape(tensor)

    @property
    def reshape_fn(self) -> Reshape | None:
        return None if self.reshape is None else get_reshape(self.reshape)

    def with_reshape(self, reshape: str | Reshape | None) -> LayerSpec:
        return LayerSpec(self.name, self.capture, None if reshape is None else reshape_name(reshape))

    def __str__(self) -> str:
        return self.key


#: What functions accept as a layer: a spec string, a :class:`LayerSpec`, or a mapping with
#: ``name`` and optionally ``capture`` and ``reshape`` (the form a YAML file gives).
LayerSpecLike = str | LayerSpec | Mapping[str, Any]


def parse_layer(spec: LayerSpecLike, reshape: str | Reshape | None = None) -> LayerSpec:
    """A :class:`LayerSpec` from a string ``"path[:input|:output][@reshape]"``, a mapping or a spec.

    ``reshape`` applies to a spec that names none itself. ``"auto"`` cannot be parsed: resolve it
    with :func:`resolve_layer_specs`.
    """
    if isinstance(spec, LayerSpec):
        parsed = spec
    elif isinstance(spec, Mapping):
        unknown = set(spec) - {"name", "capture", "reshape"}
        if "name" not in spec or unknown:
            raise ValueError(
                f"A layer given as a mapping has keys 'name' and optionally 'capture', 'reshape'; got {sorted(spec)}"
            )
        parsed = LayerSpec(str(spec["name"]), spec.get("capture", "output"), spec.get("reshape"))
    elif isinstance(spec, str):
        path, _, shape = spec.partition("@")
        path, _, capture = path.partition(":")
        if capture not in ("", "input", "output"):
            raise ValueError(f"Layer {spec!r}: after ':' write 'input' or 'output'; got {capture!r}")
        parsed = LayerSpec(path, "input" if capture == "input" else "output", shape or None)
    else:
        raise TypeError(f"A layer is a name string, a LayerSpec or a mapping; got {type(spec).__name__}")
    if parsed.name == AUTO:
        raise ValueError("'auto' is resolved against a model with resolve_layer_specs(model, 'auto', forward).")
    if parsed.reshape is None and reshape is not None:
        parsed = parsed.with_reshape(reshape)
    return parsed


def _modules_by_clean_name(model: nn.Module) -> dict[str, nn.Module]:
    """Every submodule of the unwrapped model by its name without wrapper components.

    A ``torch.compile``d *submodule* appears twice in ``named_modules`` (``network`` and
    ``network._orig_mod``): both get the clean name, and the eager module (listed last) wins,
    so names below it read as in the uncompiled model (``network.features.1``)."""
    return {normalize_layer_name(name): module for name, module in unwrap_model(model).named_modules()}


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every submodule of the unwrapped model (the root itself excluded), without
    ``_orig_mod.``/``module.`` components of compiled or wrapped submodules."""
    return [name for name in _modules_by_clean_name(model) if name]


def _unknown_layer_message(name: str, model: nn.Module) -> str:
    names = layer_names(model)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listing = "\n  ".join(names) if names else "(the model has no submodules)"
    return (
        f"Unknown layer {name!r} in {type(unwrap_model(model)).__name__}.{hint} "
        f"Use a dotted name from model.named_modules(), or 'auto' for the last module with a "
        f"spatial 4-D output. Valid names:\n  {listing}"
    )


def get_layer(model: nn.Module, name: LayerSpecLike) -> nn.Module:
    """Return the submodule a name (or spec) points to; raise :class:`LayerNotFoundError` listing valid names."""
    if isinstance(name, str):
        clean = normalize_layer_name(name.partition("@")[0].partition(":")[0])
        shown = name
    else:
        clean = parse_layer(name).name
        shown = clean
    modules = _modules_by_clean_name(model)
    if not clean or clean not in modules:
        raise LayerNotFoundError(_unknown_layer_message(shown, model))
    return modules[clean]


def _is_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or "attention" in type(module).__name__.lower()


def special_tokens(model: nn.Module) -> int:
    """How many tokens a ViT puts before its patches: its declared ``num_special_tokens`` (our
    :class:`~xai_lightning.models.VisionTransformer`) or ``num_prefix_tokens`` (timm), else 1 (a CLS token)."""
    for module in unwrap_model(model).modules():
        for attribute in ("num_special_tokens", "num_prefix_tokens"):
            value = getattr(module, attribute, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return 1


def _special_token_preset(root: nn.Module) -> str:
    """The token-grid preset of a ViT (:func:`special_tokens` before the patches)."""
    count = special_tokens(root)
    return {0: "grid", 1: "vit", 2: "deit"}.get(count, f"vit_reg{count - 1}")


# model → {(its modules, the sample's shape, dtype and device): the spec key "auto" stood for}
_AUTO_LAYERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, str]] = weakref.WeakKeyDictionary()


def _auto_layer_key(root: nn.Module, sample: torch.Tensor) -> tuple:
    # Which module "auto" picks depends on the modules (replacing one may change it) and on the
    # input's shape (a smaller image can shrink a late feature map to 1x1), not on the values.
    modules = tuple((name, type(module), id(module)) for name, module in root.named_modules())
    return modules, tuple(sample.shape[1:]), sample.dtype, sample.device


def auto_layer(model: nn.Module, forward: Callable[[], object], sample: torch.Tensor | None = None) -> str:
    """The spec key ``"auto"`` stands for, found with one forward pass.

    * A CNN: the last module (in execution order) whose output is a 4-D tensor with spatial size
      > 1×1 (a global average pool's ``(B, C, 1, 1)`` has no spatial extent to map).
    * A vision transformer — blocks (modules with a LayerNorm child and an attention child)
      running after every such 4-D output, e.g. after the patch embedding: the *input*
      of the last block's first LayerNorm, folded to the patch grid, e.g.
      ``"blocks.3.norm1:input@vit"``.

    ``forward`` runs one forward pass of ``model`` (for example on a single probe image); it
    is called with temporary hooks on every submodule, which are removed afterwards. With
    ``sample``, the input ``forward`` runs on, the answer is remembered for this model, its
    modules and the sample's shape, dtype and device: a function that resolves ``"auto"`` at every
    call (``grad_cam(model, x)``) then pays that pass once (a ViT's pass with its hooks costs ~8 %
    of Grad-CAM on 64 images).

    Raises:
        LayerNotFoundError: when no submodule produces such an output.
    """
    root = unwrap_model(model)
    if sample is None:
        return _find_auto_layer(root, model, forward)
    remembered = _AUTO_LAYERS.setdefault(root, {})
    key = _auto_layer_key(root, sample)
    if key not in remembered:
        remembered[key] = _find_auto_layer(root, model, forward)
    return remembered[key]


def _find_auto_layer(root: nn.Module, model: nn.Module, forward: Callable[[], object]) -> str:
    spatial: list[tuple[int, str]] = []
    norm_inputs: list[tuple[int, str, tuple[int, ...]]] = []
    clock = [0]

    def record(name: str, module: nn.Module) -> Callable[..., None]:
        def hook(_module: nn.Module, inputs: tuple, output: object) -> None:
            clock[0] += 1
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-2:].numel() > 1:
                spatial.append((clock[0], name))
            if isinstance(module, nn.LayerNorm) and inputs and isinstance(inputs[0], torch.Tensor):
                norm_inputs.append((clock[0], name, tuple(inputs[0].shape)))

        return hook

    handles = [module.register_forward_hook(record(name, module)) for name, module in root.named_modules() if name]
    try:
        forward()
    finally:
        for handle in handles:
            handle.remove()
    modules = dict(root.named_modules())
    # Blocks: modules with a LayerNorm child and an attention child (the encoder and the model
    # around them hold attention only deeper down, so their final LayerNorm is no block's).
    blocks: dict[str, tuple[int, str, tuple[int, ...]]] = {}
    for time, name, shape in norm_inputs:
        parent = name.rpartition(".")[0]
        if not parent or len(shape) != 3 or parent in blocks:
            continue
        block = modules.get(parent)
        if block is not None and any(_is_attention(child) for child in block.children()):
            blocks[parent] = (time, name, shape)
    # 4-D outputs inside blocks are attention probabilities (B, heads, T, T), not feature maps.
    outside = [(time, name) for time, name in spatial if not any(name.startswith(f"{b}.") for b in blocks)]
    last_spatial = outside[-1][0] if outside else 0
    blocks = {parent: found for parent, found in blocks.items() if found[0] > last_spatial}
    spatial = outside
    if blocks:
        _time, norm, shape = max(blocks.values())
        preset = _special_token_preset(root)
        spec = LayerSpec(norm, "input", preset)
        try:
            get_reshape(preset).grid_size(shape[1])  # type: ignore[attr-defined]
        except ValueError as error:
            raise ValueError(f"layers='auto' picked {spec.key!r} in {type(root).__name__}, but: {error}") from error
        return spec.key
    if not spatial:
        raise LayerNotFoundError(
            f"layers='auto' found no module with a 4-D (B, C, H, W) output of spatial size > 1x1 in "
            f"{type(root).__name__}, nor vision-transformer blocks (a LayerNorm beside an attention module, on "
            "(B, tokens, dim) inputs). Name the layer to explain explicitly (for a transformer with a reshape, "
            "e.g. 'blocks.3.norm1:input@vit'); valid names:\n  " + "\n  ".join(layer_names(model))
        )
    return spatial[-1][1]


def resolve_layer_specs(
    model: nn.Module,
    layers: LayerSpecLike | Sequence[LayerSpecLike],
    forward: Callable[[], object] | None = None,
    reshape: str | Reshape | None = None,
    sample: torch.Tensor | None = None,
) -> list[LayerSpec]:
    """Validate layers (``"auto"`` included) and return their :class:`LayerSpec` s, duplicates removed.

    ``forward`` is only needed when ``"auto"`` is among ``layers``; ``reshape`` applies to every
    layer that names none (``"auto"`` on a ViT brings its own); ``sample``, the input ``forward``
    runs on, lets :func:`auto_layer` remember its answer.
    """
    requested = [layers] if isinstance(layers, (str, LayerSpec, Mapping)) else list(layers)
    if not requested:
        raise ValueError("At least one layer is required (a dotted module name or 'auto').")
    resolved: list[LayerSpec] = []
    for entry in requested:
        if isinstance(entry, str) and entry == AUTO:
            if forward is None:
                raise ValueError("Resolving layers='auto' needs a forward pass; pass `forward`.")
            spec = parse_layer(auto_layer(model, forward, sample), reshape)
        else:
            spec = parse_layer(entry, reshape)
            get_layer(model, spec.name)
        if spec not in resolved:
            resolved.append(spec)
    return resolved


def resolve_layers(
    model: nn.Module,
    layers: LayerSpecLike | Sequence[LayerSpecLike],
    forward: Callable[[], object] | None = None,
    reshape: str | Reshape | None = None,
) -> list[str]:
    """Validate layer names/specs (``"auto"`` included) and return their normalised spec keys.

    A plain module name comes back as its normalised dotted name; a spec with a capture point or a
    reshape as its :attr:`LayerSpec.key`. ``forward`` is only needed when ``"auto"`` is among ``layers``.
    """
    return [spec.key for spec in resolve_layer_specs(model, layers, forward, reshape)]


def embedding_layer(model: nn.Module, forward: Callable[[], object], input_ids: torch.Tensor) -> str:
    """The dotted name of the ``nn.Embedding`` that looks up ``input_ids`` (the word embedding).

    Found with one forward pass (``forward`` runs the model on ``input_ids``): the embedding whose
    input equals the token ids — not the position or token-type embeddings, which read other ids.

    Raises:
        LayerNotFoundError: when no ``nn.Embedding`` receives the input ids, naming the fix.
    """
    root = unwrap_model(model)
    found: list[str] = []

    def record(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, inputs: tuple) -> None:
            ids = inputs[0] if inputs else None
            if (
                isinstance(ids, torch.Tensor)
                and ids.shape == input_ids.shape
                and torch.equal(ids.to(input_ids.device), input_ids)
            ):
                found.append(name)

        return hook

    embeddings = [(name, module) for name, module in root.named_modules() if name and isinstance(module, nn.Embedding)]
    handles = [module.register_forward_pre_hook(record(name)) for name, module in embeddings]
    try:
        forward()
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        present = ", ".join(name for name, _ in embeddings) or "none"
        raise LayerNotFoundError(
            f"Found no embedding layer in {type(root).__name__}: no nn.Embedding receives the input token ids "
            f"(nn.Embedding modules: {present}). Embedding attributions (integrated gradients, gradient x input) "
            "need one; name the module that embeds the tokens with embedding_layer='<dotted name>', or use "
            "token occlusion, which needs none."
        )
    return found[0]
