"""AdversarialTrainingCallback: turn any classification LightningModule into an adversarially trained one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from xai_lightning.callbacks.attack_options import AttackOptions
from xai_lightning.callbacks.probe import find_probe_dataset
from xai_lightning.callbacks.settings import RecordsSettings
from xai_lightning.core import isolated_rng, unwrap_model
from xai_lightning.data.batch import ACCEPTED_FORMATS, unpack_batch
from xai_lightning.robustness import (
    PixelSpace,
    TradesBatch,
    check_eps,
    check_norm,
    default_step_size,
    fgsm,
    pgd,
    trades_adversarial,
)

__all__ = ["AdversarialTrainingCallback"]

AttackMethod = Literal["pgd", "fgsm", "trades"]

#: How many training items :meth:`AdversarialTrainingCallback.setup` inspects for format and pixel range.
SETUP_ITEMS = 8


def _set_trades_batch(module: torch.nn.Module, batch: TradesBatch | None) -> None:
    """Hand ``batch`` to the LightningModule's ``training_step`` through its ``trades_batch`` attribute."""
    # nn.Module.__setattr__ is annotated for tensors and modules only; at runtime it stores any other value as
    # a plain attribute.
    module.trades_batch = batch  # type: ignore[assignment]


class AdversarialTrainingCallback(RecordsSettings, pl.Callback):
    """Adversarial training (Madry et al., ICLR 2018) for any classification LightningModule.

    **This callback intentionally changes training** — it is the one exception to xai_lightning's
    "observing does not disturb" contract. Before every ``training_step`` it attacks the batch
    (in eval mode inside the observer guard, so BatchNorm running statistics and parameters'
    ``.grad`` are untouched by the attack's forward/backward passes; the attack's random start
    draws from its own seeded generator, not the training's random stream) and replaces the
    batch's inputs *in place* with the adversarial examples, so the module's unchanged
    ``training_step`` trains on them.

    Methods:

    * ``"pgd"``: PGD in ``norm`` with radius ``eps``, ``steps`` steps of ``step_size``
      (default ``2.5·eps/steps``), random start, the worst iterate (Madry et al. 2018).
    * ``"fgsm"``: one step of size ``eps`` from the clean image (Goodfellow et al. 2015);
      ``steps``/``step_size``/``random_start`` are ignored.
    * ``"trades"`` (Zhang et al. 2019): ``x'`` maximises KL(f(x) ‖ f(x')) in the ball (start
      ``x + 0.001·N(0, I)``, last iterate); the loss ``CE(f(x), y) + β·KL(f(x) ‖ f(x'))`` needs
      both forward passes, which only the module can do. **What the module must expose**: an
      attribute ``trades_batch`` (``None`` by default, declared in ``__init__``), and a
      ``training_step`` that, when ``self.trades_batch`` is set, returns
      ``self.trades_batch.loss(clean_logits, self(self.trades_batch.inputs), labels)`` with
      ``clean_logits = self(x)`` of the (clean) batch. :class:`~xai_lightning.ImageClassifier`
      does this. The batch keeps its clean inputs; the callback checks after the step that the
      module used the TRADES loss and raises otherwise. (BatchNorm then sees the module's two
      train-mode forwards per step, clean and adversarial, as in the TRADES authors' code; the
      attack's own forwards still run in eval mode.)

    Where the inputs are found, and how they are replaced (formats of
    :mod:`xai_lightning.data.batch`): a dict with the images under ``"image"``/``"images"``/
    ``"x"``/``"input"``/``"inputs"`` and labels under ``"label"``/``"labels"``/``"y"``/
    ``"target"``/``"targets"`` (the entry is replaced), a list ``[x, y, ...]`` (element 0 is
    replaced), or a tuple ``(x, y, ...)`` (immutable, so the adversarial images are copied into
    ``x``'s own storage; refused when ``x`` is a view into other data, e.g. a slice of a dataset
    tensor, which the copy would corrupt — return lists or dicts from such loaders).

    Pixel space: the attack bounds perturbations of ``[0, 1]`` pixels with the model's
    normalisation inside the model (``SmallCNN(mean=..., std=...)``, ``models.Normalize``). If the
    loader normalises instead, declare it with ``data_mean``/``data_std``: the batch is converted
    to pixels, attacked there and converted back. Inputs outside ``[0, 1]`` without a declared
    normalisation are refused (at ``setup`` from the first training items when the training data
    is a map-style dataset, else at the first batch).

    Distributed training (DDP): each rank attacks its own shard of the batch, with its own random
    start (the generator is seeded with the rank too). The attack runs on the LightningModule itself,
    not on the DDP wrapper, and takes gradients with respect to the inputs only, so it triggers no
    gradient all-reduce and leaves no ``.grad`` behind (which gradient accumulation would otherwise add
    to the update); the ranks' weights stay synchronised (tested step by step against a hand-written
    reference with 2 processes).

    Logged (with ``pl_module.log``, per epoch, averaged over the epoch's batches and the ranks; in
    ``trainer.callback_metrics``, on the step of the epoch's metrics; the arguments go to the
    loggers' configuration, e.g. W&B ``run.config``):

    ===========================================  ===========================================
    ``adversarial_training/attack_success_rate``  fraction of training examples the attack
                                                  made the (eval-mode) model misclassify; for
                                                  TRADES, fraction whose prediction at ``x'``
                                                  differs from the label
    ``adversarial_training/attack_loss``          mean cross-entropy at the adversarial
                                                  examples (TRADES: mean KL(f(x) ‖ f(x')))
    ===========================================  ===========================================

    Args:
        norm: ``"linf"`` or ``"l2"``.
        eps: radius of the threat model in pixel units (e.g. 0.5 for L2, 8/255 for L∞).
        steps: PGD/TRADES steps (ignored by FGSM).
        step_size: step per iteration (None: ``2.5·eps/steps``; TRADES' paper uses 0.007 at
            ``eps=0.031``).
        method: ``"pgd"``, ``"fgsm"`` or ``"trades"``.
        random_start: PGD starts from a uniform point of the ball (Madry et al.).
        beta: TRADES' trade-off β (default 6, the paper's).
        data_mean, data_std: the normalisation the *data loader* applies, if any.
        output_key: where the logits are when the model returns a dict/tuple.
        max_batch: cap on examples per attack forward/backward pass.
        seed: seed of the attack's own generator (random starts).
        log: log the two keys above.

    Example::

        trainer = Trainer(callbacks=[AdversarialTrainingCallback(norm="l2", eps=0.5, steps=7)])
    """

    namespace = "adversarial_training"

    def __init__(
        self,
        norm: Literal["linf", "l2"] = "l2",
        eps: float = 0.5,
        steps: int = 7,
        step_size: float | None = None,
        method: AttackMethod = "pgd",
        random_start: bool = True,
        beta: float = 6.0,
        data_mean: list[float] | None = None,
        data_std: list[float] | None = None,
        output_key: str | int | None = None,
        max_batch: int | None = None,
        seed: int = 0,
        log: bool = True,
    ) -> None:
        super().__init__()
        self.norm = check_norm(norm)
        self.eps = check_eps(eps)
        if method not in ("pgd", "fgsm", "trades"):
            raise ValueError(f"Unknown method {method!r}; use 'pgd', 'fgsm' or 'trades'.")
        if steps < 1 and method != "fgsm":
            raise ValueError(f"steps must be >= 1 for method={method!r}; got {steps}")
        if step_size is not None and not step_size > 0:
            raise ValueError(f"step_size must be positive (or None for 2.5·eps/steps); got {step_size}")
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0; got {beta}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 or None; got {max_batch}")
        self.steps = steps
        self.step_size = step_size
        self.method = method
        self.random_start = random_start
        self.beta = beta
        self.pixels = PixelSpace(data_mean, data_std)
        self.output_key = output_key
        self.max_batch = max_batch
        self.seed = seed
        self.log = log
        self._trades: TradesBatch | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method, norm=self.norm, eps=self.eps)

    @property
    def effective_step_size(self) -> float:
        if self.method == "fgsm":
            return self.eps
        return default_step_size(self.eps, self.steps) if self.step_size is None else self.step_size

    # ------------------------------------------------------------------ setup checks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        name = type(self).__name__
        if trainer.is_global_zero:
            from xai_lightning.logging import sinks_for_trainer

            sinks_for_trainer(trainer).config(self.namespace, {"class": name, **self.settings()})
        if self.method == "trades" and not hasattr(unwrap_model(pl_module), "trades_batch"):
            raise TypeError(
                f"{name}(method='trades') needs the LightningModule to compute the TRADES loss, and "
                f"{type(pl_module).__name__} does not declare `trades_batch`. Add `self.trades_batch = None` to its "
                "__init__ and, in training_step, when self.trades_batch is set, return "
                "self.trades_batch.loss(self(x), self(self.trades_batch.inputs), y) (xai_lightning.ImageClassifier "
                "does this), or use method='pgd'."
            )
        source = find_probe_dataset(trainer, "train")
        if source is None or isinstance(source, (DataLoader, IterableDataset)) or not hasattr(source, "__len__"):
            return  # not knowable without iterating the data: checked at the first batch
        with isolated_rng():
            items = [source[i] for i in range(min(SETUP_ITEMS, len(source)))]
        for item in items:
            try:
                inputs = unpack_batch(item).inputs
            except TypeError as error:
                if not isinstance(item, Mapping):
                    return  # e.g. indices that a custom collate_fn turns into batches: checked at the first batch
                # Dict items keep their keys through collation, so the batches will lack the inputs too.
                raise TypeError(f"{name} cannot find the inputs in the training items: {error}") from None
            inputs = torch.as_tensor(inputs)
            self.pixels.check(inputs.unsqueeze(0) if inputs.dim() == 3 else inputs, name)  # items are unbatched

    # ------------------------------------------------------------------ the attack
    def generator(
        self, epoch: int, batch_idx: int, rank: int = 0, device: torch.device | str = "cpu"
    ) -> torch.Generator:
        """The attack's generator for one batch: seeded from (seed, epoch, batch, rank), so runs are
        reproducible, resume-safe and the ranks' random starts independent."""
        seed = (self.seed * 1_000_003 + epoch * 100_003 + batch_idx) * 64 + rank
        return torch.Generator(device=device).manual_seed(seed % (2**63))

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        name = type(self).__name__
        try:
            data = unpack_batch(batch)
        except TypeError as error:
            raise TypeError(f"{name} cannot find the inputs in the training batch: {error}") from None
        if data.labels is None:
            raise TypeError(f"{name} needs labels in every training batch; expected {ACCEPTED_FORMATS}.")
        inputs, labels = data.inputs, data.labels.to(data.inputs.device)
        self.pixels.check(inputs, name)
        if isinstance(batch, tuple) and inputs._base is not None:
            raise TypeError(
                f"{name} replaces the inputs of a tuple batch by copying into the input tensor, but this tensor is a "
                "view into other data (e.g. a slice of a dataset tensor) that the copy would overwrite. Return "
                f"batches as lists or dicts ({ACCEPTED_FORMATS})."
            )
        module = unwrap_model(pl_module)
        model = self.pixels.wrap(module, device=inputs.device)
        pixels = self.pixels.to_pixels(inputs.detach())
        generator = self.generator(trainer.current_epoch, batch_idx, trainer.global_rank, inputs.device)
        options = AttackOptions(output_key=self.output_key, max_batch=self.max_batch, trainer=trainer)
        if self.method == "trades":
            result = trades_adversarial(
                model,
                pixels,
                norm=self.norm,
                eps=self.eps,
                steps=self.steps,
                step_size=self.effective_step_size,
                generator=generator,
                **options,
            )
            success = result.predictions != labels
            adversarial = self.pixels.from_pixels(result.adversarial).to(inputs.dtype)
            self._trades = TradesBatch(inputs=adversarial, beta=self.beta)
            _set_trades_batch(module, self._trades)
        else:
            if self.method == "fgsm":
                result = fgsm(model, pixels, labels, eps=self.eps, norm=self.norm, **options)
            else:
                result = pgd(
                    model,
                    pixels,
                    labels,
                    norm=self.norm,
                    eps=self.eps,
                    steps=self.steps,
                    step_size=self.effective_step_size,
                    random_start=self.random_start,
                    generator=generator,
                    **options,
                )
            success = result.success
            adversarial = self.pixels.from_pixels(result.adversarial).to(inputs.dtype)
            self._replace(batch, adversarial)
        if self.log:
            size = inputs.shape[0]
            pl_module.log(
                f"{self.namespace}/attack_success_rate",
                success.float().mean(),
                on_step=False,
                on_epoch=True,
                batch_size=size,
                sync_dist=True,
            )
            pl_module.log(
                f"{self.namespace}/attack_loss",
                result.loss.float().mean(),
                on_step=False,
                on_epoch=True,
                batch_size=size,
                sync_dist=True,
            )

    @staticmethod
    def _replace(batch: Any, adversarial: torch.Tensor) -> None:
        from collections.abc import MutableMapping

        from xai_lightning.data.batch import IMAGE_KEYS

        if isinstance(batch, MutableMapping):
            key = next(key for key in IMAGE_KEYS if key in batch)
            batch[key] = adversarial
        elif isinstance(batch, list):
            batch[0] = adversarial
        else:  # tuple (or a bare tensor): immutable container, overwrite the tensor itself
            inputs = batch[0] if isinstance(batch, tuple) else batch
            with torch.no_grad():
                inputs.copy_(adversarial)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """An interrupted ``fit``: leave no TRADES batch behind on the module."""
        module = unwrap_model(pl_module)
        if self._trades is not None and getattr(module, "trades_batch", None) is self._trades:
            _set_trades_batch(module, None)
        self._trades = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.method != "trades" or self._trades is None:
            return
        module = unwrap_model(pl_module)
        used = self._trades.consumed
        _set_trades_batch(module, None)
        self._trades = None
        if not used:
            raise RuntimeError(
                f"{type(self).__name__}(method='trades') set {type(module).__name__}.trades_batch, but its "
                "training_step did not call trades_batch.loss(...): the model trained on clean data only. Return "
                "self.trades_batch.loss(self(x), self(self.trades_batch.inputs), y) when it is set."
            )
