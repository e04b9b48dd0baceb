"""Feature attribution methods: pure torch, batched, safe to run mid-training."""

from xai_lightning.attribution.grad_cam import GradCAM, GradCAMResult, grad_cam

__all__ = ["GradCAM", "GradCAMResult", "grad_cam"]
