"""ExplainerNetworkCallback: train an explainer network (Zhang et al. 2018) alongside the performer."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle

from xai_lightning.callbacks.base import ObserverCallback
from xai_lightning.callbacks.probe import ProbeSet, ProbeSplit, find_probe_dataset
from xai_lightning.core import get_layer, isolated_rng, layer_names, normalize_layer_name, unwrap_model
from xai_lightning.core.side_model import move_with_optimizer
from xai_lightning.explainer import (
    ExplainerNetwork,
    explainer_outputs,
    layer_outputs_in_order,
    summarise_explainer_outputs,
)
from xai_lightning.logging import display_images, labelled_grid, overlay, to_uint8_hwc

__all__ = ["ExplainerNetworkCallback"]

_TRAIN_TERMS = ("loss", "reconstruction_error", "filter_loss", "p")


class ExplainerNetworkCallback(ObserverCallback):
    """Train an explainer network on the performer's features while the performer trains.

    Zhang, Yang, Liu, Wu & Zhu, "Unsupervised Learning of Neural Networks to Explain Neural
    Networks" (2018); see :class:`~xai_lightning.explainer.ExplainerNetwork`. During every training
    step, forward hooks record the performer's outputs at ``input_layer`` and ``target_layer``
    (detached copies: nothing flows back into the performer); after the step, the explainer takes
    ``steps_per_batch`` optimiser steps (its own Adam) to reconstruct the target-layer features from
    the input-layer features, with the filter loss pushing its interpretable filters towards one
    part each. The performer's weights, gradients, optimiser and random stream are untouched:
    training with this callback gives bit-identical performer weights (tested with dropout).

    Every ``every_n_epochs`` epochs it evaluates the explainer on a fixed probe set (eval mode,
    inside the observer guard) and logs:

    ==================================================  =============================================
    ``explainer/p``                                     mean share ``p`` of the interpretable track
    ``explainer/reconstruction_error``                  ``Σ‖x̂ − x*‖² / Σ‖x*‖²`` on the probe set
    ``explainer/filter_loss``                           filter loss (−MI, nats) of the interpretable
                                                        filters on the probe set
    ``explainer/agreement``                             fraction of probe images where the performer
                                                        predicts the same class through the
                                                        explainer's reconstruction as on its own
    ``explainer/accuracy/performer``                    accuracy of the performer (needs labels)
    ``explainer/accuracy/explainer``                    accuracy when the performer's upper layers run
                                                        on the reconstruction
    ``explainer/delta_error``                           the paper's Δ error: the difference of the two
    ``explainer/location_instability/explainer``        Zhang's location instability of the
                                                        explainer's interpretable filters (needs
                                                        landmarks: ConceptWorld data provides them)
    ``explainer/location_instability/input``            … of the performer's own filters at
                                                        ``input_layer`` (the baseline to beat)
    ``explainer/location_instability/target``           … at ``target_layer``
    ``explainer/train/<term>``                          mean of ``loss``, ``reconstruction_error``,
                                                        ``filter_loss``, ``p`` over the training
                                                        steps since the last report (all ranks)
    ``explainer/steps``                                 explainer optimiser steps so far
    ``explainer/activation_maps``                       image: probe rows × (image | the first
                                                        ``max_filters`` interpretable filters'
                                                        maps overlaid)
    ``explainer/filters``                               table: per filter, its instability
    ==================================================  =============================================

    The explainer's weights, its optimiser state and its step count are part of the checkpoint,
    so a resumed run continues the explainer's training where it stopped.

    Distributed (DDP): every rank holds a private copy of the explainer, initialised from ``seed``
    (so the copies start equal) and trained on that rank's captured features; the explainer's
    gradients are averaged over ranks (one ``all_reduce``) before every optimiser step, as DDP does
    for the performer, so the copies stay identical and the explainer learns from the whole global
    batch. ``explainer/train/*`` are means over every rank's steps. Probe evaluation is sharded and
    gathered like every observer. (Tested with 2 processes against a one-process replay.)

    Args:
        input_layer: dotted name of the performer layer the explainer reads (a spatial
            ``(B, C, h, w)`` output).
        target_layer: dotted name of the upper layer it reconstructs (spatial, and run after
            ``input_layer``). Both are checked at ``setup``.
        num_filters: interpretable filters per interpretable layer.
        lr: the explainer's Adam learning rate.
        reconstruction_weight, filter_weight, eta: the loss weights ``λ``, ``λ_f``, ``η``.
        steps_per_batch: explainer optimiser steps per performer training step.
        seed: seed of the explainer's initialisation (the training stream is not touched).
        top_k: top-activating probe images per filter for location instability.
        max_images, max_filters: rows and filter columns of the activation-map image.
        output_key: where the logits are when the model returns a dict/tuple.
        max_batch: cap on probe images per forward pass (None: the whole shard at once).
        num_probe, every_n_epochs, probe_split, probe_seed, on_error: see
            :class:`~xai_lightning.callbacks.ObserverCallback`.

    Hooks are registered on the module as it is at ``fit`` start: add the callback before
    ``torch.compile`` wraps the model, or pass the uncompiled module (hooks added to a compiled
    graph are ignored).

    Example::

        callback = ExplainerNetworkCallback(input_layer="features.13", target_layer="features.20", num_filters=16)
        trainer = Trainer(callbacks=[callback], logger=WandbLogger(offline=True))
    """

    namespace = "explainer"

    def __init__(
        self,
        input_layer: str,
        target_layer: str,
        num_filters: int = 16,
        lr: float = 1e-3,
        reconstruction_weight: float = 1.0,
        filter_weight: float = 0.1,
        eta: float = 0.05,
        steps_per_batch: int = 1,
        seed: int = 0,
        top_k: int = 20,
        max_images: int = 8,
        max_filters: int = 8,
        output_key: str | int | None = None,
        max_batch: int | None = None,
        num_probe: int = 64,
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
        for name, value in (
            ("num_filters", num_filters),
            ("steps_per_batch", steps_per_batch),
            ("max_images", max_images),
            ("max_filters", max_filters),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}")
        if top_k < 2:
            raise ValueError(f"top_k must be >= 2 (location instability is a standard deviation); got {top_k}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0; got {lr}")
        self.input_layer = normalize_layer_name(input_layer)
        self.target_layer = normalize_layer_name(target_layer)
        self.num_filters = num_filters
        self.lr = lr
        self.reconstruction_weight = reconstruction_weight
        self.filter_weight = filter_weight
        self.eta = eta
        self.steps_per_batch = steps_per_batch
        self.seed = seed
        self.top_k = top_k
        self.max_images = max_images
        self.max_filters = max_filters
        self.output_key = output_key
        self.max_batch = max_batch
        self.explainer: ExplainerNetwork | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.steps = 0
        self.landmarks: torch.Tensor | None = None
        self._given_landmarks: torch.Tensor | None = None
        self._pending_state: dict[str, Any] | None = None
        self._train_sums = torch.zeros(len(_TRAIN_TERMS) + 1, dtype=torch.float64)  # terms, count
        self._handles: list[RemovableHandle] = []
        self._captured: dict[str, torch.Tensor] = {}
        self._armed = False
        self._paused_epoch: int | None = None  # training failed in this epoch: resume at the next one

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            namespace=self.namespace,
            input_layer=self.input_layer,
            target_layer=self.target_layer,
            num_filters=self.num_filters,
        )

    def set_landmarks(self, landmarks: torch.Tensor) -> "ExplainerNetworkCallback":
        """Part landmarks ``(N, L, 2)`` (``(x, y)`` fractions, NaN where absent) of the images given
        to :meth:`set_probe`. Probe sets drawn from ConceptWorld data get theirs automatically."""
        self._given_landmarks = torch.as_tensor(landmarks).float().cpu()
        return self

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._own_tensors()
        super().setup(trainer, pl_module, stage)

    def _own_tensors(self) -> None:
        """Give this process private copies of the callback's tensors.

        ``strategy="ddp_spawn"`` sends the callbacks to every rank through ``torch.multiprocessing``,
        which moves CPU tensors into memory shared by the parent and all ranks. Lightning copies the
        LightningModule's weights back out; a callback's tensors stay shared, so in-place updates
        (an explainer built by an earlier ``fit`` in the parent, its Adam state, the running loss
        sums) would be applied once per rank to the same memory.
        """
        self._train_sums = self._train_sums.clone()
        if self.explainer is not None:
            with torch.no_grad():
                for tensor in list(self.explainer.parameters()) + list(self.explainer.buffers()):
                    tensor.data = tensor.data.clone()  # same Parameter objects: the optimiser keeps them
        if self.optimizer is not None:
            for state in self.optimizer.state.values():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor):
                        state[key] = value.clone()

    def prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> None:
        if probe.images.dim() != 4:
            raise ValueError(
                f"ExplainerNetworkCallback explains images (N, C, H, W); the probe is {tuple(probe.images.shape)}"
            )
        module = unwrap_model(pl_module)
        for name in (self.input_layer, self.target_layer):
            get_layer(module, name)  # unknown names raise LayerNotFoundError with the valid names
        one = probe.images[:1].to(pl_module.device)
        names = [name for name in layer_names(module) if name]
        outputs = layer_outputs_in_order(module, names, forward=lambda: module(one))
        spatial = [
            name
            for name, out in sorted(outputs.items(), key=lambda item: item[1].rank or 0)
            if out.spatial and out.rank is not None
        ]
        for role, name in (("input_layer", self.input_layer), ("target_layer", self.target_layer)):
            out = outputs[name]
            if not out.spatial:
                shown = out.shape if out.shape is not None else out.kind
                raise ValueError(
                    f"ExplainerNetworkCallback: {role}={name!r} outputs {shown}, not a spatial (B, C, h, w) feature "
                    f"map with more than one position; the explainer's filters need one. Layers with spatial "
                    f"outputs, in execution order: {', '.join(spatial)}"
                )
        source, target = outputs[self.input_layer], outputs[self.target_layer]
        # A spatial output was seen in the forward pass, so it has a 4-D shape and an execution rank.
        assert source.shape is not None and source.rank is not None
        assert target.shape is not None and target.rank is not None
        if target.rank <= source.rank:
            raise ValueError(
                f"ExplainerNetworkCallback: target_layer={self.target_layer!r} runs "
                f"{'at the same time as' if target.rank == source.rank else 'before'} input_layer="
                f"{self.input_layer!r}; the explainer reconstructs an *upper* layer from a lower one. Swap them or "
                f"choose a later target_layer (spatial layers in execution order: {', '.join(spatial)})"
            )
        self.landmarks = self._probe_landmarks(trainer, probe)
        shape = (source.shape[1], target.shape[1], (target.shape[-2], target.shape[-1]))
        if self.explainer is None or self._explainer_shape() != shape:
            with isolated_rng():
                torch.manual_seed(self.seed)
                self.explainer = ExplainerNetwork(shape[0], shape[1], shape[2], self.num_filters)
            self.optimizer = torch.optim.Adam(self.explainer.parameters(), lr=self.lr)
            self.steps = 0
        if self._pending_state is not None:
            self._load_explainer(self._pending_state)
            self._pending_state = None

    def _explainer_shape(self) -> tuple[int, int, tuple[int, int]] | None:
        if self.explainer is None:
            return None
        return (self.explainer.in_channels, self.explainer.target_channels, self.explainer.target_size)

    def _probe_landmarks(self, trainer: pl.Trainer, probe: ProbeSet) -> torch.Tensor | None:
        if self._given_landmarks is not None:
            if self._given_landmarks.shape[0] != len(probe):
                raise ValueError(
                    f"set_landmarks got {self._given_landmarks.shape[0]} rows for {len(probe)} probe images"
                )
            return self._given_landmarks
        if self._given_probe is not None or probe.indices is None:
            return None
        dataset = find_probe_dataset(trainer, self.probe_split)
        dataset = getattr(dataset, "dataset", dataset)  # a loader over iterable data
        landmarks = getattr(dataset, "landmarks", None)  # duck-typed: ConceptWorld-like data has part landmarks
        if landmarks is None:
            return None
        return landmarks()[probe.indices.long()].float().cpu()

    # ------------------------------------------------------------------ training alongside the performer
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        self._paused_epoch = None
        module = unwrap_model(pl_module)
        compiled = [
            name
            for name, child in module.named_modules()
            if isinstance(getattr(child, "_orig_mod", None), torch.nn.Module)
        ]
        inside = [
            layer
            for layer in (self.input_layer, self.target_layer)
            if any(layer == c or layer.startswith(c + ".") for c in map(normalize_layer_name, compiled))
        ]
        if inside:
            raise ValueError(
                f"ExplainerNetworkCallback records {inside} during training steps with forward hooks, but "
                f"{', '.join(repr(normalize_layer_name(c) or 'the model') for c in compiled)} is torch.compile'd, and "
                "a compiled graph skips hooks added after it first ran. Train without compiling that module (or "
                "compile only the layers above target_layer); the other observing callbacks handle compiled modules."
            )
        for name in (self.input_layer, self.target_layer):
            self._handles.append(get_layer(module, name).register_forward_hook(self._recorder(name)))

    def _recorder(self, name: str):
        def hook(_module: torch.nn.Module, _inputs: object, output: object) -> None:
            if self._armed and isinstance(output, torch.Tensor):
                # A copy: an in-place op downstream (ReLU(inplace=True), x += y) must not change it.
                self._captured[name] = output.detach().clone()
            # Returns None: the performer's forward continues with its own, unchanged output.

        return hook

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._captured = {}
        self._armed = self.explainer is not None and self._paused_epoch != trainer.current_epoch

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._armed = False
        captured, self._captured = self._captured, {}
        if self.explainer is None or self.input_layer not in captured or self.target_layer not in captured:
            return
        try:
            self.train_step(trainer, captured[self.input_layer], captured[self.target_layer])
        except Exception as error:  # noqa: BLE001 - handled as on_error says; the performer's training goes on
            # Every rank raises together (train_step agrees on failures before its all-reduce).
            self._paused_epoch = trainer.current_epoch
            self._fail(
                trainer,
                error,
                what=f"to train the explainer at batch {batch_idx}, and pauses its training until the next epoch;",
            )

    def train_step(self, trainer: pl.Trainer | None, features: torch.Tensor, target: torch.Tensor) -> None:
        """``steps_per_batch`` optimiser steps of the explainer on ``features`` → ``target`` (both detached)."""
        assert self.explainer is not None and self.optimizer is not None
        self._move_to(features.device)
        world = trainer.world_size if trainer is not None else 1
        # Summed on the device (float64 where it exists): no host synchronisation per step.
        dtype = torch.float32 if features.device.type == "mps" else torch.float64
        sums = torch.zeros(len(_TRAIN_TERMS) + 1, dtype=dtype, device=features.device)
        # Own random stream and autograd context: nothing here can touch the performer's training.
        with isolated_rng(), torch.inference_mode(False), torch.enable_grad():
            x, y = features.float().clone(), target.float().clone()
            self.explainer.train()
            for _ in range(self.steps_per_batch):
                error: Exception | None = None
                try:
                    loss = self.explainer.loss(x, y, self.reconstruction_weight, self.filter_weight, self.eta)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.total.backward()
                except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank alike
                    error = exc
                # A rank that failed must not leave the others waiting in the gradient all-reduce.
                if world > 1 and _failed_on_any_rank(error is not None, features.device):
                    raise error if error is not None else RuntimeError("the explainer's step failed on another rank")
                if error is not None:
                    raise error
                if world > 1:
                    self._average_gradients()
                self.optimizer.step()
                self.steps += 1
                sums += torch.stack(
                    [loss.total.detach(), loss.reconstruction, loss.filter, loss.p, torch.ones_like(loss.p)]
                ).to(dtype)
            self.explainer.eval()
        # Out of place: never into memory that another rank may share (see _own_tensors).
        self._train_sums = self._train_sums.to(sums) + sums

    def _average_gradients(self) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        assert self.explainer is not None  # called from the explainer's own training step
        average_gradients(list(self.explainer.parameters()), dist.get_world_size(), dist.all_reduce)

    def _move_to(self, device: torch.device) -> None:
        assert self.explainer is not None and self.optimizer is not None
        move_with_optimizer(self.explainer, self.optimizer, device)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()

    def release(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remove the training-step hooks (also after an interrupted ``fit``)."""
        super().release(trainer, pl_module)
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        self._armed = False
        self._captured = {}

    # ------------------------------------------------------------------ evaluation on the probe set
    def explain(self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet) -> dict[str, torch.Tensor]:
        assert self.explainer is not None
        self._move_to(probe.images.device)
        self.explainer.eval()
        return explainer_outputs(
            pl_module,
            self.explainer,
            self.input_layer,
            self.target_layer,
            probe.images,
            max_batch=self.max_batch,
            output_key=self.output_key,
        )

    def report(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: ProbeSet, results: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        evaluation = summarise_explainer_outputs(
            results,
            labels=probe.labels,
            landmarks=self.landmarks,
            top_k=self.top_k,
            image_size=(probe.images.shape[-2], probe.images.shape[-1]),
        )
        scalars = {f"{self.namespace}/{key}": value for key, value in evaluation.scalars.items()}
        sums = self._train_sums.to(pl_module.device)
        if trainer.world_size > 1:
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
        sums = sums.double().cpu()
        if sums[-1] > 0:
            for index, term in enumerate(_TRAIN_TERMS):
                scalars[f"{self.namespace}/train/{term}"] = float(sums[index] / sums[-1])
        scalars[f"{self.namespace}/steps"] = float(self.steps)
        self._train_sums = torch.zeros(len(_TRAIN_TERMS) + 1, dtype=torch.float64)
        if trainer.is_global_zero:
            self._log_maps(trainer, probe, results)
            if "explainer" in evaluation.instability:
                rows = [[f, float(evaluation.instability["explainer"][f])] for f in range(self.num_filters)]
                self.sinks.table(
                    f"{self.namespace}/filters", ["filter", "location_instability"], rows, trainer.global_step
                )
        return scalars

    def _log_maps(self, trainer: pl.Trainer, probe: ProbeSet, results: dict[str, torch.Tensor]) -> None:
        shown = min(self.max_images, len(probe))
        filters = min(self.max_filters, self.num_filters)
        images = probe.images[:shown].float().cpu()
        raw = results[sorted(key for key in results if key.startswith("explainer_raw/"))[-1]][:shown, :filters]
        maps = F.interpolate(raw.float(), size=tuple(images.shape[-2:]), mode="bilinear", align_corners=False)
        panels = [display_images(images)] + [overlay(images, maps[:, f]) for f in range(filters)]
        grid = labelled_grid(
            to_uint8_hwc(torch.stack(panels, dim=1)),
            row_captions=[f"p={float(p):.2f}" for p in results["p"][:shown]],
            column_titles=["image"] + [f"filter {f}" for f in range(filters)],
        )
        caption = f"Explainer filters, epoch {trainer.current_epoch}, step {trainer.global_step}"
        self.sinks.images(
            f"{self.namespace}/activation_maps", [np.ascontiguousarray(grid)], [caption], trainer.global_step
        )

    # ------------------------------------------------------------------ checkpointing
    def extra_state(self) -> dict[str, Any]:
        if self.explainer is None:
            return {} if self._pending_state is None else dict(self._pending_state)
        return {
            "explainer": {key: value.detach().cpu().clone() for key, value in self.explainer.state_dict().items()},
            "explainer_shape": self._explainer_shape(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "steps": self.steps,
            "train_sums": self._train_sums.detach().double().cpu().clone(),
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "explainer" not in state:
            return
        if self.explainer is not None:
            self._load_explainer(state)
        else:
            self._pending_state = dict(state)  # restored at setup, once the layers' shapes are known

    def _load_explainer(self, state: dict[str, Any]) -> None:
        assert self.explainer is not None and self.optimizer is not None
        saved = state["explainer_shape"]
        if self._explainer_shape() != (saved[0], saved[1], tuple(saved[2])):
            raise ValueError(
                f"The checkpoint's explainer reads/reconstructs shapes {saved} but the model's layers give "
                f"{self._explainer_shape()}; resume with the same input_layer/target_layer and model."
            )
        device = next(self.explainer.parameters()).device
        self.explainer.load_state_dict({key: value.to(device) for key, value in state["explainer"].items()})
        if state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state.get("steps", 0))
        self._train_sums = state.get("train_sums", torch.zeros_like(self._train_sums)).clone()


def _failed_on_any_rank(failed: bool, device: torch.device) -> bool:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return failed
    flag = torch.tensor([float(failed)], device=device)
    dist.all_reduce(flag)
    return bool(flag.item() > 0)


def average_gradients(params: list[torch.nn.Parameter], world_size: int, all_reduce: Any) -> None:
    """Replace every gradient by its mean over ``world_size`` ranks, with one ``all_reduce`` (sum).

    As DDP does for the performer: a parameter that got no gradient on this rank takes part with
    zeros when another rank has one (then every rank applies the same mean); when no rank has one
    its gradient stays ``None`` (the optimiser skips it, as in one process). The last
    ``len(params)`` entries of the reduced buffer count the ranks that had a gradient.
    """
    present = [p.grad is not None for p in params]
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
        + [torch.tensor(present, dtype=params[0].dtype).to(params[0].device)]
    )
    all_reduce(flat)
    grads = flat[: -len(params)] / world_size
    # Reading the counts waits for the reduction; only needed when this rank lacks a gradient
    # (if it has them all, every count is at least 1).
    counts = [1.0] * len(params) if all(present) else flat[-len(params) :].tolist()
    offset = 0
    for p, count in zip(params, counts):
        n = p.numel()
        p.grad = grads[offset : offset + n].view_as(p).clone() if count > 0 else None
        offset += n
