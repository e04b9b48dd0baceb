"""Network dissection of one or more layers in a single streaming pass (Bau et al., CVPR 2017).

For every unit ``k`` of a layer, network dissection thresholds the unit's activation map at
``T_k`` — the top ``q = 0.005`` quantile of its activations over every pixel of the probe set —
upsamples the map bilinearly to the resolution of the concept masks, and scores the binary unit
mask ``M_k = upsample(A_k) >= T_k`` against every concept mask ``L_c`` by the dataset-wide

    IoU_{k,c} = Σ_x |M_k(x) ∩ L_c(x)| / Σ_x |M_k(x) ∪ L_c(x)|

over the images ``x`` labelled in ``c``'s category. A unit is *interpretable* when its best IoU
exceeds 0.04; its best concept's category (object, part, scene, texture, colour, material) is
what the unit detects.

NetDissect-Lite stores every activation (as float64, on disk) and makes two passes. Here one
forward pass suffices:

* ``method="exact"`` keeps the layer's raw activations (float32, at the layer's own resolution,
  ``N × K × h × w`` values: 33 MB for 2,000 images of a 64-unit 8×8 layer) and each unit's top
  ``q·n`` values (:class:`~xai_lightning.dissection.TopQuantile`, which is what processes
  exchange under DDP). Once the thresholds are exact, :meth:`LayerDissection.count` finds the
  unit masks' pixels, upsampling only the 2×2 source blocks that can reach their unit's threshold
  (:func:`~xai_lightning.dissection.unit_masks`), and counts intersections and unions in
  :class:`~xai_lightning.dissection.DissectionIoU` (``O(K × C)`` counts).
* ``method="sketch"`` makes two passes with a fixed-memory
  :class:`~xai_lightning.dissection.QuantileSketch` (thresholds within its stated error) and
  counts during the second pass: memory independent of the number of images, for probe sets
  whose activations do not fit. Its memory is never more than the exact method's: while the
  probe set's activations take no more than the sketch's buckets it keeps them and makes one
  pass like the exact method (:func:`sketch_keeps_activations`), and while each unit's top ``q·n``
  values take less than the buckets its first pass keeps those instead
  (:class:`~xai_lightning.dissection.TopQuantile`: exact thresholds, less memory).

Device: activations stay on the model's device, and so do the thresholds, counts and top-image
lists (moved to the CPU once, in :meth:`LayerDissection.compute`). On a CPU the forward passes run
on channels-last copies of the images (:class:`~xai_lightning.core.layout.ChannelsLastForward`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Literal, cast

import torch
from torch import nn

from xai_lightning.core import batch_slices
from xai_lightning.core.layer_activations import LayerActivations
from xai_lightning.core.progress import progress
from xai_lightning.dissection.concept_labels import ConceptLabels, check_mask_resolution
from xai_lightning.dissection.iou import ActivePixels, DissectionIoU
from xai_lightning.dissection.quantile import TopQuantile, strict_thresholds
from xai_lightning.dissection.quantile_sketch import QuantileSketch
from xai_lightning.dissection.results import DissectionResult
from xai_lightning.dissection.top_images import TopActivatingImages
from xai_lightning.dissection.unit_masks import unit_mask_pixels
from xai_lightning.dissection.vocabulary import ConceptVocabulary

__all__ = [
    "LayerActivations",
    "LayerDissection",
    "check_spatial",
    "dissect",
    "dissect_batches",
    "sketch_batches",
    "sketch_keeps_activations",
    "threshold_estimator",
]

ThresholdMethod = Literal["exact", "sketch"]


class LayerDissection:
    """Accumulates the dissection of one layer of ``K`` units over a probe set of ``N`` images.

    ``update(activations, image_ids)`` takes a batch; :meth:`compute` returns the
    :class:`DissectionResult`. Across processes, :meth:`threshold_state`, :meth:`merge_thresholds`
    and :meth:`count_state`/:meth:`load_count_state` are the pieces to reduce (see
    :class:`~xai_lightning.DissectionCallback`).

    Without ``thresholds`` (exact method) the batches' activations are kept, at the layer's
    resolution, until the thresholds are final; with them (second pass of the sketch method)
    every batch is counted at once and nothing is kept.

    Args:
        layer: the layer's name (for the result).
        num_units: ``K`` channels of the layer's output.
        feature_size: ``(h, w)`` of the layer's output.
        labels: concept labels of the whole probe set, row ``i`` for image id ``i``
            (masks ``(N, L, H, W)``; the unit masks are upsampled to ``H × W``).
        vocabulary: the ``C`` concepts.
        quantile, iou_threshold: network dissection's ``q`` (0.005) and IoU cut-off (0.04).
        top_count: top-activating images kept per unit.
        thresholds: ``(T (K,), minima (K,))`` known in advance (second pass of ``method="sketch"``);
            None: exact thresholds from the activations added.
        method: recorded in the result.
    """

    def __init__(
        self,
        layer: str,
        num_units: int,
        feature_size: tuple[int, int],
        labels: ConceptLabels,
        vocabulary: ConceptVocabulary,
        quantile: float = 0.005,
        iou_threshold: float = 0.04,
        top_count: int = 8,
        thresholds: tuple[torch.Tensor, torch.Tensor] | None = None,
        method: ThresholdMethod = "exact",
    ) -> None:
        self.layer = layer
        self.num_units = num_units
        self.feature_size = tuple(int(s) for s in feature_size)
        self.labels = labels
        self.num_images = len(labels)
        self.vocabulary = vocabulary
        self.quantile = quantile
        self.iou_threshold = iou_threshold
        self.method = method
        values = self.num_images * self.feature_size[0] * self.feature_size[1]
        self.quantiles = TopQuantile(num_units, values, quantile) if thresholds is None else None
        self.given = None if thresholds is None else (thresholds[0].float(), thresholds[1].float())
        self.iou = DissectionIoU(num_units, vocabulary)
        self.top = TopActivatingImages(num_units, top_count)
        self._kept: list[tuple[torch.Tensor, torch.Tensor]] = []  # (activations (B, K, h, w), image ids (B,))
        self._counted = False
        self._device: torch.device | None = None

    def _to_device(self, device: torch.device) -> None:
        """Keep every state where the activations are (once, at the first batch)."""
        self._device = device
        self.labels = self.labels.to(device)
        for metric in (self.quantiles, self.iou, self.top):
            if metric is not None:
                metric.to(device)
        if self.given is not None:
            self.given = (self.given[0].to(device), self.given[1].to(device))

    # ------------------------------------------------------------------ streaming
    def update(self, activations: torch.Tensor, image_ids: torch.Tensor) -> None:
        """Add a batch: ``activations (B, K, h, w)`` of the probe images ``image_ids (B,)``."""
        if activations.dim() != 4 or activations.shape[1] != self.num_units:
            raise ValueError(
                f"Layer {self.layer!r}: expected activations (B, {self.num_units}, h, w); "
                f"got {tuple(activations.shape)}"
            )
        if activations.shape[0] != image_ids.shape[0]:
            raise ValueError(f"{activations.shape[0]} activation maps for {image_ids.shape[0]} image ids")
        if self._counted:
            raise RuntimeError(f"Layer {self.layer!r} was already counted; start a new LayerDissection.")
        if self._device != activations.device:
            self._to_device(activations.device)
        image_ids = image_ids.to(activations.device).long()
        activations = activations.detach().float()
        self.top.update(activations, image_ids)
        self.iou.update(concept_pixels=self.labels.concept_pixels(self.vocabulary, image_ids))  # each image once
        if self.given is not None:
            self._count_batch(activations, image_ids, *self.given)  # thresholds known: nothing to keep
            return
        assert self.quantiles is not None
        self.quantiles.update(activations)
        self._kept.append((activations, image_ids))

    def _count_batch(
        self, activations: torch.Tensor, image_ids: torch.Tensor, thresholds: torch.Tensor, minima: torch.Tensor
    ) -> None:
        """Add the intersections and unions of one batch's unit masks at known thresholds."""
        images, units, y, x = unit_mask_pixels(
            activations, strict_thresholds(thresholds, minima), self.labels.resolution
        )
        self.iou.update(pixels=ActivePixels(self.labels, image_ids[images], units, y, x))

    @property
    def kept_bytes(self) -> int:
        """Memory held by the kept activations (exact method, before :meth:`count`)."""
        return sum(a.numel() * a.element_size() + i.numel() * i.element_size() for a, i in self._kept)

    # ------------------------------------------------------------------ reduction
    def threshold_state(self) -> dict[str, torch.Tensor]:
        """What the thresholds depend on: this process's kept top values, minima and count."""
        assert self.quantiles is not None
        return {
            "top": self.quantiles.top.clone(),
            "minimum": self.quantiles.minimum.clone(),
            "count": self.quantiles.count.clone(),
        }

    def merge_thresholds(self, top: torch.Tensor, minimum: torch.Tensor, count: torch.Tensor) -> None:
        """Install the thresholds state of *all* processes: ``top (W, K, m)`` gathered, ``minimum (K,)``
        reduced by min, ``count`` summed."""
        assert self.quantiles is not None
        device = self.quantiles.top.device
        self.quantiles.top = self.quantiles._merge_top(top.to(device))
        self.quantiles.minimum = minimum.to(device).clone()
        self.quantiles.count = count.to(device).clone()

    def thresholds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(T (K,), minima (K,))`` — the given ones, or the exact ones of everything seen."""
        if self.given is not None:
            return self.given
        assert self.quantiles is not None
        return self.quantiles.thresholds()

    def count(self) -> None:
        """Threshold the kept activations at the (now final) thresholds and count (exact method)."""
        if self.given is not None or self._counted:
            return
        thresholds, minima = self.thresholds()
        while self._kept:
            self._count_batch(*self._kept.pop(0), thresholds, minima)  # frees each batch once counted
        self._counted = True

    def count_state(self) -> dict[str, torch.Tensor]:
        """Counts that add up across processes (after :meth:`count`), and the top-image lists."""
        self.count()
        return {
            "intersection": self.iou.intersection.clone(),
            "unit_pixels": self.iou.unit_pixels.clone(),
            "unit_total": self.iou.unit_total.clone(),
            "concept_pixels": self.iou.concept_pixels.clone(),
            "top": self.top.best.clone(),
        }

    def load_count_state(self, state: dict[str, torch.Tensor]) -> None:
        """Install counts summed over processes, and top-image lists gathered ``(W, K, n, 2)``."""
        self.count()
        device = self.iou.intersection.device
        for name in ("intersection", "unit_pixels", "unit_total", "concept_pixels"):
            setattr(self.iou, name, state[name].to(device).clone())
        self.top.best = self.top._merge_gathered(state["top"].to(device))

    def compute(self) -> DissectionResult:
        """The layer's :class:`DissectionResult` over everything added (and merged)."""
        self.count()
        thresholds, minima = self.thresholds()
        counts = self.iou.scores()
        scores, images = self.top.ranked()
        return DissectionResult(
            layer=self.layer,
            vocabulary=self.vocabulary,
            iou=counts["iou"].cpu(),
            thresholds=thresholds.cpu(),
            unit_pixels=counts["unit_pixels"].cpu(),
            concept_pixels=counts["concept_pixels"].cpu(),
            top_images=images.cpu(),
            top_scores=scores.cpu(),
            iou_threshold=self.iou_threshold,
            quantile=self.quantile,
            method=self.method,
            num_images=self.num_images,
            minima=minima.cpu(),
        )


def check_spatial(layer: str, activation: torch.Tensor) -> None:
    """Network dissection needs a ``(B, K, h, w)`` map per unit with ``h·w > 1``; raise naming the layer otherwise."""
    if activation.dim() != 4:
        raise ValueError(
            f"Layer {layer!r} outputs shape {tuple(activation.shape)}, which has no spatial dimensions: network "
            "dissection needs a convolutional layer with (B, channels, height, width) output, whose units can be "
            "thresholded into masks. Choose a conv/ReLU layer before global pooling, or for a transformer fold its "
            f"tokens to the patch grid with a reshape ('{layer}@vit')."
        )
    if activation.shape[-2] * activation.shape[-1] <= 1:
        raise ValueError(
            f"Layer {layer!r} outputs shape {tuple(activation.shape)}: one position per unit (after global pooling), "
            "so every unit's mask would cover the whole image and its IoU would measure only how large a concept "
            "is. Choose a layer before the pooling, with a spatial map of more than 1x1."
        )


Batches = Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]]  # (layer outputs, probe image ids)


def sketch_keeps_activations(
    num_images: int, layer_shapes: Sequence[tuple[int, int, int]], relative_accuracy: float
) -> bool:
    """Whether the sketch method should keep the activations and make one pass, as the exact method
    does: when ``num_images`` images' activations of layers shaped ``(K, h, w)`` take no more memory
    than twice the layers' sketches would. The sketch method's memory is then no more than the exact
    method's at any probe size (and its thresholds exact while the activations are kept)."""
    kept = num_images * sum(k * h * w for k, h, w in layer_shapes) * 4
    sketches = sum(QuantileSketch.memory_bytes(k, relative_accuracy) for k, _, _ in layer_shapes)
    # Twice: a second pass costs about a batch of the allocator's memory besides the sketch (peak
    # resident memory, experiments/benchmarks/scaling.py), which kept activations up to twice the
    # sketches' size do not exceed.
    return kept <= 2 * sketches


def threshold_estimator(
    num_units: int, num_values: int | None, quantile: float, relative_accuracy: float
) -> TopQuantile | QuantileSketch:
    """The first-pass threshold estimator of the sketch method for ``num_values`` values per unit
    (over all processes; None: unknown): a :class:`QuantileSketch`, or — when each unit's top
    ``q·n`` values take less memory than the sketch's bucket counts — a :class:`TopQuantile`, exact
    and smaller. Either way the memory is at most the sketch's, and at most the exact method's."""
    # Sized without building both: a discarded torchmetrics Metric lingers in a reference cycle
    # until the next garbage collection.
    if num_values is not None and (
        TopQuantile.memory_bytes(num_units, num_values, quantile)
        <= QuantileSketch.memory_bytes(num_units, relative_accuracy)
    ):
        return TopQuantile(num_units, num_values, quantile)
    return QuantileSketch(num_units, quantile, relative_accuracy=relative_accuracy)


def sketch_batches(
    batches: Batches,
    layers: Sequence[str],
    quantile: float,
    relative_accuracy: float,
    num_images: int | None = None,
) -> dict[str, TopQuantile | QuantileSketch]:
    """First pass of the sketch method: a threshold estimator per layer over every batch
    (:func:`threshold_estimator`; ``num_images``: the probe images of all processes, if known).
    Each has ``thresholds()`` and ``merge_processes(gather)``."""
    sketches: dict[str, TopQuantile | QuantileSketch] = {}
    for outputs, _ in batches:
        for name in layers:
            activation = outputs[name]
            check_spatial(name, activation)
            if name not in sketches:
                values = None if num_images is None else num_images * activation.shape[2] * activation.shape[3]
                sketches[name] = threshold_estimator(activation.shape[1], values, quantile, relative_accuracy)
            sketches[name].update(activation)
    return sketches


def dissect_batches(
    batches: Batches,
    layers: Sequence[str],
    labels: ConceptLabels,
    vocabulary: ConceptVocabulary,
    quantile: float,
    iou_threshold: float,
    top_count: int,
    thresholds: dict[str, tuple[torch.Tensor, torch.Tensor]],
    method: ThresholdMethod,
) -> dict[str, LayerDissection]:
    """A :class:`LayerDissection` per layer, updated with every batch; ``thresholds`` per layer are
    the sketch's (empty for exact thresholds)."""
    dissections: dict[str, LayerDissection] = {}
    for outputs, ids in batches:
        for name in layers:
            activation = outputs[name]
            check_spatial(name, activation)
            if name not in dissections:
                dissections[name] = LayerDissection(
                    name,
                    activation.shape[1],
                    (activation.shape[-2], activation.shape[-1]),
                    labels,
                    vocabulary,
                    quantile,
                    iou_threshold,
                    top_count,
                    thresholds=thresholds.get(name),
                    method=method,
                )
            dissections[name].update(activation, ids)
    return dissections


def dissect(
    model: nn.Module,
    layers: str | Sequence[str],
    images: torch.Tensor,
    labels: ConceptLabels | torch.Tensor,
    vocabulary: ConceptVocabulary,
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    method: ThresholdMethod = "exact",
    max_batch: int | None = 128,
    top_count: int = 8,
    sketch_accuracy: float = 0.005,
) -> dict[str, DissectionResult]:
    """Network dissection (Bau et al. 2017) of ``layers`` of ``model`` on a probe set.

    Args:
        model: in the mode it should be dissected in (usually ``eval()``).
        layers: dotted module names with ``(B, K, h, w)`` outputs.
        images: ``(N, C, H, W)``.
        labels: :class:`ConceptLabels` of the ``N`` images, or dense masks ``(N, C, H', W')`` bool
            in vocabulary order; ``H' = H`` or smaller by one integer factor.
        vocabulary: the ``C`` concepts and their categories.
        quantile, iou_threshold: 0.005 and 0.04 as in the paper.
        method: ``"exact"`` (one pass; keeps the layers' activations, ``N × K × h × w`` float32) or
            ``"sketch"`` (two passes; memory independent of ``N``; thresholds within the sketch's
            error).
        max_batch: images per forward pass.
        top_count: top-activating images kept per unit.
        sketch_accuracy: relative accuracy of the sketch.

    Returns:
        ``{layer: DissectionResult}``.
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    if not isinstance(labels, ConceptLabels):
        check_mask_resolution(images.shape, labels.shape)
        labels = ConceptLabels.from_masks(labels, vocabulary)
    else:
        check_mask_resolution(images.shape, labels.layers.shape)
    if len(labels) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but concept labels for {len(labels)}")
    device = next(model.parameters(), torch.zeros(0)).device
    forward = LayerActivations(model, names)
    slices = list(batch_slices(images.shape[0], max_batch))

    def batches(start: int = 0) -> Batches:
        for rows in progress(slices[start:], "dissecting"):
            yield forward(images[rows].to(device)), torch.arange(rows.start, rows.stop)

    if method not in ("exact", "sketch"):
        raise ValueError(f"method must be 'exact' or 'sketch'; got {method!r}")
    given = {}
    first = list(itertools.islice(batches(), 1))  # its shapes decide; it is not forwarded twice
    # (K, h, w) per layer: check_spatial rejects any other rank when the layers are dissected.
    shapes = (
        [cast(tuple[int, int, int], tuple(activation.shape[1:])) for activation in first[0][0].values()]
        if first
        else []
    )
    if method == "sketch" and not sketch_keeps_activations(images.shape[0], shapes, sketch_accuracy):
        sketches = sketch_batches(
            itertools.chain(first, batches(1)), forward.layers, quantile, sketch_accuracy, num_images=images.shape[0]
        )
        given = {name: sketch.thresholds() for name, sketch in sketches.items()}
        first = []
    passes = itertools.chain(first, batches(len(first)))
    dissections = dissect_batches(
        passes, forward.layers, labels, vocabulary, quantile, iou_threshold, top_count, given, method
    )
    return {name: dissection.compute() for name, dissection in dissections.items()}
