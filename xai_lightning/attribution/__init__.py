"""Feature attribution methods: pure torch, batched, safe to run mid-training."""

from xai_lightning.attribution.grad_cam import GradCAM, GradCAMResult, grad_cam
from xai_lightning.attribution.registry import attribute, available_methods, get_method, method_class

__all__ = ["GradCAM", "GradCAMResult", "attribute", "available_methods", "get_method", "grad_cam", "method_class"]
# perturbation (model-agnostic) methods
from xai_lightning.attribution.kernel_shap import KernelShap
from xai_lightning.attribution.lime import Lime
from xai_lightning.attribution.prediction_difference import PredictionDifferenceAnalysis
from xai_lightning.attribution.rise import Rise
from xai_lightning.attribution.surrogate import SurrogateExplanation
from xai_lightning.attribution.xrai import RegionRanking, Xrai, rank_regions

__all__ = ["GradCAM", "GradCAMResult", "grad_cam"]
__all__ += ["KernelShap", "Lime", "PredictionDifferenceAnalysis", "RegionRanking", "Rise", "SurrogateExplanation",
            "Xrai", "rank_regions"]
