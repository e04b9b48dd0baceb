"""FrequencyCallback: accuracy on the low- and high-frequency parts of the probe images, every epoch."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch

from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.callbacks.dynamics_figures import curves_figure, history_series, history_so_far
from xai_lightning.callbacks.probe import ProbeSet, ProbeSplit
from xai_lightning.dynamics import (
    FrequencyVariantCache,
    check_radii,
    conv_weight,
    first_conv_layer,
    frequency_accuracy,
    frequency_split,
)
from xai_lightning.dynamics import kernel_roughness as roughness_of
from xai_lightning.logging import display_images, labelled_grid, to_uint8_hwc

__all__ = ["FrequencyCallback"]


def radius_tag(radius: float) -> str:
    """``8.0`` → ``"r8"``, ``2.5`` → ``"r2.5"``: the radius part of the logged keys."""
    return f"r{radius:g}"


class FrequencyCallback(ObserverCallback):
    """Accuracy on ``x_low`` and ``x_high`` (Wang et al. 2019) of a fixed probe set, every ``every_n_epochs`` epochs.

    Each probe image is split by a radial mask of radius ``r`` on its centred 2-D spectrum
    (:func:`~xai_lightning.dynamics.frequency_split`, ``x_low + x_high = x``) and the model is scored on
    both parts, for every radius, in one batched no-gradient pass inside the observer guard
    (training stays bit-identical). Also the roughness of the first conv layer's kernels
    (:func:`~xai_lightning.dynamics.kernel_roughness`; lower = smoother; robust models have
    smoother kernels). Logged keys (``<r>`` = ``r8`` for radius 8):

    ============================================  ============================================
    ``frequency/<r>/low_acc``                     accuracy on ``x_low`` (needs labels)
    ``frequency/<r>/high_acc``                    accuracy on ``x_high``
    ``frequency/clean_acc``                       accuracy on the probe images themselves
                                                  (``clean=True``)
    ``frequency/kernel_roughness``                mean roughness of the first conv layer's
                                                  kernels (``kernel_layer`` not None)
    ``frequency/curves``                          figure: low (solid) and high (dashed) accuracy
                                                  per radius over the epochs so far
    ``frequency/strip``                           image, at the first observation (the parts do
                                                  not change): rows = probe images; columns = x,
                                                  then x_low and x_high + 0.5 (grey = 0) per radius
    ============================================  ============================================

    Args:
        radii: radii of the low-pass disc, in (0, min(H, W) // 2]; checked at ``setup`` (too large:
            the error names the largest valid radius). Default ``[8]``: two passes over the probe
            set, about 5 % of a 2,000-image ConceptWorld epoch at 256 probes (SmallCNN, one CPU
            thread; ``experiments/benchmarks/dynamics_overhead.py``); Wang et al.'s curves use 4, 8,
            12, 16 at 32×32 (each radius adds two passes over the probe set).
        clean: also score the unfiltered probe images (one more pass).
        kernel_layer: ``"auto"`` (the first ``nn.Conv2d`` the model runs), a dotted conv name, or
            None (no roughness).
        max_images: probe rows in the strip (0: no strip).
        max_batch: cap on images per forward pass (None: no cap; on a CPU passes take at most
            :data:`~xai_lightning.core.fast_forward.CPU_INPUT_ELEMENTS_PER_PASS` input elements anyway).
        output_key: where the logits are when the model returns a dict/tuple.
        figure_every_n_epochs: draw the accuracy curves at the first observation, every
            n-th after it and the last of a fit (:meth:`~xai_lightning.callbacks.ObserverCallback.figures_due`);
            every observation's scalars are logged either way.
        num_probe, every_n_epochs, probe_split, probe_seed, on_error: see
            :class:`~xai_lightning.callbacks.ObserverCallback`.

    DDP: the probe is sharded, per-image correctness gathered; rank zero logs.
    """

    namespace = "frequency"

    def __init__(
        self,
        radii: list[float] | None = None,
        num_probe: int = 256,
        every_n_epochs: int = 1,
        figure_every_n_epochs: int = 5,
        clean: bool = False,
        kernel_layer: str | None = "auto",
        max_images: int = 6,
        max_batch: int | None = 512,
        output_key: str | int | None = None,
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
        self.set_figure_schedule(figure_every_n_epochs)
        self.radii = [float(r) for r in (radii if radii is not None else [8.0])]
        if not self.radii or any(r <= 0 for r in self.radii):
            raise ValueError(f"radii must be a non-empty list of positive radii; got {radii}")
        if len(set(self.radii)) != len(self.radii):
            raise ValueError(f"radii must be distinct; got {radii}")
        if max_images < 0:
            raise ValueError(f"max_images must be >= 0; got {max_images}")
        self.clean = clean
        self.kernel_layer = kernel_layer
        self.max_images = max_images
        self.max_batch = max_batch
        self.output_key = output_key
        self.kernel_layer_name: str | None = None
        self._strip_logged = False
        self._variants = FrequencyVariantCache()  # the probe's split, made once: it does not depend on the model

    @property
    def state_key(self) -> str:
        return self._generate_state_key(namespace=self.namespace, radii=self.radii, num_probe=self.num_probe)

    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> None:
        if probe.images.dim() != 4:
            raise ValueError(f"FrequencyCallback needs images (N, C, H, W); the probe is {tuple(probe.images.shape)}")
        if probe.labels is None:
            raise ValueError("FrequencyCallback scores accuracy, so the probe data needs labels.")
        check_radii(self.radii, *probe.images.shape[-2:])
        one = probe.images[:1].to(pl_module.device)
        if self.kernel_layer == "auto":
            self.kernel_layer_name = first_conv_layer(pl_module, lambda: pl_module(one))
        elif self.kernel_layer is not None:
            conv_weight(pl_module, self.kernel_layer)  # unknown names list the valid ones
            self.kernel_layer_name = self.kernel_layer

    def explain(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> dict[str, torch.Tensor]:
        assert probe.labels is not None
        result = frequency_accuracy(
            pl_module,
            probe.images,
            probe.labels,
            self.radii,
            include_clean=self.clean,
            max_batch=self.max_batch,
            output_key=self.output_key,
            cache=self._variants,
        )
        return {"clean": result.clean, "low": result.low, "high": result.high}

    def report(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet, results: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        scalars: dict[str, float] = {}
        low, high = results["low"].float(), results["high"].float()
        for index, radius in enumerate(self.radii):
            scalars[f"{self.namespace}/{radius_tag(radius)}/low_acc"] = float(low[:, index].mean())
            scalars[f"{self.namespace}/{radius_tag(radius)}/high_acc"] = float(high[:, index].mean())
        if self.clean:
            scalars[f"{self.namespace}/clean_acc"] = float(results["clean"].float().mean())
        if self.kernel_layer_name is not None:
            weight = conv_weight(pl_module, self.kernel_layer_name)
            scalars[f"{self.namespace}/kernel_roughness"] = float(roughness_of(weight))
        if self.figures_due(trainer):
            figure = self.curves(history_so_far(self.history, trainer.current_epoch, scalars))
            self.sinks.figure(f"{self.namespace}/curves", figure, trainer.global_step)
        if trainer.is_global_zero and self.max_images and not self._strip_logged:
            self._log_strip(trainer, probe)
            self._strip_logged = True
        return scalars

    def curves(self, history: list[dict[str, float]]) -> Any:
        """The accuracy curves (a matplotlib Figure) from ``history`` records."""
        lines = []
        for index, radius in enumerate(self.radii):
            tag = radius_tag(radius)
            for part, style in (("low", "-"), ("high", "--")):
                epochs, values = history_series(history, f"{self.namespace}/{tag}/{part}_acc")
                lines.append((f"x_{part}, r={radius:g}", epochs, values, index, style))
        epochs, values = history_series(history, f"{self.namespace}/clean_acc")
        if values:
            lines.append(("x (clean)", epochs, values, len(self.radii), ":"))
        return curves_figure(
            lines, "accuracy on low- / high-frequency parts (Wang et al. 2019)", "probe accuracy", ylim=(0.0, 1.02)
        )

    def _log_strip(self, trainer: pl.Trainer, probe: ProbeSet) -> None:
        shown = min(self.max_images, len(probe))
        images = probe.images[:shown].detach().float().cpu()
        panels = [display_images(images)]
        titles = ["x"]
        for radius in self.radii:
            low, high = frequency_split(images, radius)
            panels += [display_images(low.clamp(0, 1)), display_images((high + 0.5).clamp(0, 1))]
            titles += [f"low r={radius:g}", f"high r={radius:g}"]
        grid = labelled_grid(to_uint8_hwc(torch.stack(panels, dim=1)), column_titles=titles)
        caption = f"x, x_low and x_high + 0.5 (grey = 0), epoch {trainer.current_epoch}, step {trainer.global_step}"
        self.sinks.images(f"{self.namespace}/strip", [np.ascontiguousarray(grid)], [caption], trainer.global_step)
