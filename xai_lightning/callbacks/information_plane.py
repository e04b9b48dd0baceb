"""InformationPlaneCallback: decoder bounds on I(x;h) and I(y;h) per layer, every epoch (Darlow & Storkey 2020)."""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.callbacks.dynamics_figures import history_series, history_so_far, plane_figure
from xai_lightning.callbacks.probe import ProbeSet, ProbeSplit
from xai_lightning.callbacks.reference_images import (
    REFERENCE_PREFIX,
    draw_reference,
    find_split,
    gather_in_parts,
)
from xai_lightning.core import observe
from xai_lightning.dynamics import InformationPlane, image_targets, layer_features, resolve_feature_sites
from xai_lightning.dynamics.features import FeatureSite

__all__ = ["InformationPlaneCallback"]


class InformationPlaneCallback(ObserverCallback):
    """Trajectories of layers in the information plane, from small decoders on detached features.

    At every scheduled epoch, inside the observer guard, the features of ``decoder_images``
    training images (fixed, seeded) and of the probe images are computed at each layer (4-D
    outputs average-pooled to ``feature_pool²`` positions, then flattened) and gathered over
    ranks. The decoders (:class:`~xai_lightning.dynamics.InformationPlane`: ``q(y | h)`` and a
    Gaussian ``q(g(x) | h)`` with ``g(x)`` the image pooled to ``target_size²``) then take
    ``decoder_steps`` full-batch Adam steps on the training images' features (early-stopped on a
    fixed fifth of them) — warm-started from the previous epoch, with their own optimiser and
    parameters initialised from their own
    ``torch.Generator``, inside the guard (isolated random stream): the network's weights and the
    training's random stream are untouched — and are evaluated on the held-out probe images:

    ============================================  ==============================================
    ``information/<layer>/iyh``                   ``I(y; h)`` lower bound ``H(y) − CE`` (bits)
    ``information/<layer>/ixh``                   ``I(x; h)`` estimate (bits; Darlow & Storkey's
                                                  unconditional-minus-conditional NLL, a lower
                                                  bound up to a constant that is the same every
                                                  epoch — see :mod:`xai_lightning.dynamics.information_plane`)
    ``information/decoder_steps``                 decoder optimiser steps so far
    ``information/plane``                         figure: each layer's trajectory in the plane,
                                                  points coloured by epoch
    ============================================  ==============================================

    The decoders' weights, their optimiser state and step count are checkpointed: a resumed run
    continues them (and the trajectory, from the history).

    Args:
        layers: ``"penultimate"`` (default), dotted module names, ``"auto"``, or a list.
        num_probe: held-out probe images the bounds are evaluated on.
        decoder_images: training images the decoders are fitted on (drawn from ``decoder_split``).
        decoder_split: ``"train"`` (default) or ``"val"``; when it is the probe's split, the probe
            images are left out of the decoder images (the bounds stay held-out).
        decoder_steps: Adam steps per scheduled epoch.
        decoder_hidden: 0 = linear decoders; > 0 = one hidden ReLU layer of this width.
        decoder_lr: the decoders' Adam learning rate.
        target_size: side of the pooled image ``g(x)`` the image decoder models.
        feature_pool: 4-D features are average-pooled to at most this many positions per side.
        seed: seeds the decoders' initialisation and the decoder-image draw.
        max_batch: cap on images per forward pass.
        output_key: where the logits are when the model returns a dict/tuple.
        figure_every_n_epochs: draw the information-plane trajectory at the first observation, every
            n-th after it and the last of a fit (:meth:`~xai_lightning.callbacks.ObserverCallback.figures_due`);
            every observation's scalars are logged either way.
        every_n_epochs, probe_split, probe_seed, on_error: see
            :class:`~xai_lightning.callbacks.ObserverCallback`.
    """

    namespace = "information"

    def __init__(
        self,
        layers: str | list[str] = "penultimate",
        num_probe: int = 256,
        every_n_epochs: int = 1,
        figure_every_n_epochs: int = 5,
        decoder_images: int = 512,
        decoder_split: ProbeSplit = "train",
        decoder_steps: int = 200,
        decoder_hidden: int = 0,
        decoder_lr: float = 1e-2,
        target_size: int = 8,
        feature_pool: int = 4,
        seed: int = 0,
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
        for name, value in (
            ("decoder_images", decoder_images),
            ("decoder_steps", decoder_steps),
            ("target_size", target_size),
            ("feature_pool", feature_pool),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}")
        if decoder_hidden < 0 or decoder_lr <= 0:
            raise ValueError(f"need decoder_hidden >= 0 and decoder_lr > 0; got {decoder_hidden}, {decoder_lr}")
        if decoder_split not in ("train", "val"):
            raise ValueError(f"decoder_split must be 'train' or 'val'; got {decoder_split!r}")
        self.layers = layers
        self.decoder_images = decoder_images
        self.decoder_split = decoder_split
        self.decoder_steps = decoder_steps
        self.decoder_hidden = decoder_hidden
        self.decoder_lr = decoder_lr
        self.target_size = target_size
        self.feature_pool = feature_pool
        self.seed = seed
        self.max_batch = max_batch
        self.output_key = output_key
        self.sites: list[FeatureSite] = []
        self.decoder_set: ProbeSet | None = None
        self.plane: InformationPlane | None = None
        self._pending_state: dict[str, Any] | None = None
        self._fit_targets = torch.zeros(0)  # g(x) of the decoder images and of the probe (set in prepare)
        self._probe_targets = torch.zeros(0)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(namespace=self.namespace, layers=self.layers, num_probe=self.num_probe)

    # ------------------------------------------------------------------ setup
    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> None:
        if probe.images.dim() != 4 or probe.labels is None:
            raise ValueError("InformationPlaneCallback needs labelled images (N, C, H, W) in the probe data.")
        one = probe.images[:1].to(pl_module.device)
        self.sites = resolve_feature_sites(pl_module, self.layers, forward=lambda: pl_module(one))
        features, logits = layer_features(
            pl_module, one, self.sites, pool=self.feature_pool, output_key=self.output_key
        )
        split = self.decoder_split
        if split == "train" and trainer.state.fn != "fit" and find_split(trainer, "train") is None:
            split = "val"  # trainer.validate: no training data is set up; use held-out validation images
            rank_zero_warn(
                "InformationPlaneCallback: no training data outside fit; fitting the decoders on "
                "validation images that are not in the probe set."
            )
        # Held out: when decoders and probe share a split, the decoder images never include a probe image.
        shared = split == self.probe_split and self._given_probe is None
        self.decoder_set = draw_reference(
            trainer,
            split,
            self.decoder_images,
            self.seed + 1,
            type(self).__name__,
            "fitting the decoders (decoder_images)",
            exclude=probe.indices if shared else None,
        )
        if self.decoder_set.labels is None:
            raise ValueError("InformationPlaneCallback: the decoder images need labels (q(y|h) is trained on them).")
        dims = {name: value.shape[1] for name, value in features.items()}
        # g(x) of the decoder and probe images: fixed sets, so pooled once here rather than every epoch.
        self._fit_targets = image_targets(self.decoder_set.images.cpu(), self.target_size)
        self._probe_targets = image_targets(probe.images.cpu(), self.target_size)
        target_dim = self._fit_targets.shape[1]
        previous = self._pending_state or (self.plane.training_state() if self.plane is not None else None)
        # A fresh module per fit: under ddp_spawn, tensors created before spawning are shared by the ranks.
        self.plane = InformationPlane(
            dims, logits.shape[1], target_dim, hidden=self.decoder_hidden, lr=self.decoder_lr, seed=self.seed
        )
        if previous is not None:
            try:
                self.plane.load_training_state(_cloned(previous))
            except (RuntimeError, ValueError, KeyError) as error:
                raise ValueError(
                    f"InformationPlaneCallback: the checkpoint's decoders do not fit this model's layers {dims} "
                    f"(target dimension {target_dim}); resume with the same layers, model and target_size."
                ) from error
        self._pending_state = None

    # ------------------------------------------------------------------ one observation
    def explain(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> dict[str, torch.Tensor]:
        assert self.decoder_set is not None
        features, _ = layer_features(
            pl_module,
            probe.images,
            self.sites,
            pool=self.feature_pool,
            max_batch=self.max_batch,
            output_key=self.output_key,
        )
        out = {f"features/{name}": value for name, value in features.items()}
        shard = self.decoder_set.shard(trainer.global_rank, trainer.world_size).to(probe.images.device)
        fit_features, _ = layer_features(
            pl_module,
            shard.images,
            self.sites,
            pool=self.feature_pool,
            max_batch=self.max_batch,
            output_key=self.output_key,
        )
        out.update({f"{REFERENCE_PREFIX}features/{name}": value for name, value in fit_features.items()})
        return out

    def gather(self, trainer: pl.Trainer, local: dict[str, torch.Tensor], total: int) -> dict[str, torch.Tensor]:
        return gather_in_parts(super().gather, trainer, local, total, len(self.decoder_set or ()))

    def report(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet, results: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        # prepare() built the plane and drew a labelled decoder set; the probe has labels (checked there too).
        assert self.plane is not None and self.decoder_set is not None and probe.labels is not None
        assert self.decoder_set.labels is not None
        names = [site.name for site in self.sites]
        fit_targets, probe_targets = self._fit_targets, self._probe_targets
        # Every rank fits identical decoders on identical gathered features (CPU, full batch).
        with observe(self.plane):
            self.plane.train()
            self.plane.fit(
                {n: results[f"{REFERENCE_PREFIX}features/{n}"] for n in names},
                self.decoder_set.labels.cpu(),
                fit_targets,
                self.decoder_steps,
            )
            bounds = self.plane.bounds({n: results[f"features/{n}"] for n in names}, probe.labels.cpu(), probe_targets)
        scalars: dict[str, float] = {}
        for name, (ixh, iyh) in bounds.items():
            scalars[f"{self.namespace}/{name}/ixh"] = ixh
            scalars[f"{self.namespace}/{name}/iyh"] = iyh
        scalars[f"{self.namespace}/decoder_steps"] = float(self.plane.steps)
        if self.figures_due(trainer):
            figure = self.figure(history_so_far(self.history, trainer.current_epoch, scalars))
            self.sinks.figure(f"{self.namespace}/plane", figure, trainer.global_step)
        return scalars

    def figure(self, history: list[dict[str, float]]) -> Any:
        """The information-plane figure (a matplotlib Figure) from ``history`` records."""
        trajectories = {}
        for site in self.sites:
            epochs, ixh = history_series(history, f"{self.namespace}/{site.name}/ixh")
            _, iyh = history_series(history, f"{self.namespace}/{site.name}/iyh")
            trajectories[site.name] = (epochs, ixh, iyh)
        return plane_figure(trajectories, "information plane (Darlow & Storkey 2020)")

    # ------------------------------------------------------------------ checkpointing
    def extra_state(self) -> dict[str, Any]:
        if self.plane is not None:
            return {"decoders": self.plane.training_state()}
        return {"decoders": self._pending_state} if self._pending_state is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        decoders = state.get("decoders")
        if decoders is None:
            return
        if self.plane is not None:  # Lightning restores callbacks after setup: the decoders exist
            self.plane.load_training_state(_cloned(decoders))
        else:  # loaded before setup (e.g. by hand): applied in prepare, once the feature sizes are known
            self._pending_state = decoders


def _cloned(state: Any) -> Any:
    """A deep copy of a (nested) state with every tensor cloned into this process's own memory."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {key: _cloned(value) for key, value in state.items()}
    if isinstance(state, list):
        return [_cloned(value) for value in state]
    if isinstance(state, tuple):
        return tuple(_cloned(value) for value in state)
    return state
