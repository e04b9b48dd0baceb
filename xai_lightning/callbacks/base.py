"""The base every observing callback stands on: schedule, probe set, guard, ranks, sinks, state.

A subclass implements three small methods:

* :meth:`ObserverCallback.prepare` — validate configuration against the model at ``setup``
  (e.g. resolve layer names with a forward pass on one probe image);
* :meth:`ObserverCallback.explain` — compute per-example results for a *shard* of the probe set,
  already inside the observer guard; returns a dict of tensors with the shard as first dimension;
* :meth:`ObserverCallback.report` — turn the full, gathered results into scalars and log
  images/tables through the sinks (called on every rank; only rank zero's sinks write).

The base owns the rest: ``every_n_epochs``; skipping the sanity check; drawing the probe set
once, seeded; running :func:`~xai_lightning.core.observe` with the trainer's precision;
sharding the probe across DDP ranks and all-gathering the results; keeping a history that
survives checkpoint resume; and never losing a run to a failing explanation
(``on_error="warn"`` logs a warning and training continues).
"""

from __future__ import annotations

import logging
import traceback
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from xai_lightning.callbacks.probe import ProbeSet, ProbeSplit, draw_probe, find_probe_dataset, unshard
from xai_lightning.core import observe, unwrap_model
from xai_lightning.logging import SinkSet, sinks_for_trainer

__all__ = ["ObserverCallback"]

log = logging.getLogger(__name__)


class ObserverCallback(pl.Callback):
    """Base class for callbacks that explain the model periodically without changing its training.

    Args:
        num_probe: number of probe images (drawn once, seeded, from ``probe_split``).
        every_n_epochs: explain after every n-th training epoch (epochs n-1, 2n-1, …, 0-based)
            and after the last one.
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
        self._done: set[tuple[str, int]] = set()
        self._sinks = SinkSet([])

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

    def explain(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> dict[str, torch.Tensor]:
        """Per-example results for ``probe`` (a shard), each tensor with ``len(probe)`` rows."""
        raise NotImplementedError

    def report(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet, results: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        """Scalars from the gathered results; log images and tables through :attr:`sinks`."""
        raise NotImplementedError

    @property
    def sinks(self) -> SinkSet:
        return self._sinks

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
        self._sinks = sinks_for_trainer(trainer)
        self.probe = self._draw_probe(trainer, name)
        with observe(unwrap_model(pl_module), trainer=trainer, seed=self.probe_seed):
            self.prepare(trainer, pl_module, self.probe)

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
        if trainer.sanity_checking:
            return
        self._maybe_run(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Covers epochs without a validation loop (no val data, check_val_every_n_epoch > 1).
        self._maybe_run(trainer, pl_module)

    def _scheduled(self, trainer: pl.Trainer) -> bool:
        if trainer.state.fn != "fit":
            return True  # trainer.validate(): explain once
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch == trainer.max_epochs - 1
        return (epoch + 1) % self.every_n_epochs == 0 or last

    def _maybe_run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe is None:
            return
        key = (str(trainer.state.fn), trainer.current_epoch)
        if key in self._done or not self._scheduled(trainer):
            return
        self._done.add(key)
        self.run(trainer, pl_module)

    # ------------------------------------------------------------------ one observation
    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Explain the probe set now, gather across ranks, report and log. Returns the scalars."""
        assert self.probe is not None, "run() before setup()"
        module = unwrap_model(pl_module)
        rank, world = trainer.global_rank, trainer.world_size
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
        failed = float(error is not None)
        if world > 1:
            failed = float(trainer.strategy.reduce(torch.tensor(failed, device=pl_module.device), reduce_op="sum"))
        if failed:
            return self._fail(trainer, error)
        try:
            results = self.gather(trainer, local, len(self.probe))
            scalars = self.report(trainer, module, self.probe, results)
        except Exception as exc:  # noqa: BLE001
            return self._fail(trainer, exc)
        step = trainer.global_step
        if trainer.is_global_zero and scalars:
            self.sinks.scalars(scalars, step)
        if trainer.is_global_zero:
            self.sinks.flush()
        self.history.append({"epoch": float(trainer.current_epoch), "step": float(step), **scalars})
        return scalars

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

    def _fail(self, trainer: pl.Trainer, error: BaseException | None) -> dict[str, float]:
        detail = "".join(traceback.format_exception(error)) if error is not None else "on another rank"
        message = (
            f"{type(self).__name__} failed at epoch {trainer.current_epoch} and skipped this observation; "
            f"training continues. Cause:\n{detail}"
        )
        self.failures.append(message)
        if self.on_error == "raise" and error is not None:
            raise error
        rank_zero_warn(message)
        return {}

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "done": sorted(self._done), **self.extra_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self._done = {tuple(item) for item in state_dict.get("done", [])}
        self.load_extra_state(state_dict)
