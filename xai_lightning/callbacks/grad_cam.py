"""GradCAMCallback: watch Grad-CAM maps of a fixed probe set evolve while the model trains."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from xai_lightning.attribution.grad_cam import grad_cam
from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.callbacks.probe import ProbeSet, ProbeSplit
from xai_lightning.callbacks.probe_captions import probe_captions
from xai_lightning.core import resolve_layers
from xai_lightning.evaluation import degenerate_warning, score_maps
from xai_lightning.logging import display_images, heatmaps, labelled_grid, overlay, to_uint8_hwc

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
    ============================================  ============================================

    Args:
        layers: a dotted module name, a list of them, or ``"auto"`` (the last module with a
            spatial 4-D output). Names are checked at ``setup``; a wrong one lists the valid names.
        num_probe: probe images, drawn once (seeded) from the validation data.
        target: ``"label"`` (default; falls back to ``"predicted"`` when the data has no labels),
            ``"predicted"``, or a fixed class index.
        every_n_epochs: how often to explain.
        max_images: probe rows shown in the grid (all of them are scored).
        colormap: matplotlib colormap of the heatmaps.
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
        colormap: str = "jet",
        output_key: str | int | None = None,
        max_batch: int | None = None,
        probe_split: ProbeSplit = "val",
        probe_seed: int = 0,
        on_error: Literal["warn", "raise"] = "warn",
    ) -> None:
        super().__init__(num_probe=num_probe, every_n_epochs=every_n_epochs, probe_split=probe_split,
                         probe_seed=probe_seed, on_error=on_error)
        if isinstance(target, str) and target not in ("label", "predicted"):
            raise ValueError(f"target must be 'label', 'predicted' or a class index; got {target!r}")
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1; got {max_images}")
        self.layers = layers
        self.target = target
        self.max_images = max_images
        self.colormap = colormap
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
        from xai_lightning.logging.colormap import _lookup_table

        _lookup_table(self.colormap)  # unknown colormap names fail now, not after an epoch
        if probe.images.dim() != 4:
            raise ValueError(f"GradCAMCallback explains images (N, C, H, W); the probe is {tuple(probe.images.shape)}")
        one = probe.images[:1].to(pl_module.device)
        self.layer_names = resolve_layers(pl_module, self.layers, forward=lambda: pl_module(one))
        if isinstance(self.target, int):
            from xai_lightning.core import resolve_targets, select_logits

            resolve_targets(self.target, select_logits(pl_module(one), self.output_key))

    def explain(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> dict[str, torch.Tensor]:
        result = grad_cam(
            pl_module, probe.images, self._target(probe), self.layer_names, labels=probe.labels,
            output_key=self.output_key, max_batch=self.max_batch, trainer=trainer,
        )
        out = {f"map/{name}": maps.float() for name, maps in result.maps.items()}
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
                rank_zero_warn(f"GradCAMCallback, epoch {trainer.current_epoch}: " + degenerate_warning(
                    round(scores["empty_maps"] * len(maps)), len(maps), f"Grad-CAM at layer {name!r}",
                    "their scores are left out of the means, which are a uniform map's (chance) when no map is "
                    "left"))
            self._previous[name] = maps.clone()
        if trainer.is_global_zero:
            self._log_grid(trainer, probe, results)
        return scalars

    def _log_grid(self, trainer: pl.Trainer, probe: ProbeSet, results: dict[str, torch.Tensor]) -> None:
        shown = min(self.max_images, len(probe))
        images = probe.images[:shown]
        panels = [display_images(images)]
        titles = ["image"]
        for name in self.layer_names:
            maps = results[f"map/{name}"][:shown]
            panels += [heatmaps(maps, self.colormap), overlay(images, maps, colormap=self.colormap)]
            titles += [f"{name}", "overlay"]
        grid = labelled_grid(
            to_uint8_hwc(torch.stack(panels, dim=1)),
            row_captions=self._captions(probe, results, shown),
            column_titles=titles,
        )
        caption = f"Grad-CAM, epoch {trainer.current_epoch}, step {trainer.global_step}"
        self.sinks.images(f"{self.namespace}/grid", [np.ascontiguousarray(grid)], [caption], trainer.global_step)

    @staticmethod
    def _captions(probe: ProbeSet, results: dict[str, torch.Tensor], shown: int) -> list[str]:
        return probe_captions(probe, results["logits"], results["targets"], shown, explained_tag="cam")

    def extra_state(self) -> dict[str, Any]:
        return {"previous_maps": {name: maps.clone() for name, maps in self._previous.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._previous = {name: maps.clone() for name, maps in state.get("previous_maps", {}).items()}
