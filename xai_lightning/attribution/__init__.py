"""Feature attribution methods: pure torch, batched, safe to run mid-training."""

from xai_lightning.attribution.grad_cam import GradCAM, GradCAMResult, grad_cam
from xai_lightning.attribution.registry import attribute, available_methods, get_method, method_class

__all__ = ["GradCAM", "GradCAMResult", "attribute", "available_methods", "get_method", "grad_cam", "method_class"]
