"""AttentionCallback: watch a vision transformer's attention become object-aligned while it trains."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from xai_lightning.attribution.attention_capture import find_attention_layers
from xai_lightning.attribution.attention_map_methods import KINDS, AttentionMapKind, attention_maps
from xai_lightning.attribution.rollout import HeadFusion
from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.callbacks.probe import ProbeSet, ProbeSplit
from xai_lightning.callbacks.probe_captions import probe_captions, probe_table
from xai_lightning.core import check_target
from xai_lightning.evaluation import mass_in_mask_on_grid, nanmean, uniform_energy_in_mask
from xai_lightning.logging import display_images, labelled_grid, overlay, to_uint8_hwc

__all__ = ["AttentionCallback"]

AttentionTarget = Literal["label", "predicted"] | int | Callable[[Any], torch.Tensor]


class AttentionCallback(ObserverCallback):
    """Attention maps of a ViT on a fixed probe set, every ``every_n_epochs`` epochs.

    Inside the observer guard (training stays bit-identical), one batched pass captures every
    layer's attention probabilities with read-only hooks (Hugging Face models: eager attention)
    and computes the CLS token's raw attention per layer and head, attention rollout (Abnar &
    Zuidema 2020) and gradient-weighted relevance (Chefer et al. 2021) of the target class
    (:func:`~xai_lightning.attribution.attention_map_methods`). With ConceptWorld (object masks in the
    probe data) it measures how much of each map's mass lies on the object — the DINO observation
    (Caron et al. 2021) that self-attention segments objects, with ground truth. Logged keys:

    ==================================================  ===========================================
    ``attention/layer<l>/head<h>/mass_in_mask``         mean fraction of the CLS token's attention
                                                        to the patches that falls on the object
    ``attention/layer<l>/mass_in_mask``                 the same for the head-averaged attention
    ``attention/rollout/mass_in_mask``                  … for attention rollout
    ``attention/relevance/mass_in_mask``                … for Chefer relevance
    ``attention/mass_in_mask_uniform``                  … for a uniform map (= object area): the
                                                        chance level to beat
    ``attention/heads/layer<l>`` (image)                probe rows × (image | each head's CLS
                                                        attention), one grid per layer
    ``attention/maps`` (image)                          probe rows × (image | rollout | relevance |
                                                        last layer's mean attention)
    ``attention/probes`` (table)                        one row per shown probe image: its first
                                                        overlay, label, prediction, probability,
                                                        explained class, and per map (rollout,
                                                        relevance, last layer's mean attention) its
                                                        mass in the object and pointing-game hit
    ==================================================  ===========================================

    ``l`` and ``h`` count from 0. Mass scores need object masks in the probe data; they are
    computed on the patch grid exactly (:func:`~xai_lightning.evaluation.mass_in_mask_on_grid`).

    Args:
        num_probe: probe images, drawn once (seeded) from ``probe_split``.
        target: the class whose relevance is computed: ``"label"`` (default; ``"predicted"`` without
            labels), ``"predicted"``, a class index, or (Python API) a callable on the model output
            returning one score per image — checked at ``setup``.
        every_n_epochs: how often.
        maps: which maps: ``"raw"``, ``"rollout"``, ``"relevance"`` (default all).
        special_tokens: tokens before the patches (None: the model's ``num_special_tokens``/
            ``num_prefix_tokens``, else 1 — the CLS token).
        residual, head_fusion: attention rollout's identity weight (0.5) and head fusion (``"mean"``).
        source: ``"hooks"`` (default) or ``"outputs"`` (``output_attentions=True``, Hugging Face).
        grid_layers: layers whose per-head grid is logged (None: all; [] none; -1 = the last).
        max_images: probe rows shown in the grids (all are scored).
        colormap: matplotlib colormap of the overlays.
        output_key: where the logits are when the model returns a dict/tuple.
        max_batch: cap on images per forward/backward pass.
        probe_split, probe_seed, on_error: see :class:`~xai_lightning.callbacks.ObserverCallback`.

    Example::

        trainer = Trainer(callbacks=[AttentionCallback(num_probe=16)], logger=WandbLogger(offline=True))
    """

    namespace = "attention"

    def __init__(
        self,
        num_probe: int = 16,
        target: AttentionTarget = "label",
        every_n_epochs: int = 1,
        maps: list[AttentionMapKind] | tuple[AttentionMapKind, ...] = KINDS,
        special_tokens: int | None = None,
        residual: float = 0.5,
        head_fusion: HeadFusion = "mean",
        source: Literal["hooks", "outputs"] = "hooks",
        grid_layers: list[int] | None = None,
        max_images: int = 8,
        colormap: str = "jet",
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
            raise ValueError(f"target must be 'label', 'predicted', a class index or a callable; got {target!r}")
        maps = [maps] if isinstance(maps, str) else list(maps)
        unknown = [kind for kind in maps if kind not in KINDS]
        if unknown or not maps:
            raise ValueError(f"maps must be a non-empty list of {list(KINDS)}; got {maps}")
        if special_tokens is not None and special_tokens < 0:
            raise ValueError(f"special_tokens must be >= 0 or None; got {special_tokens}")
        if not 0.0 <= residual <= 1.0:
            raise ValueError(f"residual must be in [0, 1]; got {residual}")
        if head_fusion not in ("mean", "max", "min"):
            raise ValueError(f"head_fusion must be 'mean', 'max' or 'min'; got {head_fusion!r}")
        if source not in ("hooks", "outputs"):
            raise ValueError(f"source must be 'hooks' or 'outputs'; got {source!r}")
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1; got {max_images}")
        self.target = target
        self.maps = [kind for kind in KINDS if kind in maps]
        self.special_tokens = special_tokens
        self.residual = residual
        self.head_fusion = head_fusion
        self.source = source
        self.grid_layers = grid_layers
        self.max_images = max_images
        self.colormap = colormap
        self.output_key = output_key
        self.max_batch = max_batch
        self.num_layers = 0
        self.num_heads = 0
        self.grid: tuple[int, int] = (0, 0)

    def _target(self, probe: ProbeSet) -> Any:
        if self.target == "label" and probe.labels is None:
            return "predicted"
        return self.target

    # ------------------------------------------------------------------ setup
    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> None:
        from xai_lightning.logging.colormap import _lookup_table

        _lookup_table(self.colormap)  # unknown colormap names fail now, not after an epoch
        if probe.images.dim() != 4:
            raise ValueError(
                f"AttentionCallback explains images (N, C, H, W); the probe is {tuple(probe.images.shape)}"
            )
        one = probe.images[:1].to(pl_module.device)
        if self.source == "hooks":
            find_attention_layers(pl_module, lambda: pl_module(one))  # no attention exposed → error now
        check_target(
            self._target(probe),
            pl_module(one),
            self.output_key,
            None if probe.labels is None else probe.labels[:1],
            batch=1,
        )
        maps = attention_maps(
            pl_module,
            one,
            self._target(probe),
            labels=None if probe.labels is None else probe.labels[:1],
            kinds=("raw",),
            special_tokens_count=self.special_tokens,
            source=self.source,
            output_key=self.output_key,
        )
        assert maps.raw is not None
        self.num_layers, self.num_heads = maps.raw.shape[1:3]
        self.grid = tuple(maps.raw.shape[-2:])  # type: ignore[assignment]
        if probe.object_masks is not None:
            from xai_lightning.evaluation import patch_coverage

            patch_coverage(probe.object_masks[:1], self.grid)  # masks that do not tile into patches fail now
        bad = [layer for layer in (self.grid_layers or []) if not -self.num_layers <= layer < self.num_layers]
        if bad:
            raise ValueError(f"grid_layers {bad} are outside the model's {self.num_layers} attention layers")

    # ------------------------------------------------------------------ one observation
    def explain(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> dict[str, torch.Tensor]:
        result = attention_maps(
            pl_module,
            probe.images,
            self._target(probe),
            labels=probe.labels,
            kinds=self.maps,
            special_tokens_count=self.special_tokens,
            residual=self.residual,
            head_fusion=self.head_fusion,
            source=self.source,
            output_key=self.output_key,
            max_batch=self.max_batch,
            trainer=trainer,
        )
        out = {"logits": result.logits, "targets": result.targets}
        for kind in self.maps:
            out[kind] = getattr(result, kind).float()
        return out

    def report(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet, results: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        scalars: dict[str, float] = {}
        masks = probe.object_masks
        if masks is not None:
            masks = masks.cpu()
            scalars[f"{self.namespace}/mass_in_mask_uniform"] = float(uniform_energy_in_mask(masks).mean())
            if "raw" in results:
                raw = results["raw"]  # (N, L, H, h, w)
                per_head = mass_in_mask_on_grid(raw, masks)  # (N, L, H)
                per_layer = mass_in_mask_on_grid(raw.mean(2), masks)  # (N, L)
                for layer in range(raw.shape[1]):
                    scalars[f"{self.namespace}/layer{layer}/mass_in_mask"] = nanmean(per_layer[:, layer])
                    for head in range(raw.shape[2]):
                        scalars[f"{self.namespace}/layer{layer}/head{head}/mass_in_mask"] = nanmean(
                            per_head[:, layer, head]
                        )
            for kind in ("rollout", "relevance"):
                if kind in results:
                    scalars[f"{self.namespace}/{kind}/mass_in_mask"] = nanmean(
                        mass_in_mask_on_grid(results[kind], masks)
                    )
        if trainer.is_global_zero:
            self._log_grids(trainer, probe, results)
        return scalars

    def _upsampled(self, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Patch maps ``(N, h, w)`` → ``(N, H, W)`` by nearest neighbour: every patch shown as the square it is."""
        return F.interpolate(maps.float().unsqueeze(1), size=size, mode="nearest").squeeze(1)

    def _log_grids(self, trainer: pl.Trainer, probe: ProbeSet, results: dict[str, torch.Tensor]) -> None:
        shown = min(self.max_images, len(probe))
        images = probe.images[:shown].cpu()
        size = (images.shape[-2], images.shape[-1])
        captions = probe_captions(probe, results["logits"], results["targets"], shown, explained_tag="explained")
        step = trainer.global_step
        image_panel = display_images(images)
        panels, titles = [image_panel], ["image"]
        for kind, title in (("rollout", "rollout"), ("relevance", "relevance")):
            if kind in results:
                panels.append(overlay(images, self._upsampled(results[kind][:shown], size), colormap=self.colormap))
                titles.append(title)
        if "raw" in results:
            panels.append(
                overlay(images, self._upsampled(results["raw"][:shown, -1].mean(1), size), colormap=self.colormap)
            )
            titles.append(f"layer{results['raw'].shape[1] - 1} mean")
            layers = range(results["raw"].shape[1]) if self.grid_layers is None else self.grid_layers
            for layer in layers:
                index = layer % results["raw"].shape[1]
                heads = results["raw"][:shown, index]  # (n, heads, h, w)
                row_panels = [image_panel] + [
                    overlay(images, self._upsampled(heads[:, h], size), colormap=self.colormap)
                    for h in range(heads.shape[1])
                ]
                grid = labelled_grid(
                    to_uint8_hwc(torch.stack(row_panels, dim=1)),
                    row_captions=captions,
                    column_titles=["image"] + [f"head {h}" for h in range(heads.shape[1])],
                )
                self.sinks.images(
                    f"{self.namespace}/heads/layer{index}",
                    [np.ascontiguousarray(grid)],
                    [f"CLS attention per head, layer {index}, epoch {trainer.current_epoch}"],
                    step,
                )
        grid = labelled_grid(to_uint8_hwc(torch.stack(panels, dim=1)), row_captions=captions, column_titles=titles)
        self.sinks.images(
            f"{self.namespace}/maps",
            [np.ascontiguousarray(grid)],
            [f"Attention maps, epoch {trainer.current_epoch}, step {step}"],
            step,
        )
        # Beside the grid, one table row per shown probe (patch maps at image size, as drawn).
        maps: dict[str, torch.Tensor] = {
            kind: self._upsampled(results[kind][:shown], size) for kind in ("rollout", "relevance") if kind in results
        }
        if "raw" in results:
            last = results["raw"].shape[1] - 1
            maps[f"layer{last}_mean"] = self._upsampled(results["raw"][:shown, -1].mean(1), size)
        columns, rows = probe_table(
            probe, results["logits"], results["targets"], shown, to_uint8_hwc(panels[min(1, len(panels) - 1)]), maps
        )
        self.sinks.table(f"{self.namespace}/probes", columns, rows, step)
