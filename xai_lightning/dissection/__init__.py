"""Network dissection (Bau et al. 2017): which units of a layer detect which visual concepts.

Pure torch, usable in a notebook: :func:`dissect` runs a model over a probe set with concept
masks and returns a :class:`DissectionResult` per layer; the pieces (exact and sketched
quantile thresholds, the IoU accumulator, top-activating images, concept labels, the Broden
on-disk format) are exported for direct use.
"""

from xai_lightning.dissection.broden import BrodenDataset, export_broden
from xai_lightning.dissection.concept_labels import ConceptLabels, check_mask_resolution
from xai_lightning.dissection.iou import ActivePixels, DissectionIoU
from xai_lightning.dissection.network_dissection import (
    LayerActivations,
    LayerDissection,
    check_spatial,
    dissect,
    dissect_batches,
    sketch_batches,
    sketch_keeps_activations,
    threshold_estimator,
)
from xai_lightning.dissection.quantile import TopQuantile, quantile_position, strict_thresholds, threshold_mask
from xai_lightning.dissection.quantile_sketch import QuantileSketch
from xai_lightning.dissection.results import DissectionResult
from xai_lightning.dissection.top_images import TopActivatingImages
from xai_lightning.dissection.unit_masks import unit_mask_pixels, upsample_activations
from xai_lightning.dissection.vocabulary import ConceptVocabulary, vocabulary_from_dataset

__all__ = [
    "ActivePixels",
    "BrodenDataset",
    "ConceptLabels",
    "ConceptVocabulary",
    "DissectionIoU",
    "DissectionResult",
    "LayerActivations",
    "LayerDissection",
    "QuantileSketch",
    "TopActivatingImages",
    "TopQuantile",
    "check_mask_resolution",
    "check_spatial",
    "dissect",
    "dissect_batches",
    "export_broden",
    "quantile_position",
    "sketch_batches",
    "sketch_keeps_activations",
    "threshold_estimator",
    "strict_thresholds",
    "threshold_mask",
    "unit_mask_pixels",
    "upsample_activations",
    "vocabulary_from_dataset",
]
