"""Lightning callbacks: thin schedulers over the algorithms, logging through the sinks."""

from xai_lightning.callbacks.attribution import AttributionCallback
from xai_lightning.callbacks.adversarial_training import AdversarialTrainingCallback
from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.callbacks.cace import CaCECallback
from xai_lightning.callbacks.dissection import DissectionCallback
from xai_lightning.callbacks.explainer_network import ExplainerNetworkCallback
from xai_lightning.callbacks.grad_cam import GradCAMCallback
from xai_lightning.callbacks.tcav import TCAVCallback
from xai_lightning.callbacks.probe import ProbeSet, draw_probe, find_probe_dataset
from xai_lightning.callbacks.robustness import RobustnessCallback

__all__ = [
    "AdversarialTrainingCallback",
    "AttributionCallback",
    "CaCECallback",
    "DissectionCallback",
    "ExplainerNetworkCallback",
    "GradCAMCallback",
    "ObserverCallback",
    "ProbeSet",
    "RobustnessCallback",
    "TCAVCallback",
    "draw_probe",
    "find_probe_dataset",
]
