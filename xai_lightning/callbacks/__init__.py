"""Lightning callbacks: thin schedulers over the algorithms, logging through the sinks.

Lazy (PEP 562): each callback's module, and the algorithms behind it, load on first use, so
``from xai_lightning.callbacks import GradCAMCallback`` does not import TCAV or dissection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xai_lightning.lazy_exports import lazy_exports

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "AdversarialTrainingCallback": "xai_lightning.callbacks.adversarial_training",
    "AttributionCallback": "xai_lightning.callbacks.attribution",
    "DissectionCallback": "xai_lightning.callbacks.dissection",
    "EpochMetrics": "xai_lightning.callbacks.epoch_metrics",
    "ExplainerNetworkCallback": "xai_lightning.callbacks.explainer_network",
    "GradCAMCallback": "xai_lightning.callbacks.grad_cam",
    "ObserverCallback": "xai_lightning.callbacks.base",
    "ProbeSet": "xai_lightning.callbacks.probe",
    "RobustnessCallback": "xai_lightning.callbacks.robustness",
    "TCAVCallback": "xai_lightning.callbacks.tcav",
    "draw_probe": "xai_lightning.callbacks.probe",
    "find_probe_dataset": "xai_lightning.callbacks.probe",
    "AttentionCallback": "xai_lightning.callbacks.attention",
    "TextAttributionCallback": "xai_lightning.callbacks.text_attribution",
    "ExplanationQualityCallback": "xai_lightning.callbacks.explanation_quality",
    "SanityCheckCallback": "xai_lightning.callbacks.sanity_check",
    "UncertaintyCallback": "xai_lightning.callbacks.uncertainty",
    "EmbeddingCallback": "xai_lightning.callbacks.embedding",
    "FrequencyCallback": "xai_lightning.callbacks.frequency",
    "InformationPlaneCallback": "xai_lightning.callbacks.information_plane",
    "MarginCallback": "xai_lightning.callbacks.margin",
    "CaCECallback": "xai_lightning.callbacks.cace",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from xai_lightning.callbacks.adversarial_training import AdversarialTrainingCallback
    from xai_lightning.callbacks.attention import AttentionCallback
    from xai_lightning.callbacks.attribution import AttributionCallback
    from xai_lightning.callbacks.base import ObserverCallback
    from xai_lightning.callbacks.cace import CaCECallback
    from xai_lightning.callbacks.dissection import DissectionCallback
    from xai_lightning.callbacks.embedding import EmbeddingCallback
    from xai_lightning.callbacks.epoch_metrics import EpochMetrics
    from xai_lightning.callbacks.explainer_network import ExplainerNetworkCallback
    from xai_lightning.callbacks.explanation_quality import ExplanationQualityCallback
    from xai_lightning.callbacks.frequency import FrequencyCallback
    from xai_lightning.callbacks.grad_cam import GradCAMCallback
    from xai_lightning.callbacks.information_plane import InformationPlaneCallback
    from xai_lightning.callbacks.margin import MarginCallback
    from xai_lightning.callbacks.probe import ProbeSet, draw_probe, find_probe_dataset
    from xai_lightning.callbacks.robustness import RobustnessCallback
    from xai_lightning.callbacks.sanity_check import SanityCheckCallback
    from xai_lightning.callbacks.tcav import TCAVCallback
    from xai_lightning.callbacks.text_attribution import TextAttributionCallback
    from xai_lightning.callbacks.uncertainty import UncertaintyCallback
