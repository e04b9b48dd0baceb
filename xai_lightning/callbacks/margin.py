"""MarginCallback: distances to the decision boundary in low- and high-frequency subspaces, every epoch."""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch

from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.callbacks.dynamics_figures import band_figure, history_series, history_so_far
from xai_lightning.callbacks.probe import ProbeSet, ProbeSplit
from xai_lightning.dynamics import DCTSubspace, margins_in_subspaces
from xai_lightning.dynamics.margins import Subspace

__all__ = ["MarginCallback"]


class MarginCallback(ObserverCallback):
    """Minimal adversarial perturbations restricted to DCT subspaces (Ortiz-Jiménez et al. 2020), per epoch.

    For every probe image and every subspace (``"low"``: the top-left ``block × block`` DCT
    coefficients of each channel; ``"high"``: the bottom-right block; ``"full"``: unrestricted), the
    L2 norm of the smallest perturbation within the subspace that changes the model's prediction
    (:func:`~xai_lightning.dynamics.subspace_margins`: batched subspace DeepFool, then regula falsi
    along the found direction; exact for an affine model; all subspaces in shared passes,
    :func:`~xai_lightning.dynamics.margins_in_subspaces`). Runs inside the observer guard with
    gradients taken with respect to the input only (training stays bit-identical). The published
    finding on natural images: small margins in the low-frequency subspace, large (often none
    found) in the high-frequency one. Logged keys:

    ==================================================  =========================================
    ``margin/<subspace>/median``                        median margin over the probe images where
                                                        a boundary was found (L2, pixel units)
    ``margin/<subspace>/q25``, ``…/q75``                quartiles
    ``margin/<subspace>/found``                         fraction of probe images with a boundary
                                                        found within ``max_iter`` steps
    ``margin/high_over_low``                            median(high) / median(low), when both
    ``margin/bands``                                    figure: median and quartile band per
                                                        subspace over the epochs so far
    ==================================================  =========================================

    Args:
        subspaces: any of ``"low"``, ``"high"``, ``"full"`` (default low and high).
        block: side of the DCT block, 1 … min(H, W) // 2 (checked at ``setup``); Ortiz-Jiménez et
            al. use 8×8 blocks at 32×32 (CIFAR-10).
        candidates: classes DeepFool linearises, the prediction included (2 = the runner-up only,
            one backward pass per step; the number of classes = exact DeepFool).
        max_iter: DeepFool steps at most (an example stops once its prediction flips).
        overshoot: DeepFool's overshoot; the reported margin is refined back onto the boundary.
        refine_steps: regula-falsi steps along the DeepFool direction.
        figure_every_n_epochs: draw the quartile bands at the first observation, every
            n-th after it and the last of a fit (:meth:`~xai_lightning.callbacks.ObserverCallback.figures_due`);
            every observation's scalars are logged either way.
        num_probe, every_n_epochs, probe_split, probe_seed, on_error: see
            :class:`~xai_lightning.callbacks.ObserverCallback`.
        max_batch: cap on images per forward/backward pass (None: no cap; on a CPU passes take at
            most :data:`~xai_lightning.core.fast_forward.CPU_INPUT_ELEMENTS_PER_PASS` input elements).
        output_key: where the logits are when the model returns a dict/tuple.

    Margins are measured from the model's *prediction* (no labels needed). DDP: the probe is
    sharded, per-image margins gathered; rank zero logs.
    """

    namespace = "margin"

    def __init__(
        self,
        subspaces: list[Subspace] | None = None,
        block: int = 8,
        candidates: int = 2,
        max_iter: int = 10,
        overshoot: float = 0.02,
        refine_steps: int = 1,
        num_probe: int = 256,
        every_n_epochs: int = 1,
        figure_every_n_epochs: int = 5,
        max_batch: int | None = None,
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
        self.subspaces: list[Subspace] = list(subspaces) if subspaces is not None else ["low", "high"]
        unknown = [s for s in self.subspaces if s not in ("low", "high", "full")]
        if unknown or not self.subspaces or len(set(self.subspaces)) != len(self.subspaces):
            raise ValueError(f"subspaces must be distinct values of 'low', 'high', 'full'; got {subspaces}")
        if block < 1:
            raise ValueError(f"block must be >= 1; got {block}")
        if candidates < 2:
            raise ValueError(f"candidates must be >= 2; got {candidates}")
        if max_iter < 1 or refine_steps < 0 or overshoot <= 0:
            raise ValueError("need max_iter >= 1, refine_steps >= 0 and overshoot > 0")
        self.block = block
        self.candidates = candidates
        self.max_iter = max_iter
        self.overshoot = overshoot
        self.refine_steps = refine_steps
        self.max_batch = max_batch
        self.output_key = output_key
        self.projections: dict[str, DCTSubspace] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            namespace=self.namespace, subspaces=self.subspaces, block=self.block, num_probe=self.num_probe
        )

    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> None:
        if probe.images.dim() != 4:
            raise ValueError(f"MarginCallback needs images (N, C, H, W); the probe is {tuple(probe.images.shape)}")
        height, width = probe.images.shape[-2:]
        self.projections = {kind: DCTSubspace(height, width, kind, self.block) for kind in self.subspaces}

    def explain(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> dict[str, torch.Tensor]:
        results = margins_in_subspaces(  # the subspaces share their passes (the first step's at the clean images)
            pl_module,
            probe.images,
            list(self.projections.values()),
            candidates=self.candidates,
            max_iter=self.max_iter,
            overshoot=self.overshoot,
            refine_steps=self.refine_steps,
            max_batch=self.max_batch,
            output_key=self.output_key,
            trainer=trainer,
        )
        out = {}
        for kind, result in zip(self.projections, results):
            out[f"margin/{kind}"] = result.margin
            out[f"iterations/{kind}"] = result.iterations
        return out

    def report(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet, results: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        scalars: dict[str, float] = {}
        medians = {}
        for kind in self.subspaces:
            margins = results[f"margin/{kind}"].double()
            found = ~torch.isnan(margins)
            prefix = f"{self.namespace}/{kind}"
            scalars[f"{prefix}/found"] = float(found.double().mean())
            if bool(found.any()):
                q25, median, q75 = torch.quantile(margins[found], torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
                scalars.update(
                    {f"{prefix}/q25": float(q25), f"{prefix}/median": float(median), f"{prefix}/q75": float(q75)}
                )
                medians[kind] = float(median)
        if "low" in medians and "high" in medians and medians["low"] > 0:
            scalars[f"{self.namespace}/high_over_low"] = medians["high"] / medians["low"]
        if self.figures_due(trainer):
            figure = self.bands(history_so_far(self.history, trainer.current_epoch, scalars))
            self.sinks.figure(f"{self.namespace}/bands", figure, trainer.global_step)
        return scalars

    def bands(self, history: list[dict[str, float]]) -> Any:
        """The median/quartile figure (a matplotlib Figure) from ``history`` records."""
        bands: dict[str, tuple[list[float], list[float], list[float], list[float]]] = {}
        for kind in self.subspaces:
            epochs, median = history_series(history, f"{self.namespace}/{kind}/median")
            _, low = history_series(history, f"{self.namespace}/{kind}/q25")
            _, high = history_series(history, f"{self.namespace}/{kind}/q75")
            bands[kind] = (epochs, median, low, high)
        return band_figure(
            bands, f"margins in DCT subspaces (block {self.block}; Ortiz-Jiménez et al. 2020)", "L2 margin"
        )
