"""Feature attribution methods: pure torch, batched, safe to run mid-training.

``attribute(model, x, target, method=...)`` runs any method by name; ``available_methods()`` lists them.
"""

from xai_lightning.attribution.grad_cam_method import GradCAM, GradCAMResult, grad_cam
from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.attribution.registry import attribute, available_methods, get_method, method_class

# gradient-based methods
from xai_lightning.attribution.saliency import Saliency
from xai_lightning.attribution.input_x_gradient import InputXGradient
from xai_lightning.attribution.integrated_gradients import IntegratedGradients
from xai_lightning.attribution.smoothgrad import SmoothGrad
from xai_lightning.attribution.guided_backprop import GuidedBackprop
from xai_lightning.attribution.deconvnet import Deconvnet
from xai_lightning.attribution.cam import CAM
from xai_lightning.attribution.grad_cam_plus_plus import GradCAMPlusPlus
from xai_lightning.attribution.hires_cam import HiResCAM
from xai_lightning.attribution.score_cam import ScoreCAM
from xai_lightning.attribution.guided_grad_cam import GuidedGradCAM
from xai_lightning.attribution.deeplift import DeepLift
from xai_lightning.attribution.deep_shap import DeepShap
from xai_lightning.attribution.gradient_shap import GradientShap
from xai_lightning.attribution.occlusion import Occlusion
from xai_lightning.attribution.incremental_forward import IncrementalForward, trace_leading_chain

# perturbation (model-agnostic) methods
from xai_lightning.attribution.kernel_shap import KernelShap
from xai_lightning.attribution.lime import Lime
from xai_lightning.attribution.prediction_difference import PredictionDifferenceAnalysis
from xai_lightning.attribution.rise import Rise
from xai_lightning.attribution.surrogate import SurrogateExplanation
from xai_lightning.attribution.xrai import RegionRanking, Xrai, rank_regions

# transformers: attention maps; text: layer attribution, token occlusion, surrogates over tokens
from xai_lightning.attribution.attention_capture import AttentionCapture, AttentionNotFoundError, find_attention_layers
from xai_lightning.attribution.attention_map_methods import (
    AttentionMaps,
    AttentionRelevance,
    AttentionRollout,
    RawAttention,
    attention_maps,
)
from xai_lightning.attribution.chefer_relevance import attention_relevance
from xai_lightning.attribution.rollout import attention_rollout
from xai_lightning.attribution.layer_attribution import LayerGradientXActivation, LayerIntegratedGradients, token_scores
from xai_lightning.attribution.token_occlusion import TokenOcclusion, TokenOcclusionResult, word_attribution
from xai_lightning.attribution.token_surrogate import TokenKernelShap, TokenLime

__all__ = [
    "AttentionCapture",
    "AttentionMaps",
    "AttentionNotFoundError",
    "AttentionRelevance",
    "AttentionRollout",
    "AttributionMethod",
    "CAM",
    "Deconvnet",
    "DeepLift",
    "DeepShap",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradCAMResult",
    "GradientShap",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "IncrementalForward",
    "InputXGradient",
    "IntegratedGradients",
    "KernelShap",
    "LayerGradientXActivation",
    "LayerIntegratedGradients",
    "Lime",
    "Occlusion",
    "PredictionDifferenceAnalysis",
    "RawAttention",
    "RegionRanking",
    "Rise",
    "Saliency",
    "ScoreCAM",
    "SmoothGrad",
    "SurrogateExplanation",
    "TokenKernelShap",
    "TokenLime",
    "TokenOcclusion",
    "TokenOcclusionResult",
    "Xrai",
    "attention_maps",
    "attention_relevance",
    "attention_rollout",
    "attribute",
    "available_methods",
    "get_method",
    "grad_cam",
    "find_attention_layers",
    "method_class",
    "rank_regions",
    "token_scores",
    "trace_leading_chain",
    "word_attribution",
]
