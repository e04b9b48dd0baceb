"""UncertaintyCallback: watch calibration and out-of-distribution detection evolve while the model trains."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.hooks import RemovableHandle

from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.callbacks.explainer_network import average_gradients
from xai_lightning.callbacks.probe import ProbeSet, ProbeSplit, find_probe_dataset
from xai_lightning.core import (
    batch_slices,
    get_layer,
    isolated_rng,
    map_batched,
    normalize_layer_name,
    observe,
    select_logits,
    unwrap_model,
)
from xai_lightning.core.side_model import move_with_optimizer
from xai_lightning.data.batch import unpack_batch
from xai_lightning.logging import display_images, labelled_grid, to_uint8_hwc
from xai_lightning.logging.reliability import reliability_diagram
from xai_lightning.uncertainty import (
    FamiliarityAutoencoder,
    MCDropoutError,
    bayesian_layers,
    bayesian_logits,
    calibration_report,
    cross_fitted_probs,
    dropout_layers,
    entropy,
    fit_temperature,
    mc_dropout_logits,
    mutual_information,
    ood_detection,
    reconstruction_error,
    summarise_samples,
    training_step,
)

if TYPE_CHECKING:
    from xai_lightning.data.concept_world import ConceptWorld

__all__ = ["SCORES", "UncertaintyCallback"]

ScoreName = Literal[
    "max_softmax", "entropy", "mc_dropout_mi", "ensemble_disagreement", "bayesian_std", "reconstruction_error"
]
#: Every uncertainty score the callback knows, in the order it reports them.
SCORES: tuple[str, ...] = (
    "max_softmax",
    "entropy",
    "mc_dropout_mi",
    "ensemble_disagreement",
    "bayesian_std",
    "reconstruction_error",
)
OODKind = Literal["colour", "texture", "shape"]
#: Keys of the OOD probe's rows in the keyed noise: disjoint from the in-distribution probe's dataset indices.
_OOD_KEY_OFFSET = 1 << 30


class _EnsembleModel(Protocol):
    """A model with per-member logits ``(K, B, C)``, e.g. ``EnsembleClassifier`` (found by duck typing)."""

    def member_logits(self, x: torch.Tensor) -> torch.Tensor: ...


class _ShiftableWorld(Protocol):
    """Data that renders out-of-distribution copies of itself, as ``ConceptWorld`` does (found by duck typing)."""

    seed: int

    def shifted(self, kind: OODKind, num_samples: int | None = None, seed: int | None = None) -> ConceptWorld: ...


class UncertaintyCallback(ObserverCallback):
    """Calibration and OOD detection of a fixed probe set, every ``every_n_epochs`` epochs.

    Is the model's confidence trustworthy, and does its uncertainty single out inputs unlike its
    training data? Each scheduled epoch, inside the observer guard (training weights and random
    stream untouched), the callback scores the in-distribution probe (drawn from the validation
    data) and an out-of-distribution probe — by default ConceptWorld with **unseen colours**
    (:meth:`~xai_lightning.data.ConceptWorld.shifted`), or images given with :meth:`set_ood_probe`
    — and logs:

    ==================================================  ==============================================
    ``uncertainty/calibration/{ece,mce,nll,brier}``     calibration of the model's output on the probe
                                                        (ECE/MCE with ``num_bins`` equal-width bins,
                                                        NLL in nats, multi-class Brier score)
    ``uncertainty/calibration/{accuracy,confidence}``   accuracy and mean top-1 probability
    ``uncertainty/temperature``                         temperature T fitted on the probe (Guo et al.
                                                        2017; T > 1: the model is overconfident)
    ``uncertainty/scaled/{ece,mce,nll,brier}``          calibration after temperature scaling,
                                                        cross-fitted (each half of the probe scaled
                                                        with the T fitted on the other half)
    ``uncertainty/calibration_mc_dropout/<metric>``     calibration of the MC-dropout predictive mean
    ``uncertainty/calibration_bayesian/<metric>``       … of the Bayesian predictive mean
    ``uncertainty/ood/<score>/auroc``                   AUROC of telling OOD from in-distribution
                                                        probes by ``<score>`` (0.5 = chance)
    ``uncertainty/ood/<score>/fpr95``                   fraction of OOD probes accepted at the
                                                        threshold accepting 95 % of in-distribution
                                                        ones (lower is better)
    ``uncertainty/ood/<score>/{mean_in,mean_ood}``      mean score on each probe
    ``uncertainty/ood/accuracy``                        accuracy on the OOD probe, when its labels
                                                        mean something (e.g. shapes in unseen colours)
    ``uncertainty/familiarity/train_loss``              the familiarity autoencoder's mean training
                                                        loss since the last report (all ranks)
    ``uncertainty/familiarity/steps``                   its optimiser steps so far
    ``uncertainty/reliability``                         figure: the reliability diagram
    ``uncertainty/most_certain``                        image: the ``max_images`` probes (in and OOD
                                                        pooled) with the lowest ``rank_by`` score
    ``uncertainty/least_certain``                       image: … with the highest; OOD rows tagged
    ==================================================  ==============================================

    Scores (higher = more uncertain), each used only where the model provides it:

    ``max_softmax``            ``1 − max_k p_k`` (Hendrycks & Gimpel 2017), the baseline
    ``entropy``                predictive entropy of the model's output (nats)
    ``mc_dropout_mi``          BALD mutual information over ``mc_passes`` MC-dropout passes (Gal &
                               Ghahramani 2016) — models with dropout layers (p > 0)
    ``ensemble_disagreement``  mutual information over the members of an
                               :class:`~xai_lightning.models.EnsembleClassifier` (any module with
                               ``member_logits(x) -> (K, B, C)``)
    ``bayesian_std``           mean per-class std of the probabilities over ``bayesian_samples``
                               weight samples (Bayesian layers, e.g. a
                               :class:`~xai_lightning.models.VariationalClassifier`)
    ``reconstruction_error``   error of a familiarity autoencoder trained alongside the model on
                               the inputs (``familiarity="input"``) or on a layer's detached
                               features (``familiarity="<layer name>"``), with its own optimiser

    Sampling (MC-dropout masks, Bayesian weight noise) uses
    :class:`~xai_lightning.uncertainty.KeyedNoise`, keyed by ``probe_seed`` and each image's index:
    the same draws every epoch, on any number of ranks, and no global random generator is read.
    MC-dropout passes keep every module's mode and BatchNorm statistics as they were.

    Distributed (DDP): probes are sharded and gathered (the OOD probe too); temperature and
    metrics are computed from the gathered results, identical on every rank. The familiarity
    autoencoder has one copy per rank, initialised alike, and its gradients are averaged over ranks
    before each step, so the copies stay identical. Its weights and optimiser state are
    checkpointed.

    Args:
        scores: ``"auto"`` (every score the model provides) or a list of names from
            :data:`SCORES`; a requested score the model cannot provide fails at ``setup``.
        ood: ``"colour"`` (default), ``"texture"`` or ``"shape"``: the OOD probe is the probe's
            ConceptWorld with that concept's values replaced by unseen ones; None: only an OOD
            probe given with :meth:`set_ood_probe`, or none (calibration only).
        num_ood: OOD probe size (default: ``num_probe``).
        mc_passes: MC-dropout passes T ≥ 2, batched into one forward (or ``max_batch``-capped chunks).
        bayesian_samples: weight samples (≥ 2) of a Bayesian model.
        num_bins: confidence bins of ECE/MCE and the reliability diagram (15 as in Guo et al.).
        familiarity: None (off), ``"input"``, or the dotted name of a layer whose output the
            autoencoder learns to reconstruct.
        familiarity_bottleneck, familiarity_width: size of the autoencoder's code and layers.
        familiarity_lr: its Adam learning rate (one step per training batch).
        familiarity_seed: seed of its initialisation.
        rank_by: the score that orders the most/least certain images (one of the scores used).
        max_images: rows of each of the two image grids.
        output_key: where the logits are when the model returns a dict/tuple.
        max_batch: cap on rows per forward pass (probes × passes for sampling; None: no cap).
        num_probe, every_n_epochs, probe_split, probe_seed, on_error: see
            :class:`~xai_lightning.callbacks.ObserverCallback`. The probe needs labels.

    Example::

        callback = UncertaintyCallback(ood="colour", familiarity="input", num_probe=256)
        trainer = Trainer(callbacks=[callback], logger=WandbLogger(offline=True))
        trainer.fit(ImageClassifier(SmallCNN(dropout=0.2)), ConceptWorldDataModule())
    """

    namespace = "uncertainty"

    def __init__(
        self,
        scores: list[str] | Literal["auto"] = "auto",
        ood: OODKind | None = "colour",
        num_ood: int | None = None,
        mc_passes: int = 20,
        bayesian_samples: int = 20,
        num_bins: int = 15,
        familiarity: str | None = None,
        familiarity_bottleneck: int = 16,
        familiarity_width: int = 32,
        familiarity_lr: float = 1e-3,
        familiarity_seed: int = 0,
        rank_by: str = "entropy",
        max_images: int = 8,
        output_key: str | int | None = None,
        max_batch: int | None = None,
        num_probe: int = 128,
        every_n_epochs: int = 1,
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
        if scores != "auto":
            if isinstance(scores, str) or not scores:
                raise ValueError(
                    f"scores must be 'auto' or a non-empty list of names from {list(SCORES)}; got {scores!r}"
                )
            unknown = [name for name in scores if name not in SCORES]
            if unknown:
                raise ValueError(f"Unknown uncertainty score(s) {unknown}; choose from {list(SCORES)}")
        if ood not in (None, "colour", "texture", "shape"):
            raise ValueError(f"ood must be 'colour', 'texture', 'shape' or None; got {ood!r}")
        if mc_passes < 2:
            raise ValueError(
                f"mc_passes (T) must be >= 2: MC dropout measures the spread of several passes; got {mc_passes}"
            )
        if bayesian_samples < 2:
            raise ValueError(f"bayesian_samples must be >= 2 to measure a spread; got {bayesian_samples}")
        for name, value in (
            ("num_bins", num_bins),
            ("max_images", max_images),
            ("familiarity_bottleneck", familiarity_bottleneck),
            ("familiarity_width", familiarity_width),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}")
        if num_ood is not None and num_ood < 2:
            raise ValueError(f"num_ood must be >= 2; got {num_ood}")
        if familiarity_lr <= 0:
            raise ValueError(f"familiarity_lr must be > 0; got {familiarity_lr}")
        if rank_by not in SCORES:
            raise ValueError(f"rank_by must be one of {list(SCORES)}; got {rank_by!r}")
        self.scores = scores if scores == "auto" else list(scores)
        self.ood = ood
        self.num_ood = num_ood
        self.mc_passes = mc_passes
        self.bayesian_samples = bayesian_samples
        self.num_bins = num_bins
        self.familiarity = (
            None if familiarity is None else ("input" if familiarity == "input" else normalize_layer_name(familiarity))
        )
        self.familiarity_bottleneck = familiarity_bottleneck
        self.familiarity_width = familiarity_width
        self.familiarity_lr = familiarity_lr
        self.familiarity_seed = familiarity_seed
        self.rank_by = rank_by
        self.max_images = max_images
        self.output_key = output_key
        self.max_batch = max_batch
        #: The scores in use, resolved against the model at ``setup``.
        self.active_scores: list[str] = []
        self.ood_probe: ProbeSet | None = None
        self.ood_labels_meaningful = False
        self._given_ood: ProbeSet | None = None
        self.autoencoder: FamiliarityAutoencoder | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.familiarity_steps = 0
        self._train_sums = torch.zeros(2, dtype=torch.float64)  # loss sum, steps
        self._pending_state: dict[str, Any] | None = None
        self._handles: list[RemovableHandle] = []
        self._captured: torch.Tensor | None = None
        self._armed = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            namespace=self.namespace, num_probe=self.num_probe, ood=self.ood, familiarity=self.familiarity
        )

    def set_ood_probe(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> UncertaintyCallback:
        """Use these images as the out-of-distribution probe (Python API; overrides ``ood``).

        ``labels`` (optional) are only used for ``uncertainty/ood/accuracy`` — give them only when
        they are classes the model knows.
        """
        images = torch.as_tensor(images).detach().float().cpu()
        if images.dim() < 2 or images.shape[0] < 2:
            raise ValueError(f"The OOD probe needs at least 2 images (N, ...); got shape {tuple(images.shape)}")
        self._given_ood = ProbeSet(
            images=images,
            labels=None if labels is None else torch.as_tensor(labels).long().cpu(),
            indices=torch.arange(images.shape[0]),
        )
        return self

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._own_tensors()
        super().setup(trainer, pl_module, stage)

    def _own_tensors(self) -> None:
        """Private copies of tensors that ``ddp_spawn`` may have put in memory shared by all ranks
        (see ``ExplainerNetworkCallback._own_tensors``): in-place updates must not add up across ranks."""
        self._train_sums = self._train_sums.clone()
        if self.autoencoder is not None:
            with torch.no_grad():
                for tensor in list(self.autoencoder.parameters()) + list(self.autoencoder.buffers()):
                    tensor.data = tensor.data.clone()
        if self.optimizer is not None:
            for state in self.optimizer.state.values():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor):
                        state[key] = value.clone()

    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> None:
        name = type(self).__name__
        if probe.labels is None:
            raise ValueError(
                f"{name} measures calibration, which needs labelled probe images; the probe has no labels. "
                f"Use labelled validation data or set_probe(images, labels)."
            )
        if len(probe) < 2:
            raise ValueError(f"{name} needs at least 2 probe images; got {len(probe)}")
        module = unwrap_model(pl_module)
        device = pl_module.device
        self.ood_probe = self._build_ood_probe(trainer, probe)
        if self.ood_probe is not None and tuple(self.ood_probe.images.shape[1:]) != tuple(probe.images.shape[1:]):
            raise ValueError(
                f"{name}: the OOD probe's images are {tuple(self.ood_probe.images.shape[1:])} but the model is probed "
                f"with {tuple(probe.images.shape[1:])} (its input shape). Give OOD images of the same shape (resize "
                f"them, or render the shifted data at the same image_size)."
            )
        one = probe.images[:2].to(device)
        logits = select_logits(module(one), self.output_key)
        if self.ood_probe is not None:
            try:
                select_logits(module(self.ood_probe.images[:2].to(device)), self.output_key)
            except Exception as error:
                raise ValueError(
                    f"{name}: the model cannot run on the OOD probe images "
                    f"{tuple(self.ood_probe.images.shape)}: {error}"
                ) from error
        if int(probe.labels.max()) >= logits.shape[1]:
            raise ValueError(
                f"{name}: probe labels go up to {int(probe.labels.max())} but the model has {logits.shape[1]} classes"
            )
        self.active_scores = self._resolve_scores(module, one)
        if self.rank_by not in self.active_scores:
            raise ValueError(f"{name}: rank_by={self.rank_by!r} is not among the scores in use {self.active_scores}")
        if self.familiarity is not None:
            self._prepare_familiarity(module, one)

    def _build_ood_probe(self, trainer: pl.Trainer, probe: ProbeSet) -> ProbeSet | None:
        if self._given_ood is not None:
            self.ood_labels_meaningful = self._given_ood.labels is not None
            return self._given_ood
        if self.ood is None:
            return None
        world: _ShiftableWorld | None = None
        for split in (self.probe_split, "train" if self.probe_split == "val" else "val"):
            source = find_probe_dataset(trainer, split)
            source = getattr(source, "dataset", source)
            if hasattr(source, "shifted"):
                world = cast(_ShiftableWorld, source)
                break
        if world is None:
            raise ValueError(
                f"UncertaintyCallback(ood={self.ood!r}) renders out-of-distribution images with the probe data's "
                f"ConceptWorld.shifted(), but the trainer's data has no ConceptWorld. Call "
                f"callback.set_ood_probe(images) with your own OOD images, or pass ood=None (calibration only)."
            )
        count = self.num_ood or len(probe)
        with isolated_rng():
            shifted = world.shifted(self.ood, num_samples=count, seed=world.seed + 7919 + 1000 * self.probe_seed)
        self.ood_labels_meaningful = bool(getattr(shifted, "labels_meaningful", False))
        return ProbeSet(
            images=shifted.images.float().cpu(),
            labels=shifted.labels.long().cpu(),
            indices=torch.arange(count),
            class_names=tuple(shifted.class_names),
        )

    def _available(self, module: torch.nn.Module) -> dict[str, str | None]:
        """Each score → None if the model provides it, else the reason and fix."""
        ensemble = callable(getattr(module, "member_logits", None))
        reasons: dict[str, str | None] = {"max_softmax": None, "entropy": None}
        if ensemble:
            reasons["mc_dropout_mi"] = (
                "the model is an ensemble whose dropout runs on vectorised copies of its "
                "modules; use 'ensemble_disagreement' instead"
            )
        else:
            try:
                dropout_layers(module)
                reasons["mc_dropout_mi"] = None
            except MCDropoutError as error:
                reasons["mc_dropout_mi"] = str(error)
        reasons["ensemble_disagreement"] = (
            None
            if ensemble
            else (
                "ensemble disagreement needs an ensemble: train an EnsembleClassifier(network, num_members=5) (or give "
                "the LightningModule a member_logits(x) -> (K, B, C) method)"
            )
        )
        reasons["bayesian_std"] = (
            None
            if bayesian_layers(module)
            else (
                "a Bayesian std needs Bayesian layers: train a VariationalClassifier(network), or build the network "
                "with BayesianLinear/BayesianConv2d (xai_lightning.uncertainty.make_bayesian converts one)"
            )
        )
        reasons["reconstruction_error"] = (
            None
            if self.familiarity is not None
            else ("reconstruction error needs the familiarity autoencoder: pass familiarity='input' (or a layer name)")
        )
        return reasons

    def _resolve_scores(self, module: torch.nn.Module, one: torch.Tensor) -> list[str]:
        reasons = self._available(module)
        if self.scores == "auto":
            chosen = [name for name in SCORES if reasons[name] is None]
        else:
            missing = [f"{name}: {reasons[name]}" for name in self.scores if reasons[name] is not None]
            if missing:
                raise ValueError(
                    "UncertaintyCallback cannot compute the requested score(s) for this model. "
                    + " | ".join(missing)
                    + " | Or drop them from scores= (or use scores='auto')."
                )
            chosen = [name for name in SCORES if name in self.scores]
        if "ensemble_disagreement" in chosen:
            members = cast(_EnsembleModel, module).member_logits(one)
            if members.dim() != 3 or members.shape[0] < 2:
                raise ValueError(
                    f"member_logits must return (K, B, C) with K >= 2 members; got {tuple(members.shape)}. "
                    f"Use num_members >= 2."
                )
        if "mc_dropout_mi" in chosen:
            # Dropout modules that never run (functional dropout, unused modules) fail here, not after an epoch.
            try:
                mc_dropout_logits(module, one, passes=2, seed=self.probe_seed, output_key=self.output_key)
            except MCDropoutError as error:
                if self.scores != "auto":
                    raise
                rank_zero_warn(f"UncertaintyCallback leaves out mc_dropout_mi: {error}")
                chosen.remove("mc_dropout_mi")
        return chosen

    # ------------------------------------------------------------------ familiarity autoencoder
    def _prepare_familiarity(self, module: torch.nn.Module, one: torch.Tensor) -> None:
        if self.familiarity == "input":
            shape = tuple(one.shape[1:])
        else:
            assert self.familiarity is not None  # called only with familiarity on
            layer = get_layer(module, self.familiarity)  # unknown names list the valid ones
            seen: list[torch.Tensor] = []
            handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
            try:
                module(one)
            finally:
                handle.remove()
            if not seen or not isinstance(seen[0], torch.Tensor):
                raise ValueError(
                    f"familiarity={self.familiarity!r}: that layer did not run, or did not return one "
                    f"tensor, in the model's forward pass (an EnsembleClassifier runs vectorised copies "
                    f"of its layers). Choose a layer with a tensor output, or familiarity='input'."
                )
            shape = tuple(seen[0].shape[1:])
        if self.autoencoder is None or self.autoencoder.shape != shape:
            with isolated_rng():
                torch.default_generator.manual_seed(self.familiarity_seed)
                self.autoencoder = FamiliarityAutoencoder(shape, self.familiarity_bottleneck, self.familiarity_width)
            self.autoencoder.to(one.device).eval()
            self.optimizer = torch.optim.Adam(self.autoencoder.parameters(), lr=self.familiarity_lr)
            self.familiarity_steps = 0
        if self._pending_state is not None:
            self._load_autoencoder(self._pending_state)
            self._pending_state = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        if self.familiarity not in (None, "input"):
            layer = get_layer(unwrap_model(pl_module), self.familiarity)
            self._handles.append(layer.register_forward_hook(self._recorder))

    def _recorder(self, _module: torch.nn.Module, _inputs: object, output: object) -> None:
        if self._armed and isinstance(output, torch.Tensor):
            self._captured = output.detach().clone()  # a copy: in-place ops downstream must not change it

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._captured = None
        self._armed = self.autoencoder is not None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._armed = False
        if self.autoencoder is None:
            return
        data: torch.Tensor | None
        if self.familiarity == "input":
            data = unpack_batch(batch).inputs
        else:
            data, self._captured = self._captured, None
        if not isinstance(data, torch.Tensor):
            return
        self.train_familiarity(trainer, data)

    def train_familiarity(self, trainer: pl.Trainer | None, data: torch.Tensor) -> None:
        """One step of the familiarity autoencoder on ``data`` (inputs or features of one batch, detached).

        Inside the observer guard: the model's modes and the training's random stream are untouched,
        and no gradient reaches the model.
        """
        assert self.autoencoder is not None and self.optimizer is not None
        autoencoder = self.autoencoder  # narrowed, for the closure below
        self._move_to(data.device)
        world = trainer.world_size if trainer is not None else 1

        def average() -> None:
            import torch.distributed as dist

            if world > 1 and dist.is_available() and dist.is_initialized():
                average_gradients(list(autoencoder.parameters()), dist.get_world_size(), dist.all_reduce)

        model = unwrap_model(trainer.lightning_module) if trainer is not None else self.autoencoder
        with observe(model):
            loss = training_step(self.autoencoder, self.optimizer, data, before_step=average)
        self.familiarity_steps += 1
        # Out of place: never into memory another rank may share (see _own_tensors).
        self._train_sums = self._train_sums.to(loss.device) + torch.stack(
            [loss.double(), torch.ones_like(loss).double()]
        )

    def _move_to(self, device: torch.device) -> None:
        assert self.autoencoder is not None and self.optimizer is not None
        move_with_optimizer(self.autoencoder, self.optimizer, device)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()

    def release(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remove the familiarity feature hook (at ``teardown`` and after an interrupted ``fit``)."""
        super().release(trainer, pl_module)
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        self._armed = False
        self._captured = None

    # ------------------------------------------------------------------ observation
    def explain(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> dict[str, torch.Tensor]:
        keys = probe.indices if probe.indices is not None else torch.arange(len(probe))
        results = self._score(pl_module, probe.images, keys.to(probe.images.device), with_predictive=True)
        if self.ood_probe is not None:
            shard = self.ood_probe.shard(trainer.global_rank, trainer.world_size).to(probe.images.device)
            assert shard.indices is not None  # both OOD probe sources number their rows
            ood_keys = shard.indices.to(shard.images.device) + _OOD_KEY_OFFSET
            results.update(
                {
                    f"ood/{key}": value
                    for key, value in self._score(pl_module, shard.images, ood_keys, with_predictive=False).items()
                }
            )
        return results

    def _forward_logits(self, module: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return map_batched(
                lambda rows: select_logits(module(rows), self.output_key).float(), images, max_batch=self.max_batch
            )

    def _score(
        self, module: torch.nn.Module, images: torch.Tensor, keys: torch.Tensor, with_predictive: bool
    ) -> dict[str, torch.Tensor]:
        """Logits and every active score of ``images (n, ...)``; predictive means of the sampling methods
        too when ``with_predictive`` (for their calibration)."""
        out: dict[str, torch.Tensor] = {}
        if "ensemble_disagreement" in self.active_scores:
            with torch.no_grad():
                members = torch.cat(
                    [
                        cast(_EnsembleModel, module).member_logits(images[rows]).float()
                        for rows in batch_slices(images.shape[0], self.max_batch)
                    ],
                    dim=1,
                )
            combine = getattr(module, "combine", None)
            logits = combine(members) if callable(combine) else self._forward_logits(module, images)
            out["score/ensemble_disagreement"] = mutual_information(members.softmax(-1))
        else:
            logits = self._forward_logits(module, images)
        probs = logits.softmax(-1)
        out["logits"] = logits
        out["score/max_softmax"] = 1.0 - probs.max(-1).values
        out["score/entropy"] = entropy(probs)
        if "mc_dropout_mi" in self.active_scores:
            samples = (
                mc_dropout_logits(
                    module,
                    images,
                    passes=self.mc_passes,
                    seed=self.probe_seed,
                    keys=keys,
                    max_batch=self.max_batch,
                    output_key=self.output_key,
                )
                .float()
                .softmax(-1)
            )
            summary = summarise_samples(samples)
            out["score/mc_dropout_mi"] = summary.mutual_information
            if with_predictive:
                out["predictive/mc_dropout"] = summary.mean
        if "bayesian_std" in self.active_scores:
            samples = (
                bayesian_logits(
                    module,
                    images,
                    samples=self.bayesian_samples,
                    seed=self.probe_seed,
                    keys=keys,
                    max_batch=self.max_batch,
                    output_key=self.output_key,
                )
                .float()
                .softmax(-1)
            )
            summary = summarise_samples(samples)
            out["score/bayesian_std"] = summary.std
            if with_predictive:
                out["predictive/bayesian"] = summary.mean
        if "reconstruction_error" in self.active_scores:
            out["score/reconstruction_error"] = self._reconstruction_error(module, images)
        return out

    def _reconstruction_error(self, module: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        assert self.autoencoder is not None
        self._move_to(images.device)
        self.autoencoder.eval()
        if self.familiarity == "input":
            return reconstruction_error(self.autoencoder, images, self.max_batch)
        assert self.familiarity is not None  # the autoencoder exists only with familiarity on
        layer = get_layer(module, self.familiarity)
        features: list[torch.Tensor] = []
        handle = layer.register_forward_hook(lambda _m, _i, output: features.append(output.detach()))
        try:
            self._forward_logits(module, images)
        finally:
            handle.remove()
        return reconstruction_error(self.autoencoder, torch.cat(features), self.max_batch)

    def gather(self, trainer: pl.Trainer, local: dict[str, torch.Tensor], total: int) -> dict[str, torch.Tensor]:
        """In-distribution and OOD results are gathered separately: the two probes differ in size."""
        in_dist = {key: value for key, value in local.items() if not key.startswith("ood/")}
        gathered = super().gather(trainer, in_dist, total)
        ood = {key: value for key, value in local.items() if key.startswith("ood/")}
        if ood:
            assert self.ood_probe is not None
            gathered.update(super().gather(trainer, ood, len(self.ood_probe)))
        return gathered

    def report(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet, results: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        assert probe.labels is not None
        labels = probe.labels.cpu()
        logits = results["logits"].float()
        scalars: dict[str, float] = {}
        calibration = calibration_report(logits.softmax(-1), labels, self.num_bins)
        scalars.update({f"{self.namespace}/calibration/{key}": value for key, value in calibration.scalars().items()})
        fit = fit_temperature(logits, labels)
        scalars[f"{self.namespace}/temperature"] = fit.temperature
        scaled = calibration_report(cross_fitted_probs(logits, labels), labels, self.num_bins)
        scalars.update(
            {f"{self.namespace}/scaled/{key}": getattr(scaled, key) for key in ("ece", "mce", "nll", "brier")}
        )
        for method in ("mc_dropout", "bayesian"):
            if f"predictive/{method}" in results:
                report = calibration_report(results[f"predictive/{method}"].float(), labels, self.num_bins)
                scalars.update(
                    {f"{self.namespace}/calibration_{method}/{key}": value for key, value in report.scalars().items()}
                )
        if self.ood_probe is not None:
            for name in self.active_scores:
                detection = ood_detection(results[f"score/{name}"], results[f"ood/score/{name}"])
                scalars.update(
                    {f"{self.namespace}/ood/{name}/{key}": value for key, value in detection.scalars().items()}
                )
            if self.ood_labels_meaningful and self.ood_probe.labels is not None:
                hits = results["ood/logits"].argmax(-1) == self.ood_probe.labels
                scalars[f"{self.namespace}/ood/accuracy"] = float(hits.float().mean())
        if self.autoencoder is not None:
            scalars.update(self._familiarity_scalars(trainer, pl_module))
        if trainer.is_global_zero:
            figure = reliability_diagram(
                calibration.bin_edges,
                calibration.bin_accuracy,
                calibration.bin_confidence,
                calibration.bin_count,
                ece=calibration.ece,
                title=f"Reliability, epoch {trainer.current_epoch}",
            )
            self.sinks.figure(f"{self.namespace}/reliability", figure, trainer.global_step)
            self._log_extremes(trainer, probe, results)
        return scalars

    def _familiarity_scalars(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        sums = self._train_sums.to(pl_module.device)
        if trainer.world_size > 1:
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
        sums = sums.double().cpu()
        self._train_sums = torch.zeros(2, dtype=torch.float64)
        scalars = {f"{self.namespace}/familiarity/steps": float(self.familiarity_steps)}
        if sums[1] > 0:
            scalars[f"{self.namespace}/familiarity/train_loss"] = float(sums[0] / sums[1])
        return scalars

    def _log_extremes(self, trainer: pl.Trainer, probe: ProbeSet, results: dict[str, torch.Tensor]) -> None:
        """Two grids: the pooled (in-distribution + OOD) probes with the lowest and the highest ``rank_by`` score."""
        sets = [("in", probe.images, results["logits"], results[f"score/{self.rank_by}"], probe.labels)]
        if self.ood_probe is not None:
            sets.append(
                (
                    "ood",
                    self.ood_probe.images,
                    results["ood/logits"],
                    results[f"ood/score/{self.rank_by}"],
                    self.ood_probe.labels if self.ood_labels_meaningful else None,
                )
            )
        images = torch.cat([group[1].cpu() for group in sets])
        probabilities = torch.cat([group[2].cpu() for group in sets]).float().softmax(-1)
        scores = torch.cat([group[3].cpu() for group in sets]).float()
        tags: list[str] = []
        labels: list[int | None] = []
        for tag, group_images, _, _, group_labels in sets:
            tags += [tag] * group_images.shape[0]
            labels += [None] * group_images.shape[0] if group_labels is None else [int(v) for v in group_labels]
        names = probe.class_names

        def name(k: int) -> str:
            return names[k] if names is not None and 0 <= k < len(names) else str(k)

        def caption(row: int) -> str:
            predicted = int(probabilities[row].argmax())
            label = labels[row]
            parts = [f"[{tags[row]}]"] + ([] if label is None else [f"y={name(label)}"])
            parts += [
                f"pred={name(predicted)}",
                f"p={float(probabilities[row, predicted]):.2f}",
                f"{self.rank_by}={float(scores[row]):.3f}",
            ]
            return " ".join(parts)

        shown = min(self.max_images, images.shape[0])
        order = torch.argsort(scores, stable=True)
        for key, rows in (("most_certain", order[:shown]), ("least_certain", order.flip(0)[:shown])):
            panels = to_uint8_hwc(display_images(images[rows]).unsqueeze(1))
            grid = labelled_grid(panels, row_captions=[caption(int(row)) for row in rows])
            text = (
                f"{key.replace('_', ' ')} by {self.rank_by}, epoch {trainer.current_epoch}, step {trainer.global_step}"
            )
            self.sinks.images(f"{self.namespace}/{key}", [np.ascontiguousarray(grid)], [text], trainer.global_step)

    # ------------------------------------------------------------------ checkpointing
    def extra_state(self) -> dict[str, Any]:
        if self.autoencoder is None:
            return {} if self._pending_state is None else dict(self._pending_state)
        return {
            "autoencoder": {key: value.detach().cpu().clone() for key, value in self.autoencoder.state_dict().items()},
            "autoencoder_shape": tuple(self.autoencoder.shape),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "familiarity_steps": self.familiarity_steps,
            "train_sums": self._train_sums.detach().double().cpu().clone(),
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "autoencoder" not in state:
            return
        if self.autoencoder is not None:
            self._load_autoencoder(state)
        else:
            self._pending_state = dict(state)  # restored at setup, once the input shape is known

    def _load_autoencoder(self, state: dict[str, Any]) -> None:
        assert self.autoencoder is not None and self.optimizer is not None
        if tuple(state["autoencoder_shape"]) != tuple(self.autoencoder.shape):
            raise ValueError(
                f"The checkpoint's familiarity autoencoder reconstructs {tuple(state['autoencoder_shape'])} "
                f"but familiarity={self.familiarity!r} gives {self.autoencoder.shape}; resume with the same "
                f"familiarity setting and model."
            )
        device = next(self.autoencoder.parameters()).device
        self.autoencoder.load_state_dict({key: value.to(device) for key, value in state["autoencoder"].items()})
        if state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.familiarity_steps = int(state.get("familiarity_steps", 0))
        self._train_sums = state.get("train_sums", torch.zeros(2, dtype=torch.float64)).clone()
