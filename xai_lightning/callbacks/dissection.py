"""DissectionCallback: network dissection (Bau et al. 2017) of chosen layers, every few epochs."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.callbacks.probe import ProbeSet, ProbeSplit, find_probe_dataset
from xai_lightning.core import observe, resolve_layers
from xai_lightning.core.progress import progress
from xai_lightning.dissection import (
    ConceptLabels,
    ConceptVocabulary,
    DissectionResult,
    LayerActivations,
    LayerDissection,
    check_spatial,
    dissect_batches,
    sketch_batches,
    sketch_keeps_activations,
    upsample_activations,
    vocabulary_from_dataset,
)
from xai_lightning.dissection.vocabulary import NON_CONCEPT_CATEGORIES, _unwrap_dataset, check_names_match_masks
from xai_lightning.logging import display_images, labelled_grid, to_uint8_hwc

__all__ = ["DissectionCallback"]

OUTLINE_RGB = (1.0, 0.9, 0.0)


def outline_masks(images: torch.Tensor, masks: torch.Tensor, dim: float = 0.35) -> torch.Tensor:
    """NetDissect-style unit views: ``images (B, C, H, W)``, ``masks (B, H, W)`` bool → ``(B, H, W, 3)``
    in [0, 1] with the image dimmed outside the mask and the mask's boundary drawn in yellow."""
    shown = display_images(images)
    masks = masks.bool().cpu()
    padded = torch.nn.functional.pad(masks.float().unsqueeze(1), (1, 1, 1, 1)).squeeze(1).bool()
    interior = padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    boundary = masks & ~interior
    out = torch.where(masks.unsqueeze(-1), shown, shown * dim)
    return torch.where(boundary.unsqueeze(-1), torch.tensor(OUTLINE_RGB), out)


class DissectionCallback(ObserverCallback):
    """Network dissection (Bau et al., CVPR 2017) of a fixed probe set, every ``every_n_epochs`` epochs.

    Each unit ``k`` of each layer is thresholded at the top ``quantile`` of its activations over
    every pixel of the probe set, its bilinearly upsampled mask is scored by IoU against every
    concept mask of the data (counting only images labelled in the concept's category), and the
    unit is *interpretable* when its best IoU exceeds ``iou_threshold``. The probe data must carry
    concept masks: ConceptWorld (object, texture, colour, scene, part) or a Broden-format
    directory through :class:`~xai_lightning.dissection.BrodenDataset`. One forward pass per
    observation (see :mod:`xai_lightning.dissection.network_dissection`); inside the observer
    guard, so training is bit-identical with and without it.

    Logged, per dissected ``<layer>`` (categories are the data's, e.g. ``object``, ``texture``,
    ``colour``, ``scene``, ``part``; every category is logged, 0 when no unit detects it):

    ====================================================  ==========================================
    ``dissection/<layer>/interpretable``                   interpretable units (count)
    ``dissection/<layer>/interpretable_fraction``          … as a fraction of the layer's units
    ``dissection/<layer>/interpretable/<category>``        interpretable units whose best concept is
                                                           in the category (count)
    ``dissection/<layer>/interpretable_fraction/<category>``  … as a fraction of the layer's units
    ``dissection/<layer>/unique_concepts``                 distinct concepts detected by some
                                                           interpretable unit (also ``/<category>``)
    ``dissection/<layer>/mean_best_iou``                   mean over units of the best IoU
    ``dissection/<layer>/empty_concepts``                  concepts without a pixel in the probe set
                                                           (IoU 0, never a best concept; warned)
    ``dissection/<layer>/units`` (table)                   one row per unit: unit, concept, category,
                                                           iou, interpretable, threshold
    ``dissection/<layer>/top_units`` (image)               the ``top_units`` units of highest IoU, each
                                                           with its ``top_images`` most activating
                                                           probe images, the thresholded mask outlined
    ====================================================  ==========================================

    Thresholds: ``threshold_method="exact"`` keeps the dissected layers' activations of the probe
    set (``num_probe × Σ K·h·w`` float32) for one forward pass and exact thresholds;
    ``"sketch"`` makes two forward passes with a fixed-memory quantile sketch (thresholds within
    ``sketch_accuracy`` relative error; memory independent of ``num_probe``); ``"auto"`` (default)
    is exact when the kept activations of a process fit in ``max_kept_mib``, and sketch otherwise.

    Under DDP each rank dissects its shard; the thresholds' top values (exact) or the sketches'
    bucket counts (sketch) are reduced across ranks and the IoU counts summed (no per-image
    activations travel), so 2 processes give the same IoUs as 1.

    Args:
        layers: a dotted module name, a list of them, or ``"auto"`` (the last spatial layer).
            Checked at ``setup``: unknown names list the valid ones, a layer without a
            ``(B, K, h, w)`` output is rejected by name.
        num_probe: probe images (500 by default; drawn once, seeded).
        quantile: top quantile of each unit's activations that forms its mask (0.005).
        iou_threshold: a unit is interpretable when its best IoU exceeds this (0.04).
        every_n_epochs: how often to dissect.
        top_units: units shown in the ``top_units`` image per layer.
        top_images: top-activating images shown per unit.
        max_batch: images per forward pass.
        threshold_method: ``"auto"``, ``"exact"`` or ``"sketch"`` (see above).
        max_kept_mib: the memory (MiB per process) up to which ``"auto"`` keeps activations for exact
            thresholds.
        sketch_accuracy: relative accuracy ``α`` of the quantile sketch (see
            :class:`~xai_lightning.dissection.QuantileSketch`).
        exclude_categories: mask categories that are not concepts (ConceptWorld's ``region``).
        probe_split, probe_seed, on_error: see :class:`~xai_lightning.callbacks.ObserverCallback`.

    Example::

        trainer = Trainer(callbacks=[DissectionCallback(layers=["network.features.13"])],
                          logger=WandbLogger(offline=True))
    """

    namespace = "dissection"

    def __init__(
        self,
        layers: str | list[str] = "auto",
        num_probe: int = 500,
        quantile: float = 0.005,
        iou_threshold: float = 0.04,
        every_n_epochs: int = 1,
        top_units: int = 4,
        top_images: int = 4,
        max_batch: int = 128,
        threshold_method: Literal["auto", "exact", "sketch"] = "auto",
        max_kept_mib: float = 512.0,
        sketch_accuracy: float = 0.005,
        exclude_categories: list[str] | None = None,
        probe_split: ProbeSplit = "val",
        probe_seed: int = 0,
        on_error: Literal["warn", "raise"] = "warn",
    ) -> None:
        super().__init__(
            num_probe=num_probe,
            every_n_epochs=every_n_epochs,
            probe_split=probe_split,
            probe_seed=probe_seed,
            on_error=on_error,
        )
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1); got {quantile}")
        if not 0.0 <= iou_threshold < 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1); got {iou_threshold}")
        for name, value in (("top_units", top_units), ("top_images", top_images), ("max_batch", max_batch)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}")
        if threshold_method not in ("auto", "exact", "sketch"):
            raise ValueError(f"threshold_method must be 'auto', 'exact' or 'sketch'; got {threshold_method!r}")
        if max_kept_mib < 0:
            raise ValueError(f"max_kept_mib must be >= 0; got {max_kept_mib}")
        if not 0.0 < sketch_accuracy < 1.0:
            raise ValueError(f"sketch_accuracy must be in (0, 1); got {sketch_accuracy}")
        self.layers = layers
        self.threshold_method = threshold_method
        self.max_kept_mib = max_kept_mib
        self.sketch_accuracy = sketch_accuracy
        self.quantile = quantile
        self.iou_threshold = iou_threshold
        self.top_units = top_units
        self.top_images = top_images
        self.max_batch = max_batch
        self.exclude_categories = tuple(NON_CONCEPT_CATEGORIES if exclude_categories is None else exclude_categories)
        self.layer_names: list[str] = []
        self.vocabulary: ConceptVocabulary | None = None
        self.results: dict[str, DissectionResult] = {}
        self._labels: ConceptLabels | None = None
        self._local: dict[str, LayerDissection] = {}
        self._values_per_image = 0  # Σ K·h·w over the dissected layers (found at setup)
        self._layer_shapes: list[tuple[int, int, int]] = []  # (K, h, w) of each dissected layer

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            namespace=self.namespace, layers=self.layers, num_probe=self.num_probe, probe_seed=self.probe_seed
        )

    # ------------------------------------------------------------------ setup
    def _vocabulary(self, trainer: pl.Trainer, probe: ProbeSet) -> tuple[ConceptVocabulary, torch.Tensor]:
        num_masks = None if probe.masks is None else int(probe.masks.shape[1])
        source = find_probe_dataset(trainer, self.probe_split) if self._given_probe is None else None
        dataset = getattr(source, "dataset", source)
        if source is not None and hasattr(dataset, "__len__") and hasattr(_unwrap_dataset(dataset), "concept_names"):
            # A dataset that names its concepts: its names must match the masks (else a clear error).
            return vocabulary_from_dataset(dataset, self.exclude_categories, num_masks=num_masks)
        if probe.concept_names is None:
            raise ValueError(
                "DissectionCallback needs the names and categories of the concept masks: use a dataset with "
                "`concept_names` and `concept_categories` (ConceptWorld, BrodenDataset)."
            )
        check_names_match_masks(len(probe.concept_names), num_masks, "The probe data")
        full = ConceptVocabulary.from_names(probe.concept_names)
        keep = [i for i, c in enumerate(full.categories) if c not in self.exclude_categories]
        return ConceptVocabulary(
            tuple(full.names[i] for i in keep), tuple(full.categories[i] for i in keep)
        ), torch.tensor(keep, dtype=torch.long)

    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> None:
        if probe.images.dim() != 4:
            raise ValueError(
                f"DissectionCallback dissects images (N, C, H, W); the probe is {tuple(probe.images.shape)}"
            )
        if probe.masks is None:
            raise ValueError(
                "DissectionCallback needs per-concept pixel masks, but the probe data has none. Use data whose items "
                "carry `masks (K, H, W)` — ConceptWorldDataModule, or BrodenDataset for a Broden-format directory."
            )
        vocabulary, channels = self._vocabulary(trainer, probe)
        if int(channels.max()) >= probe.masks.shape[1]:
            raise ValueError(
                f"The dataset names {int(channels.max()) + 1}+ concept masks but its items carry "
                f"{probe.masks.shape[1]} (masks of shape {tuple(probe.masks.shape)}): `concept_names` and `masks` "
                "must agree."
            )
        self.vocabulary = vocabulary
        self._labels = ConceptLabels.from_masks(probe.masks[:, channels], vocabulary)
        empty = [name for name, n in zip(vocabulary.names, self._labels.concept_pixels(vocabulary).tolist()) if n == 0]
        if empty:
            rank_zero_warn(
                f"DissectionCallback: concepts {empty} have no pixel in the {len(probe)} probe images; their IoU is "
                "reported as 0 and they are never a unit's best concept. Draw more probe images (num_probe) to "
                "dissect against them."
            )
        one = probe.images[:1].to(pl_module.device)
        self.layer_names = resolve_layers(pl_module, self.layers, forward=lambda: pl_module(one))
        outputs = LayerActivations(pl_module, self.layer_names)(one)
        for name in self.layer_names:
            check_spatial(name, outputs[name])
        self._values_per_image = sum(outputs[name][0].numel() for name in self.layer_names)
        # check_spatial passed: every output is (B, K, h, w).
        shapes = [outputs[name].shape for name in self.layer_names]
        self._layer_shapes = [(shape[1], shape[2], shape[3]) for shape in shapes]

    def method_for(self, num_images: int) -> Literal["exact", "sketch"]:
        """The threshold method used for ``num_images`` probe images on one process."""
        if self.threshold_method != "auto":
            return self.threshold_method
        kept_mib = num_images * self._values_per_image * 4 / 2**20
        return "exact" if kept_mib <= self.max_kept_mib else "sketch"

    # ------------------------------------------------------------------ one observation
    def explain(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> dict[str, torch.Tensor]:
        assert self.probe is not None and self._labels is not None and self.vocabulary is not None
        rank, world = trainer.global_rank, trainer.world_size
        rows = self.probe.shard_rows(rank, world)
        # Shards are padded to equal length by repeating images; those must not be counted twice.
        real = torch.arange(rank, rank + world * len(rows), world)[: len(rows)] < len(self.probe)
        ids = rows[real]
        images = probe.images[real.to(probe.images.device)]
        if self._labels.layers.device != images.device:
            self._labels = self._labels.to(images.device)  # once: counts accumulate on the device
        forward = LayerActivations(pl_module, self.layer_names)

        def batches():
            for start in progress(range(0, len(ids), self.max_batch), f"dissection, epoch {trainer.current_epoch}"):
                yield forward(images[start : start + self.max_batch]), ids[start : start + self.max_batch]

        # Every rank takes the same branch: the method depends on the (padded, equal) shard size.
        method = self.method_for(len(rows))
        given = {}
        if method == "sketch" and not sketch_keeps_activations(len(rows), self._layer_shapes, self.sketch_accuracy):
            sketches = sketch_batches(
                batches(), self.layer_names, self.quantile, self.sketch_accuracy, num_images=len(self.probe)
            )
            for sketch in sketches.values():  # the state of every rank: counts add up, top values merge
                sketch.merge_processes(lambda tensor: self._all_gather(trainer, tensor))
            given = {name: sketch.thresholds() for name, sketch in sketches.items()}
        self._local = dissect_batches(
            batches(),
            self.layer_names,
            self._labels,
            self.vocabulary,
            self.quantile,
            self.iou_threshold,
            self.top_images,
            given,
            method,
        )
        return {}

    @staticmethod
    def _all_gather(trainer: pl.Trainer, tensor: torch.Tensor) -> torch.Tensor:
        """``(world, *tensor.shape)`` on the CPU; ``(1, …)`` without DDP."""
        if trainer.world_size == 1:
            return tensor.unsqueeze(0)
        return trainer.strategy.all_gather(tensor.to(trainer.strategy.root_device)).cpu()

    def gather(self, trainer: pl.Trainer, local: dict[str, torch.Tensor], total: int) -> dict[str, torch.Tensor]:
        """Reduce counts, not activations: all-gather each unit's kept top values (``q·n`` per unit) to
        fix the global thresholds, then sum the ``O(K × C)`` intersection/union counts."""
        if trainer.world_size > 1:
            for name in self.layer_names:
                dissection = self._local[name]
                if dissection.given is None:  # exact thresholds: merge the ranks' top values
                    state = dissection.threshold_state()
                    dissection.merge_thresholds(
                        self._all_gather(trainer, state["top"]),
                        self._all_gather(trainer, state["minimum"]).amin(0),
                        self._all_gather(trainer, state["count"]).sum(0),
                    )
                counts = dissection.count_state()
                summed = {key: self._all_gather(trainer, value).sum(0) for key, value in counts.items() if key != "top"}
                summed["top"] = self._all_gather(trainer, counts["top"])
                dissection.load_count_state(summed)
        self.results = {name: self._local[name].compute() for name in self.layer_names}
        self._local = {}
        return {}

    def report(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet, results: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        scalars: dict[str, float] = {}
        for name, result in self.results.items():
            prefix = f"{self.namespace}/{name}"
            scalars.update({f"{prefix}/{key}": value for key, value in result.summary().items()})
            scalars[f"{prefix}/empty_concepts"] = float(len(result.empty_concepts))
            if trainer.is_global_zero:
                columns, rows = result.table()
                self.sinks.table(f"{prefix}/units", columns, rows, trainer.global_step)
                self._log_top_units(trainer, pl_module, probe, result)
        return scalars

    def unit_masks(
        self, pl_module: pl.LightningModule, images: torch.Tensor, result: DissectionResult, units: list[int]
    ) -> torch.Tensor:
        """``(B, len(units), H, W)`` bool thresholded, upsampled masks of ``units`` on ``images``."""
        device = next(pl_module.parameters(), torch.zeros(0)).device
        activation = LayerActivations(pl_module, [result.layer])(images.to(device))[result.layer][:, units]
        upsampled = upsample_activations(activation.cpu(), (images.shape[-2], images.shape[-1]))
        return result.unit_masks(upsampled, units)

    def _log_top_units(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet, result: DissectionResult
    ) -> None:
        units = result.units_ranked()[: self.top_units]
        shown = min(self.top_images, int(result.top_images.shape[1]))
        panels, captions = [], []
        with observe(pl_module, trainer=trainer, seed=self.probe_seed):
            for unit in units:
                ids = result.top_images[unit, :shown].clamp_min(0)
                images = probe.images[ids]
                masks = self.unit_masks(pl_module, images, result, [unit])[:, 0]
                panels.append(outline_masks(images, masks))
                concept, category, iou = result.concept_of(unit)
                captions.append(f"unit {unit}: {concept} ({category}) IoU={iou:.3f}")
        if not panels:
            return
        grid = labelled_grid(
            to_uint8_hwc(torch.stack(panels)),
            row_captions=captions,
            column_titles=[f"top {i + 1}" for i in range(shown)],
        )
        caption = f"{result.layer}: top units by IoU, epoch {trainer.current_epoch}"
        self.sinks.images(
            f"{self.namespace}/{result.layer}/top_units", [np.ascontiguousarray(grid)], [caption], trainer.global_step
        )

    def extra_state(self) -> dict[str, Any]:
        return {}
