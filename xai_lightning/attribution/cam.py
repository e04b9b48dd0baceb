"""Class Activation Mapping (Zhou, Khosla, Lapedriza, Oliva & Torralba, "Learning Deep Features for
Discriminative Localization", CVPR 2016).

For a network ending in ``conv features A → global average pooling → linear`` the class score is
``y_c = Σ_k w_ck · mean_ij A^k_ij + b_c``, so ``M_c(i, j) = Σ_k w_ck A^k_ij`` is a map whose
spatial mean is the class score minus the bias. No gradient is needed: the weights of the final
linear layer are read directly. Grad-CAM generalises this: on such a network Grad-CAM equals
ReLU(CAM) / (h·w) (tested).
"""

from __future__ import annotations

import torch
from torch import nn

from xai_lightning.attribution.explained_model import ExplainedModel
from xai_lightning.attribution.layer_gradients import layer_slices, resolve_layer, spatial_size, upsample_maps
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.core import AUTO, ObserverGuard, TargetSpec, get_layer, layer_names, normalize_layer_name

__all__ = ["CAM"]


def _final_linear(model: nn.Module, name: str) -> tuple[str, nn.Linear]:
    if name != AUTO:
        module = get_layer(model, name)
        if not isinstance(module, nn.Linear):
            raise ValueError(f"CAM reads class weights from an nn.Linear; {name!r} is a {type(module).__name__}.")
        return normalize_layer_name(name), module
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"CAM needs a final nn.Linear classifier after global average pooling; {type(model).__name__} has none. "
            "Use gradcam, which works with any head."
        )
    return linears[-1]


class CAM(AttributionMethod):
    """Class activation maps ``Σ_k w_ck A^k``, upsampled to ``(B, H, W)``.

    Args:
        layer: the feature layer feeding the global average pool (``"auto"``: last spatial 4-D output).
        linear_layer: the classifier whose rows are ``w_c`` (``"auto"``: the last ``nn.Linear``).
        relu: keep only positive evidence (the paper shows the raw map; off by default).
        upsample: bilinear upsampling to the input size.
        reshape: fold transformer tokens into a grid (e.g. ``"vit"``) when ``layer`` names no reshape.

    Raises (at call time) a ValueError naming both sizes when the layer's channels do not match
    the classifier's inputs — CAM only applies to GAP→linear heads.
    """

    name = "cam"
    title = "CAM"
    image_only = True
    map_reduction = "none"

    def __init__(
        self,
        layer: str = "auto",
        linear_layer: str = "auto",
        relu: bool = False,
        upsample: bool = True,
        reshape: str | None = None,
        **common,
    ) -> None:
        super().__init__(**common)
        self.reshape = reshape
        self.layer = layer
        self.linear_layer = linear_layer
        self.relu = relu
        self.upsample = upsample

    def _attribute(
        self,
        explained: ExplainedModel,
        inputs: torch.Tensor,
        target: TargetSpec,
        labels: torch.Tensor | None,
        guard: ObserverGuard,
    ):
        layer = resolve_layer(explained, inputs, self.layer, "CAM", self.reshape)
        linear_name, linear = _final_linear(explained.model, self.linear_layer)
        maps = []
        for part in layer_slices(explained, inputs, target, labels, layer, gradients=False, method="CAM"):
            channels = part.activation.shape[1]
            if linear.in_features != channels:
                raise ValueError(
                    f"CAM needs the classifier to read the pooled channels of {layer!r}: the layer has {channels} "
                    f"channels but {linear_name!r} expects {linear.in_features} inputs. Choose the layer just before "
                    f"global average pooling (valid names: {', '.join(layer_names(explained.model))}), or use gradcam."
                )
            weights = linear.weight.detach()[part.targets].to(part.activation.dtype)  # (b, K)
            cam = torch.einsum("bk,bkhw->bhw", weights, part.activation).float()
            maps.append(cam.clamp_min(0) if self.relu else cam)
        result = torch.cat(maps)
        if self.upsample:
            result = upsample_maps(result, spatial_size(inputs))
        return result, None
