"""SanityCheckCallback: would the maps look the same for a randomised network? (Adebayo et al. 2018)"""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from pytorch_lightning.utilities import rank_zero_warn

from xai_lightning.attribution.method import AttributionMethod
from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.callbacks.configured_methods import (
    build_method,
    canonical_method_options,
    canonical_methods,
    method_layer,
)
from xai_lightning.callbacks.probe import ProbeSet, ProbeSplit
from xai_lightning.core import resolve_targets, select_logits
from xai_lightning.evaluation import degenerate_maps, degenerate_warning
from xai_lightning.evaluation.sanity import (
    SIMILARITIES,
    RandomisationMode,
    model_parameter_randomisation,
    randomisable_layers,
)
from xai_lightning.logging import display_images, heatmaps, labelled_grid, to_uint8_hwc

__all__ = ["DEFAULT_SANITY_METHODS", "SanityCheckCallback"]

DEFAULT_SANITY_METHODS = ("saliency", "gradcam", "guided_backprop")


class SanityCheckCallback(ObserverCallback):
    """Model-parameter randomisation tests (Adebayo et al., NeurIPS 2018) of attribution methods while training.

    At each scheduled epoch, a private deep copy of the model has its layers re-initialised from
    the logits down — cumulatively (``mode="cascading"``) or one at a time (``"independent"``) —
    and each method explains the probe set (the same classes) with every randomised copy. Each
    randomised map is compared with the trained model's by the similarities of
    :mod:`xai_lightning.evaluation.sanity`. The training model is never touched: the copies
    share no parameter or buffer with it, re-initialisations draw from an isolated generator.
    A method that passes the check decorrelates as its model is destroyed (gradients, Grad-CAM);
    Guided Backprop famously does not. Logged:

    ========================================================  =========================================
    ``sanity/<method>/<mode>/<similarity>/<layer>``           mean similarity to the trained model's
                                                              maps after randomising ``<layer>`` (and,
                                                              cascading, every layer above it)
    ``sanity/<method>/<mode>/<similarity>/mean``              mean over the whole randomisation curve
    ``sanity/<mode>/curves``                                  figure: similarity vs randomised layer,
                                                              one panel per similarity, a line per method
    ``sanity/<mode>/table``                                   table: method, similarity, step, layer, value
    ``sanity/<mode>/grid``                                    image grid: rows = (probe image, method),
                                                              columns = image | trained map | each step
    ========================================================  =========================================

    ``<similarity>`` ∈ ``spearman_abs``, ``spearman``, ``ssim``, ``hog_pearson`` (configured ones);
    ``<layer>`` is a dotted module name such as ``network.classifier``. For non-negative heatmaps
    (most methods' ``to_map``) ``spearman`` equals ``spearman_abs``. A randomised map that is all
    zero (Grad-CAM of a destroyed network often is) has similarity 0 to everything (SSIM compares
    its all-zero scaling); one warning per method and layer names it.

    Args:
        methods: attribution method names.
        mode: ``"cascading"`` or ``"independent"``.
        similarities: similarity names (default all four).
        layers: layers to randomise, top first (default: every layer with parameters that can
            ``reset_parameters()``); checked at setup.
        num_probe: probe images (each step explains all of them with every method).
        every_n_epochs: how often to run; ``at_epochs`` (0-based) instead runs only at those epochs.
        target: ``"label"`` (default; ``"predicted"`` without labels), ``"predicted"`` or a class index.
        layer: the CAM family's layer (``"auto"``), checked at setup.
        method_options: per-method options.
        seed: seed of the re-initialisations (the same random weights every epoch).
        max_images: probe images shown in the grid.
        colormap: matplotlib colormap of the heatmaps.
        output_key, max_batch, probe_split, probe_seed, on_error: as for the other callbacks.

    Example::

        trainer = Trainer(callbacks=[SanityCheckCallback(methods=["saliency", "guided_backprop"], at_epochs=[0, 9])],
                          logger=WandbLogger(offline=True))
    """

    namespace = "sanity"

    def __init__(
        self,
        methods: list[str] | tuple[str, ...] = DEFAULT_SANITY_METHODS,
        mode: RandomisationMode = "cascading",
        similarities: list[str] | tuple[str, ...] = tuple(SIMILARITIES),
        layers: list[str] | None = None,
        num_probe: int = 8,
        every_n_epochs: int = 1,
        at_epochs: list[int] | None = None,
        target: Literal["label", "predicted"] | int = "label",
        layer: str = "auto",
        method_options: dict[str, dict[str, Any]] | None = None,
        seed: int = 0,
        max_images: int = 2,
        colormap: str = "jet",
        output_key: str | int | None = None,
        max_batch: int | None = 256,
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
        names = canonical_methods(methods, "SanityCheckCallback")
        if mode not in ("cascading", "independent"):
            raise ValueError(f"mode must be 'cascading' or 'independent'; got {mode!r}")
        similarities = [similarities] if isinstance(similarities, str) else list(similarities)
        unknown = [name for name in similarities if name not in SIMILARITIES]
        if unknown or not similarities:
            raise ValueError(f"Unknown similarities {unknown}; use some of {list(SIMILARITIES)}.")
        if at_epochs is not None and (not at_epochs or any(int(epoch) < 0 for epoch in at_epochs)):
            raise ValueError(f"at_epochs must be a non-empty list of epochs >= 0; got {at_epochs}")
        if isinstance(target, str) and target not in ("label", "predicted"):
            raise ValueError(f"target must be 'label', 'predicted' or a class index; got {target!r}")
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1; got {max_images}")
        self.methods = names
        self.mode = mode
        self.similarities = similarities
        self.layers = list(layers) if layers is not None else None
        self.at_epochs = sorted({int(epoch) for epoch in at_epochs}) if at_epochs is not None else None
        self.target = target
        self.layer = layer
        self.method_options = canonical_method_options(method_options, names)
        self.seed = seed
        self.max_images = max_images
        self.colormap = colormap
        self.output_key = output_key
        self.max_batch = max_batch
        self.explainers: dict[str, AttributionMethod] = {}
        self.randomised_layers: list[str] = []
        self.method_layers: dict[str, str] = {}
        self._warned: set[tuple[str, str]] = set()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            namespace=self.namespace, methods=tuple(self.methods), mode=self.mode, num_probe=self.num_probe
        )

    @property
    def observes_final_weights(self) -> bool:
        return self.at_epochs is None  # ``at_epochs`` means those epochs only

    def _scheduled(self, trainer: pl.Trainer) -> bool:
        if self.at_epochs is None or trainer.state.fn != "fit":
            return super()._scheduled(trainer)
        return trainer.current_epoch in self.at_epochs

    def _target(self, probe: ProbeSet) -> Any:
        return "predicted" if self.target == "label" and probe.labels is None else self.target

    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> None:
        from xai_lightning.logging.colormap import _lookup_table

        _lookup_table(self.colormap)
        if probe.images.dim() != 4:
            raise ValueError(f"SanityCheckCallback compares image maps; the probe is {tuple(probe.images.shape)}")
        valid = randomisable_layers(pl_module)
        layers = self.layers if self.layers is not None else valid
        unknown = [name for name in layers if name not in valid]
        if unknown or not layers:
            raise ValueError(
                f"SanityCheckCallback cannot randomise layers {unknown or layers}: they are not modules "
                f"with parameters and reset_parameters(). Randomisable layers, top first: {valid}"
            )
        self.randomised_layers = list(layers)
        one = probe.images[:1].to(pl_module.device)
        self.explainers = {
            name: build_method(
                name,
                self.method_options.get(name, {}),
                layer=self.layer,
                output_key=self.output_key,
                max_batch=self.max_batch,
                seed=self.probe_seed,
            )
            for name in self.methods
        }
        self.method_layers = {
            name: method_layer(pl_module, explainer, one) for name, explainer in self.explainers.items()
        }
        if isinstance(self.target, int):
            resolve_targets(self.target, select_logits(pl_module(one), self.output_key))

    def explain(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            logits = select_logits(pl_module(probe.images), self.output_key).float()
        targets = resolve_targets(self._target(probe), logits, probe.labels)
        out: dict[str, torch.Tensor] = {}
        for name, explainer in self.explainers.items():
            result = model_parameter_randomisation(
                pl_module,
                probe.images,
                targets,
                explainer,
                mode=self.mode,
                layers=self.randomised_layers,
                similarities=self.similarities,
                seed=self.seed,
                keep_maps=True,
                output_key=self.output_key,
                max_batch=self.max_batch,
            )
            for similarity in self.similarities:
                out[f"{name}/{similarity}"] = result.similarity[similarity].T.float()  # (B, L)
            assert result.maps is not None
            out[f"{name}/maps"] = torch.cat([result.original.unsqueeze(0), result.maps]).transpose(
                0, 1
            )  # (B, L+1, H, W)
            maps = out[f"{name}/maps"]
            out[f"{name}/degenerate"] = degenerate_maps(maps.flatten(0, 1)).view(maps.shape[:2]).float()  # (B, L+1)
        return out

    def report(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet, results: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        scalars: dict[str, float] = {}
        for name in self.methods:
            for similarity in self.similarities:
                prefix = f"{self.namespace}/{name}/{self.mode}/{similarity}"
                values = results[f"{name}/{similarity}"].double()  # (N, L)
                for step, layer in enumerate(self.randomised_layers):
                    scalars[f"{prefix}/{layer}"] = float(values[:, step].mean())
                scalars[f"{prefix}/mean"] = float(values.mean())
            self._warn_degenerate(trainer, name, results[f"{name}/degenerate"], len(probe))
        if trainer.is_global_zero:
            self._log_curves(trainer, scalars)
            self._log_grid(trainer, probe, results)
        return scalars

    def _warn_degenerate(self, trainer: pl.Trainer, name: str, degenerate: torch.Tensor, total: int) -> None:
        steps = ["trained model", *self.randomised_layers]
        for step, label in enumerate(steps):
            count = int(degenerate[:, step].sum())
            if count and (name, label) not in self._warned:
                self._warned.add((name, label))
                where = "of the trained model" if step == 0 else f"after randomising {label!r}"
                rank_zero_warn(
                    f"SanityCheckCallback, epoch {trainer.current_epoch}: "
                    + degenerate_warning(
                        count,
                        total,
                        f"method {name!r} (layer {self.method_layers.get(name, 'input')!r}) {where}",
                        "their similarities are 0 (SSIM: that of an all-zero map), never NaN",
                    )
                )

    def _log_curves(self, trainer: pl.Trainer, scalars: dict[str, float]) -> None:
        step = trainer.global_step
        rows = []
        figure = Figure(figsize=(3.2 * len(self.similarities), 3.0))
        axes = figure.subplots(1, len(self.similarities), squeeze=False)[0]
        positions = np.arange(1, len(self.randomised_layers) + 1)
        for axis, similarity in zip(axes, self.similarities):
            for name in self.methods:
                values = [
                    scalars[f"{self.namespace}/{name}/{self.mode}/{similarity}/{layer}"]
                    for layer in self.randomised_layers
                ]
                axis.plot(positions, values, marker="o", markersize=3, label=self.explainers[name].title or name)
                rows += [
                    [name, similarity, int(index), layer, value]
                    for index, layer, value in zip(positions, self.randomised_layers, values)
                ]
            axis.axhline(0.0, color="grey", linewidth=0.6)
            axis.set_xticks(positions, self.randomised_layers, rotation=90, fontsize=6)
            axis.set_ylim(-1.05, 1.05)
            axis.set_title(similarity, fontsize=9)
        axes[0].set_ylabel(f"similarity to trained ({self.mode})")
        axes[-1].legend(fontsize=7)
        figure.suptitle(f"Model-parameter randomisation, epoch {trainer.current_epoch}", fontsize=10)
        figure.tight_layout()
        self.sinks.figure(f"{self.namespace}/{self.mode}/curves", figure, step)
        self.sinks.table(
            f"{self.namespace}/{self.mode}/table", ["method", "similarity", "step", "layer", "value"], rows, step
        )

    def _log_grid(self, trainer: pl.Trainer, probe: ProbeSet, results: dict[str, torch.Tensor]) -> None:
        shown = min(self.max_images, len(probe))
        panels, captions = [], []
        for index in range(shown):
            image = display_images(probe.images[index : index + 1])[0]
            for name in self.methods:
                maps = results[f"{name}/maps"][index]  # (L+1, H, W)
                panels.append(torch.cat([image.unsqueeze(0), heatmaps(maps, self.colormap)]))
                captions.append(f"#{index} {name}")
        # "network.features.19" → "features.19": the shared prefix only crowds the narrow columns
        prefix = os.path.commonprefix([name.rsplit(".", 1)[0] + "." for name in self.randomised_layers])
        prefix = prefix[: prefix.rfind(".") + 1]
        titles = ["image", "trained", *(name[len(prefix) :] for name in self.randomised_layers)]
        grid = labelled_grid(to_uint8_hwc(torch.stack(panels)), row_captions=captions, column_titles=titles, scale=2)
        caption = f"Randomised maps ({self.mode}), epoch {trainer.current_epoch}"
        self.sinks.images(
            f"{self.namespace}/{self.mode}/grid", [np.ascontiguousarray(grid)], [caption], trainer.global_step
        )

    def extra_state(self) -> dict[str, Any]:
        return {"warned": sorted(self._warned)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._warned = {tuple(item) for item in state.get("warned", [])}
