"""The base every observing callback stands on: schedule, probe set, guard, ranks, sinks, state.

A subclass implements three small methods:

* :meth:`ObserverCallback.prepare` — validate configuration against the model at ``setup``
  (e.g. resolve layer names with a forward pass on one probe image);
* :meth:`ObserverCallback.explain` — compute per-example results for a *shard* of the probe set,
  already inside the observer guard; returns a dict of tensors with the shard as first dimension;
* :meth:`ObserverCallback.report` — turn the full, gathered results into scalars and log
  images/tables through the sinks (called on every rank; only rank zero's sinks write).

The base owns the rest: the schedule; skipping the sanity check; drawing the probe set once,
seeded; running :func:`~xai_lightning.core.observe` with the trainer's precision; sharding the
probe across DDP ranks and all-gathering the results; logging; keeping a history that survives
checkpoint resume; and never losing a run to a failing explanation (``on_error="warn"`` logs a
warning and training continues).

**Schedule.** An observation follows every validation run of a scheduled epoch (``every_n_epochs``):
at the end of each epoch's validation, and also at mid-epoch validations
(``val_check_interval < 1`` or a number of steps). Epochs without validation
(``check_val_every_n_epoch > 1``, no validation data, ``limit_val_batches=0``) are observed at the
end of their training epoch. The final weights are always observed: when training ends (last
epoch, ``max_steps``, or a callback such as ``EarlyStopping`` stopping it) on weights that no
observation has seen yet, one more runs at the end of that training epoch (not for a callback given
explicit epochs, such as ``SanityCheckCallback(at_epochs=[...])``: those epochs only). ``trainer.validate()``
observes once per call. Sanity-check validation is never observed.

**Logging.** The scalars :meth:`ObserverCallback.report` returns go through Lightning's own
``LightningModule.log`` (epoch level), so they are in ``trainer.callback_metrics`` and
``trainer.logged_metrics`` — ``EarlyStopping(monitor="gradcam/<layer>/energy_in_mask")`` and
``ModelCheckpoint(monitor=...)`` work — and every logger writes them in the same row, at the same
step and with the same ``epoch`` as the epoch's validation metrics. Images, tables and figures
logged through :attr:`ObserverCallback.sinks` during an observation land on that step too; on
W&B they join the same row (one row per observation). The callback's constructor arguments are
logged once at ``setup`` (W&B ``run.config``, TensorBoard text, CSV ``hparams.yaml``).
"""

from __future__ import annotations

import logging
import traceback
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from xai_lightning.callbacks.probe import ProbeSet, ProbeSplit, draw_probe, find_probe_dataset, unshard
from xai_lightning.callbacks.settings import RecordsSettings
from xai_lightning.core import observe, unwrap_model
from xai_lightning.logging import SinkSet, logging_step, sinks_for_trainer

__all__ = ["ObserverCallback"]

#: Hooks in which ``LightningModule.log`` accepts epoch-level values (Lightning's ``_FxValidator``).
_LOGGING_HOOKS = ("on_validation_epoch_end", "on_train_epoch_end", "on_test_epoch_end")

log = logging.getLogger(__name__)


class ObserverCallback(RecordsSettings, pl.Callback):
    """Base class for callbacks that explain the model periodically without changing its training.

    Args:
        num_probe: number of probe images (drawn once, seeded, from ``probe_split``).
        every_n_epochs: explain in every n-th training epoch (epochs n-1, 2n-1, …, 0-based) and
            at the end of training (see *Schedule* in the module docstring).
        probe_split: ``"val"`` (default) or ``"train"`` data to draw the probe set from.
        probe_seed: seed of the probe draw and of the guard's generator for stochastic methods.
        on_error: ``"warn"`` (default): a failing explanation is reported as a warning and
            training continues; ``"raise"``: the error stops training.
    """

    #: prefix of every logged key, e.g. ``"gradcam"``.
    namespace: str = "observer"

    def __init__(
        self,
        num_probe: int = 32,
        every_n_epochs: int = 1,
        probe_split: ProbeSplit = "val",
        probe_seed: int = 0,
        on_error: Literal["warn", "raise"] = "warn",
    ) -> None:
        super().__init__()
        if num_probe < 1:
            raise ValueError(f"num_probe must be >= 1; got {num_probe}")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1; got {every_n_epochs}")
        if probe_split not in ("val", "train"):
            raise ValueError(f"probe_split must be 'val' or 'train'; got {probe_split!r}")
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error must be 'warn' or 'raise'; got {on_error!r}")
        self.num_probe = num_probe
        self.every_n_epochs = every_n_epochs
        self.probe_split = probe_split
        self.probe_seed = probe_seed
        self.on_error = on_error
        self.probe: ProbeSet | None = None
        self._given_probe: ProbeSet | None = None
        self.history: list[dict[str, float]] = []
        self.failures: list[str] = []
        self._done: set[tuple[str, int]] = set()  # (trainer function, global step) already observed
        self._validated_epoch: int | None = None  # the last epoch in which a validation run was observed
        self._step = 0
        self._sinks = SinkSet([])
        self.figure_every_n_epochs = 1  # see figures_due; set by set_figure_schedule

    def set_figure_schedule(self, figure_every_n_epochs: int) -> None:
        """Draw figures at every ``figure_every_n_epochs``-th observation only (see :meth:`figures_due`)."""
        if figure_every_n_epochs < 1:
            raise ValueError(f"figure_every_n_epochs must be >= 1; got {figure_every_n_epochs}")
        self.figure_every_n_epochs = figure_every_n_epochs

    # ------------------------------------------------------------------ user API
    def set_probe(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        object_masks: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        class_names: tuple[str, ...] | None = None,
    ) -> "ObserverCallback":
        """Explain these images instead of drawing a probe set from the data (Python API)."""
        self._given_probe = ProbeSet(
            images=images.detach().float().cpu(),
            labels=None if labels is None else torch.as_tensor(labels).long().cpu(),
            object_masks=None if object_masks is None else torch.as_tensor(object_masks).bool().cpu(),
            masks=None if masks is None else torch.as_tensor(masks).bool().cpu(),
            indices=torch.arange(images.shape[0]),
            class_names=class_names,
        )
        return self

    @property
    def location(self) -> str:
        """Where this callback's logged files land (after ``setup``)."""
        return self._sinks.location

    # ------------------------------------------------------------------ subclass API
    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> None:
        """Validate configuration against the model; runs inside the guard at ``setup``."""

    def explain(self, trainer: pl.Trainer, pl_module: Any, probe: ProbeSet) -> dict[str, torch.Tensor]:
        """Per-example results for ``probe`` (a shard), each tensor with ``len(probe)`` rows.

        ``pl_module`` is the LightningModule with any DDP/compile wrapper removed."""
        raise NotImplementedError

    def report(
        self, trainer: pl.Trainer, pl_module: Any, probe: ProbeSet, results: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        """Scalars from the gathered results; log images and tables through :attr:`sinks`."""
        raise NotImplementedError

    @property
    def sinks(self) -> SinkSet:
        """Where :meth:`report` logs images, tables and figures (rank zero only). During an
        observation every call lands on :attr:`step`, whatever step it is given."""
        return self._sinks

    @property
    def step(self) -> int:
        """The logging step of the current (or last) observation: the step of the epoch's
        validation metrics in every logger (not ``trainer.global_step``, which is one ahead at an
        epoch's end)."""
        return self._step

    def extra_state(self) -> dict[str, Any]:
        """Subclass state to checkpoint besides the history."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    # ------------------------------------------------------------------ Lightning hooks
    @property
    def state_key(self) -> str:
        return self._generate_state_key(namespace=self.namespace, num_probe=self.num_probe, probe_seed=self.probe_seed)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate"):
            return
        name = type(self).__name__
        if not trainer.loggers:
            raise ValueError(
                f"{name} logs images and scalars, but the Trainer has no logger (logger=False). Attach one, e.g. "
                "Trainer(logger=WandbLogger(offline=True)) or Trainer(logger=CSVLogger('logs'))."
            )
        self._sinks = sinks_for_trainer(trainer, deferred=True)
        self.probe = self._draw_probe(trainer, name)
        with observe(unwrap_model(pl_module), trainer=trainer, seed=self.probe_seed):
            self.prepare(trainer, pl_module, self.probe)
        if trainer.is_global_zero:
            self._sinks.config(self.namespace, {"class": type(self).__name__, **self.settings()})

    def _draw_probe(self, trainer: pl.Trainer, name: str) -> ProbeSet:
        if self._given_probe is not None:
            return self._given_probe
        source = find_probe_dataset(trainer, self.probe_split)
        if source is None:
            raise ValueError(
                f"{name} needs probe images, but the Trainer has no {self.probe_split} data. Pass "
                f"{'val_dataloaders' if self.probe_split == 'val' else 'train_dataloaders'}= to trainer.fit(), "
                f"give the datamodule a {self.probe_split}_dataloader(), set probe_split="
                f"'{'train' if self.probe_split == 'val' else 'val'}', or call callback.set_probe(images, labels)."
            )
        probe, available = draw_probe(source, self.num_probe, self.probe_seed)
        if available < self.num_probe:
            rank_zero_warn(
                f"{name}: num_probe={self.num_probe} but the {self.probe_split} data has only {available} images; "
                f"using all {available}."
            )
        return probe

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.probe is None:
            return
        if trainer.state.fn == "fit":
            self._validated_epoch = trainer.current_epoch
            if not self._scheduled(trainer):
                return
        self._observe(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe is None:
            return
        if self._training_ends(trainer) and self.observes_final_weights:  # once, unless the epochs are explicit
            self._observe(trainer, pl_module)
        elif self._validated_epoch != trainer.current_epoch and self._scheduled(trainer):
            self._observe(trainer, pl_module)  # an epoch without validation

    def figures_due(self, trainer: pl.Trainer) -> bool:
        """Whether this observation draws its figures (rank zero only): the first observation of the
        history, every ``figure_every_n_epochs``-th after it, the last one of a ``fit``, and every
        observation outside ``fit``. Scalars and tables are logged at every observation either way.

        Why a schedule: a figure that redraws the whole history (curves over epochs) costs as much
        as a fifth of an observation in matplotlib alone, and the history it shows is logged as
        scalars every epoch anyway; the last epoch's figure is always complete.
        """
        if not trainer.is_global_zero:
            return False
        if trainer.state.fn != "fit":
            return True
        return len(self.history) % self.figure_every_n_epochs == 0 or self._training_ends(trainer)

    @property
    def observes_final_weights(self) -> bool:
        """Whether the end of training adds an observation of the final weights (subclasses that run at
        explicitly listed epochs only say False)."""
        return True

    def _scheduled(self, trainer: pl.Trainer) -> bool:
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0 or self._training_ends(trainer)

    @staticmethod
    def _training_ends(trainer: pl.Trainer) -> bool:
        """Whether the epoch under way is the last one of this ``fit``."""
        if trainer.state.fn != "fit":
            return False
        max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
        return bool(
            trainer.should_stop
            or (max_epochs is not None and max_epochs > 0 and trainer.current_epoch >= max_epochs - 1)
            or (max_steps is not None and max_steps > 0 and trainer.global_step >= max_steps)
        )

    def _observe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Run one observation unless these weights were already observed in this ``fit``."""
        if trainer.state.fn == "fit":
            key = ("fit", trainer.global_step)
            if key in self._done:
                return
            self._done.add(key)
        self.run(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """An interrupted ``fit`` calls no ``teardown``: release everything held on the model now."""
        self.release(trainer, pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.release(trainer, pl_module)

    def release(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remove whatever the callback attached to the model outside the guard (hooks, attributes).

        Called at ``teardown`` and when ``fit`` is interrupted by an exception (``on_exception``).
        Explanations need nothing here: the guard removes their hooks itself. Override it when a
        subclass registers hooks for the training steps (and call ``super().release``).
        """

    # ------------------------------------------------------------------ one observation
    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Explain the probe set now, gather across ranks, report and log. Returns the scalars.

        Called by the schedule; may also be called by hand (scalars then go straight to the
        loggers at :attr:`step`, since ``LightningModule.log`` only works inside Lightning's hooks).
        """
        assert self.probe is not None, "run() before setup()"
        module = unwrap_model(pl_module)
        rank, world = trainer.global_rank, trainer.world_size
        self._step = logging_step(trainer)
        local: dict[str, torch.Tensor] = {}
        error: BaseException | None = None
        try:
            with observe(module, trainer=trainer, seed=self.probe_seed):
                # Sharded inside the guard: under trainer.validate's inference mode, indexing
                # outside it would create inference tensors that autograd cannot use.
                shard = self.probe.shard(rank, world).to(pl_module.device)
                local = {key: value.detach() for key, value in self.explain(trainer, module, shard).items()}
        except Exception as exc:  # noqa: BLE001 - reported below; training must go on
            error = exc
        # Every rank learns whether any rank failed before anyone waits in a collective.
        if self._any_rank(trainer, pl_module, error is not None):
            return self._fail(trainer, error)
        scalars: dict[str, float] = {}
        try:
            results = self.gather(trainer, local, len(self.probe))
            with self.sinks.at_step(self._step):
                scalars = self.report(trainer, module, self.probe, results)
        except Exception as exc:  # noqa: BLE001
            error = exc
        # Logging below may synchronise the ranks: all of them log, or none.
        if self._any_rank(trainer, pl_module, error is not None):
            self.sinks.commit()  # whatever rank zero logged before failing stays at this step
            return self._fail(trainer, error)
        scalars = {key: float(value) for key, value in scalars.items()}
        self._log_scalars(trainer, pl_module, scalars)
        if trainer.is_global_zero:
            self.sinks.flush()
        self.history.append({"epoch": float(trainer.current_epoch), "step": float(self._step), **scalars})
        return scalars

    @staticmethod
    def _any_rank(trainer: pl.Trainer, pl_module: pl.LightningModule, flag: bool) -> bool:
        if trainer.world_size == 1:
            return flag
        flags = torch.tensor(float(flag), device=pl_module.device)
        return bool(trainer.strategy.reduce(flags, reduce_op="sum") > 0)

    def _log_scalars(self, trainer: pl.Trainer, pl_module: pl.LightningModule, scalars: dict[str, float]) -> None:
        """Through ``LightningModule.log`` inside Lightning's epoch-end hooks; else straight to the sinks."""
        if scalars and getattr(pl_module, "_current_fx_name", None) in _LOGGING_HOOKS:
            for key, value in scalars.items():
                # Every rank holds the same gathered value; sync_dist only keeps Lightning's
                # distributed bookkeeping consistent (the mean of equal values is the value).
                pl_module.log(
                    key,
                    value,
                    on_step=False,
                    on_epoch=True,
                    batch_size=1,
                    add_dataloader_idx=False,
                    sync_dist=trainer.world_size > 1,
                )
            # Lightning writes the row right after this hook; W&B media logged meanwhile join it.
            if trainer.is_global_zero:
                self.sinks.commit(lightning_writes_row=True)
        elif trainer.is_global_zero:
            if scalars:
                self.sinks.scalars(scalars, self._step)
            self.sinks.commit()

    def gather(self, trainer: pl.Trainer, local: dict[str, torch.Tensor], total: int) -> dict[str, torch.Tensor]:
        """Combine every rank's :meth:`explain` output into full results, identical on all ranks.

        Default: per-example tensors are all-gathered and put back in probe order. Override for
        other reductions (e.g. summing counts with ``trainer.strategy.reduce``).
        """
        if trainer.world_size == 1:
            return {key: value.cpu() for key, value in local.items()}
        gathered = {}
        for key, value in local.items():
            dtype = value.dtype
            # gloo cannot all-gather bool tensors.
            stacked = trainer.strategy.all_gather(value.float() if dtype == torch.bool else value)
            gathered[key] = unshard(stacked, total).to(dtype).cpu()
        return gathered

    def _fail(
        self, trainer: pl.Trainer, error: BaseException | None, what: str = "and skipped this observation;"
    ) -> dict[str, float]:
        """Record a failure; raise it (``on_error="raise"``) or warn and let training go on."""
        detail = "".join(traceback.format_exception(error)) if error is not None else "on another rank"
        message = (
            f"{type(self).__name__} failed at epoch {trainer.current_epoch} {what} training continues. Cause:\n{detail}"
        )
        self.failures.append(message)
        if self.on_error == "raise" and error is not None:
            raise error
        rank_zero_warn(message)
        return {}

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "history": list(self.history),
            "observed_steps": sorted(step for _, step in self._done),
            **self.extra_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self._done = {("fit", int(step)) for step in state_dict.get("observed_steps", [])}
        self.load_extra_state(state_dict)
