"""One entry point for every attribution method: ``attribute(model, x, target, method=..., **options)``.

``available_methods()`` lists the method names; ``method_class(name)`` returns the class and
``get_method(name, **options)`` a configured instance. Unknown names and options fail with the
list of valid ones.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

import torch
from torch import nn

from xai_lightning.attribution.attention_map_methods import AttentionRelevance, AttentionRollout, RawAttention
from xai_lightning.attribution.cam import CAM
from xai_lightning.attribution.deconvnet import Deconvnet
from xai_lightning.attribution.deep_shap import DeepShap
from xai_lightning.attribution.deeplift import DeepLift
from xai_lightning.attribution.grad_cam_method import GradCAM
from xai_lightning.attribution.grad_cam_plus_plus import GradCAMPlusPlus
from xai_lightning.attribution.gradient_shap import GradientShap
from xai_lightning.attribution.guided_backprop import GuidedBackprop
from xai_lightning.attribution.guided_grad_cam import GuidedGradCAM
from xai_lightning.attribution.hires_cam import HiResCAM
from xai_lightning.attribution.input_x_gradient import InputXGradient
from xai_lightning.attribution.integrated_gradients import IntegratedGradients

# --- perturbation (model-agnostic) methods: issue 3, perturbation share -------------------------
from xai_lightning.attribution.kernel_shap import KernelShap
from xai_lightning.attribution.layer_attribution import LayerGradientXActivation, LayerIntegratedGradients
from xai_lightning.attribution.lime import Lime
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.attribution.occlusion import Occlusion
from xai_lightning.attribution.prediction_difference import PredictionDifferenceAnalysis
from xai_lightning.attribution.rise import Rise
from xai_lightning.attribution.saliency import Saliency
from xai_lightning.attribution.score_cam import ScoreCAM
from xai_lightning.attribution.smoothgrad import SmoothGrad
from xai_lightning.attribution.token_occlusion import TokenOcclusion
from xai_lightning.attribution.token_surrogate import TokenKernelShap, TokenLime
from xai_lightning.attribution.xrai import Xrai
from xai_lightning.core import TargetSpec

_PERTURBATION_METHODS: tuple[type[AttributionMethod], ...] = (
    PredictionDifferenceAnalysis,
    Rise,
    Lime,
    KernelShap,
    Xrai,
)
_PERTURBATION_ALIASES: dict[str, str] = {
    "pda": "prediction_difference",
    "prediction_difference_analysis": "prediction_difference",
    "kernelshap": "kernel_shap",
    "shap": "kernel_shap",
}
# -------------------------------------------------------------------------------------------------

# --- transformers and text: issue 20 --------------------------------------------------------------

_TRANSFORMER_AND_TEXT_METHODS: tuple[type[AttributionMethod], ...] = (
    AttentionRollout,
    AttentionRelevance,
    RawAttention,
    LayerIntegratedGradients,
    LayerGradientXActivation,
    TokenOcclusion,
    TokenLime,
    TokenKernelShap,
)
_TRANSFORMER_AND_TEXT_ALIASES: dict[str, str] = {
    "rollout": "attention_rollout",
    "chefer": "attention_relevance",
    "transformer_attribution": "attention_relevance",
    "attention": "raw_attention",
    "layer_ig": "layer_integrated_gradients",
    "embedding_ig": "layer_integrated_gradients",
    "layer_gradient_x_input": "layer_gradient_x_activation",
    "embedding_gradient_x_input": "layer_gradient_x_activation",
    "text_occlusion": "token_occlusion",
    "lime_tokens": "token_lime",
    "kernel_shap_tokens": "token_kernel_shap",
}
# -------------------------------------------------------------------------------------------------

__all__ = ["attribute", "available_methods", "get_method", "method_class"]

_METHODS: dict[str, type[AttributionMethod]] = {
    cls.name: cls
    for cls in (
        Saliency,
        InputXGradient,
        IntegratedGradients,
        SmoothGrad,
        GuidedBackprop,
        Deconvnet,
        CAM,
        GradCAM,
        GradCAMPlusPlus,
        HiResCAM,
        ScoreCAM,
        GuidedGradCAM,
        DeepLift,
        DeepShap,
        GradientShap,
        Occlusion,
    )
}
_METHODS.update({cls.name: cls for cls in _PERTURBATION_METHODS})
_METHODS.update({cls.name: cls for cls in _TRANSFORMER_AND_TEXT_METHODS})

#: Other spellings users reach for (Captum's class names, the papers' names).
_ALIASES: dict[str, str] = {
    "ig": "integrated_gradients",
    "inputxgradient": "input_x_gradient",
    "deconvolution": "deconvnet",
    "grad_cam": "gradcam",
    "layer_gradcam": "gradcam",
    "gradcampp": "gradcam_plus_plus",
    "grad_cam_plus_plus": "gradcam_plus_plus",
    "gradcam++": "gradcam_plus_plus",
    "hires_cam": "hirescam",
    "scorecam": "score_cam",
    "guided_grad_cam": "guided_gradcam",
    "deep_lift": "deeplift",
    "deepshap": "deep_shap",
    "deep_lift_shap": "deep_shap",
    "deepliftshap": "deep_shap",
    "gradientshap": "gradient_shap",
    "expected_gradients": "gradient_shap",
}
_ALIASES.update(_PERTURBATION_ALIASES)
_ALIASES.update(_TRANSFORMER_AND_TEXT_ALIASES)


#: Families of methods. ``"general"`` methods explain any image (or table) model; the others need
#: a particular model or input: attention maps a vision transformer, layer attributions a layer,
#: text methods token ids.
MethodFamily = Literal["general", "layer", "transformer", "text", "all"]
_FAMILIES: dict[str, tuple[str, ...]] = {
    "transformer": (AttentionRollout.name, AttentionRelevance.name, RawAttention.name),
    "layer": (LayerIntegratedGradients.name, LayerGradientXActivation.name),
    "text": (TokenOcclusion.name, TokenLime.name, TokenKernelShap.name),
}


def available_methods(family: MethodFamily = "general") -> list[str]:
    """Names of the attribution methods of a family, in the order of the README table.

    ``"general"`` (default): the methods for any image or table model; ``"transformer"``: attention
    maps of ViTs; ``"layer"``: attributions to a layer's tensor (embedding IG for text);
    ``"text"``: token occlusion and LIME/KernelSHAP over tokens; ``"all"``: every method.
    """
    if family == "all":
        return list(_METHODS)
    if family == "general":
        special = {name for names in _FAMILIES.values() for name in names}
        return [name for name in _METHODS if name not in special]
    if family not in _FAMILIES:
        raise ValueError(f"Unknown method family {family!r}; use 'general', 'layer', 'transformer', 'text' or 'all'.")
    return list(_FAMILIES[family])


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    return _ALIASES.get(key, _ALIASES.get(key.replace("_", ""), key))


def method_class(name: str) -> type[AttributionMethod]:
    """The class behind a method name (aliases such as ``"deconvolution"`` accepted).

    Raises:
        ValueError: for an unknown name; the message lists every available method.
    """
    if not isinstance(name, str):
        raise TypeError(f"A method is named by a string; got {type(name).__name__}")
    key = _canonical(name)
    if key not in _METHODS:
        close = difflib.get_close_matches(key, list(_METHODS), n=2, cutoff=0.6)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"Unknown attribution method {name!r}.{hint} Available methods: {', '.join(_METHODS)}.")
    return _METHODS[key]


def get_method(name: str, **options: Any) -> AttributionMethod:
    """A configured method instance; unknown options fail with the method's valid option names."""
    cls = method_class(name)
    valid = cls.option_names()
    unknown = [option for option in options if option not in valid]
    if unknown:
        raise TypeError(
            f"{cls.name} has no option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(valid)}."
        )
    return cls(**options)


def attribute(
    model: nn.Module,
    inputs: torch.Tensor,
    target: TargetSpec = "predicted",
    method: str = "integrated_gradients",
    *,
    labels: torch.Tensor | None = None,
    trainer: Any | None = None,
    return_convergence_delta: bool = False,
    **options: Any,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attributions of ``model`` on ``inputs`` by the named ``method``, configured by ``options``.

    Example::

        maps = attribute(model, images, target="predicted", method="integrated_gradients", steps=32)

    See :func:`available_methods` for the names and each method's class for its options and
    output shape.
    """
    return get_method(method, **options).attribute(
        model, inputs, target, labels=labels, trainer=trainer, return_convergence_delta=return_convergence_delta
    )
