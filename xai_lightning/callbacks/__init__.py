"""Lightning callbacks: thin schedulers over the algorithms, logging through the sinks."""

from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.callbacks.explainer_network import ExplainerNetworkCallback
from xai_lightning.callbacks.grad_cam import GradCAMCallback
from xai_lightning.callbacks.probe import ProbeSet, draw_probe, find_probe_dataset

__all__ = ["ExplainerNetworkCallback", "GradCAMCallback", "ObserverCallback", "ProbeSet", "draw_probe", "find_probe_dataset"]
