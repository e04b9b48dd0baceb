"""GradCAMCallback: watch Grad-CAM maps of a fixed probe set evolve while the model trains."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from xai_lightning.attribution.grad_cam_method import grad_cam
from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.callbacks.probe import ProbeSet, ProbeSplit
from xai_lightning.callbacks.probe_captions import probe_captions, probe_table
from xai_lightning.core import LayerCapture, resolve_layers, resolve_targets, select_logits
from xai_lightning.evaluation import degenerate_warning, score_maps
from xai_lightning.logging import (
    Colourbar,
    NormaliseMode,
    blend,
    display_colormap,
    display_images,
    labelled_grid,
    scaled_heatmaps,
    to_uint8_hwc,
)

__all__ = ["GradCAMCallback"]


class GradCAMCallback(ObserverCallback):
    """Grad-CAM (Selvaraju et al. 2017) of a fixed probe set, every ``every_n_epochs`` epochs.

    For every configured layer it computes the maps of all probe images in one batched pass
    inside the observer guard (training weights stay bit-identical), then logs:

    ============================================  ============================================
    ``gradcam/grid``                              one image: probe rows × (image | map | overlay
                                                  per layer); rows captioned ``y=<label>
                                                  pred=<class> p=<probability>``
    ``gradcam/<layer>/energy_in_mask``            mean fraction of positive map energy inside
                                                  the object mask (needs masks in the data)
    ``gradcam/<layer>/energy_in_mask_uniform``    the same for a uniform map (= mask area): the
                                                  baseline to beat
    ``gradcam/<layer>/pointing_game``             fraction of maps whose peak is on the object
    ``gradcam/<layer>/stability``                 mean Spearman ρ of each map with the same
                                                  image's map at the previous logged epoch
    ``gradcam/<layer>/empty_maps``                fraction of maps with no positive energy
                                                  (undefined scores; excluded from the means)
    ``gradcam/probes``                            table, one row per shown probe image: overlay,
                                                  label, prediction, probability, and per layer
                                                  its energy in mask and pointing-game hit
    ============================================  ============================================

    The scalars are logged with ``LightningModule.log``: monitor them with ``EarlyStopping`` or
    ``ModelCheckpoint`` (``monitor="gradcam/<layer>/energy_in_mask", mode="max"``).

    Args:
        layers: a dotted module name, a list of them, or ``"auto"`` (the last module with a
            spatial 4-D output). Names are checked at ``setup``; a wrong one lists the valid names.
        num_probe: probe images, drawn once (seeded) from the validation data.
        target: ``"label"`` (default; falls back to ``"predicted"`` when the data has no labels),
            ``"predicted"``, or a fixed class index.
        every_n_epochs: how often to explain.
        max_images: probe rows shown in the grid and the table (all of them are scored).
        colormap: matplotlib colormap of the heatmaps (None: ``"jet"``, or ``"RdBu_r"`` for
            ``normalise="signed"``).
        normalise: how map values become colours (:mod:`xai_lightning.logging.colormap`):
            ``"per_map"`` (each map its own min–max, the classic display; hides magnitude),
            ``"per_epoch"`` (one scale for the whole probe set, printed on the colourbar, so
            magnitudes compare across images and epochs), ``"percentile"`` (the same, clipped at
            the 99th percentile) or ``"signed"`` (symmetric around zero).
        output_key: where the logits are when the model returns a dict/tuple.
        max_batch: cap on images per forward/backward pass (None: the whole shard at once).
        probe_split, probe_seed, on_error: see :class:`~xai_lightning.callbacks.ObserverCallback`.

    Example::

        trainer = Trainer(callbacks=[GradCAMCallback(layers="auto")], logger=WandbLogger(offline=True))
    """

    namespace = "gradcam"

    def __init__(
        self,
        layers: str | list[str] = "auto",
        num_probe: int = 32,
        target: Literal["label", "predicted"] | int = "label",
        every_n_epochs: int = 1,
        max_images: int = 16,
        colormap: str | None = None,
        normalise: NormaliseMode = "per_map",
        output_key: str | int | None = None,
        max_batch: int | None = None,
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
        if isinstance(target, str) and target not in ("label", "predicted"):
            raise ValueError(f"target must be 'label', 'predicted' or a class index; got {target!r}")
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1; got {max_images}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 or None (the whole probe shard at once); got {max_batch}")
        self.layers = layers
        self.target = target
        self.max_images = max_images
        self.colormap = display_colormap(colormap, normalise)  # unknown names fail here, not after an epoch
        self.normalise = normalise
        self.output_key = output_key
        self.max_batch = max_batch
        self.layer_names: list[str] = []
        self._previous: dict[str, torch.Tensor] = {}
        self._warned: set[str] = set()  # layers whose empty maps were reported (once per run)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(namespace=self.namespace, layers=self.layers, num_probe=self.num_probe)

    def _target(self, probe: ProbeSet) -> Any:
        if self.target == "label" and probe.labels is None:
            return "predicted"
        return self.target

    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> None:
        if probe.images.dim() != 4:
            raise ValueError(f"GradCAMCallback explains images (N, C, H, W); the probe is {tuple(probe.images.shape)}")
        one = probe.images[:1].to(pl_module.device)
        self.layer_names = resolve_layers(pl_module, self.layers, forward=lambda: pl_module(one))
        # One forward checks what would otherwise fail at every epoch: the logits can be found,
        # the target is a class of the model, and every layer gives a spatial map.
        with LayerCapture(pl_module, self.layer_names) as capture:
            logits = select_logits(pl_module(one), self.output_key)
        if isinstance(self.target, int):
            resolve_targets(self.target, logits)
        for name in self.layer_names:
            check_grad_cam_layer(name, capture.activations[name])

    def explain(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> dict[str, torch.Tensor]:
        result = grad_cam(
            pl_module,
            probe.images,
            self._target(probe),
            self.layer_names,
            labels=probe.labels,
            output_key=self.output_key,
            max_batch=self.max_batch,
            trainer=trainer,
        )
        # Scored and rendered in float32 (bfloat16 maps would quantise the scores); a float64
        # model's maps keep their precision.
        out = {
            f"map/{name}": maps.to(torch.promote_types(maps.dtype, torch.float32)) for name, maps in result.maps.items()
        }
        out["logits"] = result.logits
        out["targets"] = result.targets
        return out

    def report(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet, results: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        scalars: dict[str, float] = {}
        for name in self.layer_names:
            maps = results[f"map/{name}"]
            prefix = f"{self.namespace}/{name}"
            scores = score_maps(maps, probe.object_masks, self._previous.get(name))
            scalars.update({f"{prefix}/{key}": value for key, value in scores.items()})
            if scores["empty_maps"] > 0 and name not in self._warned:
                self._warned.add(name)
                rank_zero_warn(
                    f"GradCAMCallback, epoch {trainer.current_epoch}: "
                    + degenerate_warning(
                        round(scores["empty_maps"] * len(maps)),
                        len(maps),
                        f"Grad-CAM at layer {name!r}",
                        "their scores are left out of the means, which are a uniform map's (chance) when no map is "
                        "left",
                    )
                )
            self._previous[name] = maps.clone()
        if trainer.is_global_zero:
            self._log_grid(trainer, probe, results)
        return scalars

    def _log_grid(self, trainer: pl.Trainer, probe: ProbeSet, results: dict[str, torch.Tensor]) -> None:
        shown = min(self.max_images, len(probe))
        images = probe.images[:shown]
        panels = [display_images(images)]
        titles = ["image"]
        colourbars: list[Colourbar | None] = [None]
        overlays = []
        for name in self.layer_names:
            colours, colourbar = scaled_heatmaps(results[f"map/{name}"], shown, self.colormap, self.normalise)
            overlays.append(blend(images, colours))
            panels += [colours, overlays[-1]]
            titles += [f"{name}", "overlay"]
            colourbars += [colourbar, None]
        grid = labelled_grid(
            to_uint8_hwc(torch.stack(panels, dim=1)),
            row_captions=self._captions(probe, results, shown),
            column_titles=titles,
            column_colourbars=colourbars,
        )
        caption = f"Grad-CAM, epoch {trainer.current_epoch}, step {self.step}"
        self.sinks.images(f"{self.namespace}/grid", [np.ascontiguousarray(grid)], [caption], self.step)
        maps = {name: results[f"map/{name}"] for name in self.layer_names}
        shown_images = to_uint8_hwc(overlays[0])
        columns, rows = probe_table(probe, results["logits"], results["targets"], shown, shown_images, maps)
        self.sinks.table(f"{self.namespace}/probes", columns, rows, self.step)

    @staticmethod
    def _captions(probe: ProbeSet, results: dict[str, torch.Tensor], shown: int) -> list[str]:
        return probe_captions(probe, results["logits"], results["targets"], shown, explained_tag="cam")

    def extra_state(self) -> dict[str, Any]:
        return {"previous_maps": {name: maps.clone() for name, maps in self._previous.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._previous = {name: maps.clone() for name, maps in state.get("previous_maps", {}).items()}


def check_grad_cam_layer(name: str, activation: torch.Tensor) -> None:
    """Grad-CAM maps a layer's ``(B, C, h, w)`` output with ``h·w > 1``; raise naming the fix otherwise."""
    shape = tuple(activation.shape)
    if activation.dim() != 4:
        raise ValueError(
            f"GradCAMCallback: layer {name!r} outputs shape {shape}, not a (B, C, h, w) feature map: Grad-CAM "
            "weights the channels of a spatial map, which a Linear/flattened layer does not have. Choose a "
            "convolutional layer (or layers='auto', the last module with a spatial output)."
        )
    if shape[-2] * shape[-1] <= 1:
        raise ValueError(
            f"GradCAMCallback: layer {name!r} outputs shape {shape}, a single position (after global pooling): its "
            "Grad-CAM map would be constant. Choose a layer before the pooling (or layers='auto')."
        )
