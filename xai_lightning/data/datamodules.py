"""LightningDataModules over ConceptWorld, BARS, coloured digits, scikit-learn's handwritten digits and TriggerText
sentences.

The datasets themselves live beside (``concept_world.py``, ``bars.py``, ``coloured_digits.py``, ``trigger_text.py``)
and import no Lightning, so the algorithm packages can use them without loading it."""

from __future__ import annotations

from typing import Any, Literal, cast

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import AttributeDict
from torch.utils.data import DataLoader, Dataset, TensorDataset

from xai_lightning.data.bars import DEFAULT_GEOMETRY, Bars, colour_given_class_table
from xai_lightning.data.coloured_digits import NUM_CLASSES as DIGIT_CLASSES
from xai_lightning.data.coloured_digits import ColouredDigits
from xai_lightning.data.concept_world import ConceptWorld, LabelBy, SpuriousConcept
from xai_lightning.data.digits import HandwrittenDigits
from xai_lightning.data.trigger_text import TriggerText

__all__ = [
    "BarsDataModule",
    "ColouredDigitsDataModule",
    "ConceptWorldDataModule",
    "DigitsDataModule",
    "TriggerTextDataModule",
]

BatchFormat = Literal["tuple", "dict"]


def _saved_hparams(module: pl.LightningDataModule) -> AttributeDict:
    """``module.hparams`` as ``save_hyperparameters()`` in ``__init__`` leaves it: an AttributeDict (Lightning
    types the property as any MutableMapping, for OmegaConf configs, which has no attribute access). The dict is
    lightning_fabric's class; ``pytorch_lightning.utilities.AttributeDict`` subclasses it adding nothing, and
    comes through our declared dependency."""
    return cast(AttributeDict, module.hparams)


def _collate_tuple(items: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([item["image"] for item in items]), torch.tensor([item["label"] for item in items])


class _Loaders:
    """Shared dataloader construction: ConceptWorld-style dict items, collated as asked.

    Shuffling draws from the global torch RNG unless ``shuffle_seed`` is set; then the training
    loader gets its own ``torch.Generator`` seeded with it, made once per ``train_dataloader()`` call
    (once per ``fit``), so the order of every epoch is fixed by the seed alone — two runs that draw
    different amounts of other random numbers (an adversarially trained arm's PGD starts, dropout
    variants) still see the same batches in the same order.
    """

    batch_size: int
    num_workers: int
    batch_format: BatchFormat
    shuffle_seed: int | None = None

    def _shuffle_generator(self, shuffle: bool) -> torch.Generator | None:
        if not shuffle or self.shuffle_seed is None:
            return None
        return torch.Generator().manual_seed(int(self.shuffle_seed))

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        collate = _collate_tuple if self.batch_format == "tuple" else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
            generator=self._shuffle_generator(shuffle),
        )

    def _tensor_loader(self, dataset: Any, shuffle: bool) -> DataLoader:
        """``(x, y)`` batches over ``dataset.tensors()``: no per-item work (masks, dicts) when none is needed."""
        images, labels = dataset.tensors()
        return DataLoader(
            TensorDataset(images, labels),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=self._shuffle_generator(shuffle),
        )


class TensorSplitLoaders(_Loaders):
    """Train/val loaders of ``(x, y)`` batches for datamodules whose splits (``train_set``,
    ``val_set``) render all their images at once and expose them through ``tensors()``."""

    train_set: Any
    val_set: Any

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup('fit') first"
        return self._tensor_loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup('fit') first"
        return self._tensor_loader(self.val_set, shuffle=False)


class ConceptWorldDataModule(_Loaders, pl.LightningDataModule):
    """ConceptWorld train/val(/test) splits, generated in memory from one seed.

    Training batches are ``(x, y)`` by default (``batch_format="tuple"``); ``"dict"`` gives
    dicts with ``masks`` and ``object_mask`` too (see :mod:`xai_lightning.data.batch`). The
    validation *dataset* always yields dict items with masks, which is where observing
    callbacks draw their probe sets.

    Args:
        num_train, num_val, num_test: split sizes (``num_test=0``: no test split).
        seed: the splits use seeds derived from it (``seed * 1000 + split``), so they never overlap.
        train_low_pass_radius: if set, the *training* images are low-pass filtered with this radius of
            the centred spectrum (Wang et al. 2019; :func:`~xai_lightning.dynamics.low_pass`,
            not clipped back to [0, 1]); validation and test images stay as rendered. None: no filter.
        shuffle_seed: seed of the training loader's own shuffling generator (None: the global RNG).
            Studies set it to the run's seed so that paired runs see the same data order.
        The remaining arguments are :class:`~xai_lightning.data.ConceptWorld`'s.
    """

    def __init__(
        self,
        num_train: int = 5000,
        num_val: int = 1000,
        num_test: int = 0,
        image_size: int = 32,
        seed: int = 0,
        label_by: LabelBy = "shape",
        spurious_concept: SpuriousConcept | None = None,
        spurious_p: float = 0.0,
        distractor_p: float = 0.0,
        caption_p: float = 0.0,
        caption_agreement: float = 1.0,
        batch_size: int = 64,
        num_workers: int = 0,
        batch_format: BatchFormat = "tuple",
        train_low_pass_radius: float | None = None,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if train_low_pass_radius is not None:
            from xai_lightning.dynamics.frequency import check_radii

            check_radii([train_low_pass_radius], image_size, image_size)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.batch_format = batch_format
        self.shuffle_seed = shuffle_seed
        self.train_set: ConceptWorld | None = None
        self.val_set: ConceptWorld | None = None
        self.test_set: ConceptWorld | None = None

    def _make(self, num_samples: int, split: int) -> ConceptWorld:
        h = _saved_hparams(self)
        return ConceptWorld(
            num_samples=num_samples,
            image_size=h.image_size,
            seed=h.seed * 1000 + split,
            label_by=h.label_by,
            spurious_concept=h.spurious_concept,
            spurious_p=h.spurious_p,
            distractor_p=h.distractor_p,
            caption_p=h.caption_p,
            caption_agreement=h.caption_agreement,
        )

    @property
    def num_classes(self) -> int:
        return ConceptWorld(0, label_by=_saved_hparams(self).label_by).num_classes

    def setup(self, stage: str | None = None) -> None:
        h = _saved_hparams(self)
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = self._make(h.num_train, 0)
            if h.get("train_low_pass_radius") is not None:
                from xai_lightning.dynamics.frequency import low_pass

                # Filtered after rendering: the renders (and the latent, masks) stay as they are.
                self.train_set.images = low_pass(self.train_set.images, h.train_low_pass_radius)
        if self.val_set is None and stage in (None, "fit", "validate"):
            self.val_set = self._make(h.num_val, 1)
        if self.test_set is None and stage in (None, "test", "predict") and h.num_test > 0:
            self.test_set = self._make(h.num_test, 2)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup('fit') first"
        if self.batch_format == "tuple":
            # No masks are needed to train: a TensorDataset avoids computing them per item.
            return self._tensor_loader(self.train_set, shuffle=True)
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup('fit') or setup('validate') first"
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            raise RuntimeError("ConceptWorldDataModule(num_test=0) has no test split; set num_test > 0.")
        return self._loader(self.test_set, shuffle=False)


class DigitsDataModule(_Loaders, pl.LightningDataModule):
    """scikit-learn's bundled handwritten digits (1,797 real 8×8 scans, 10 classes), upsampled.

    Args:
        image_size: side after bilinear upsampling (8 keeps the original resolution).
        channels: 1 (grey) or 3 (grey replicated, for RGB models).
        val_fraction: stratified, seeded validation split.
    """

    def __init__(
        self,
        image_size: int = 32,
        channels: Literal[1, 3] = 3,
        val_fraction: float = 0.2,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        batch_format: BatchFormat = "tuple",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.batch_format = batch_format
        self.train_set: HandwrittenDigits | None = None
        self.val_set: HandwrittenDigits | None = None

    num_classes = 10

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            h = _saved_hparams(self)
            self.train_set = HandwrittenDigits("train", h.image_size, h.channels, h.val_fraction, h.seed)
            self.val_set = HandwrittenDigits("val", h.image_size, h.channels, h.val_fraction, h.seed)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup('fit') first"
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup('fit') first"
        return self._loader(self.val_set, shuffle=False)


class BarsDataModule(TensorSplitLoaders, pl.LightningDataModule):
    """BARS train/val splits from the same ``P(colour | class)`` (seeds ``seed * 1000 + split``); batches ``(x, y)``.

    ``train_set`` and ``val_set`` are the :class:`Bars` generators themselves, so observing
    callbacks (e.g. :class:`~xai_lightning.callbacks.CaCECallback`) can intervene in them.
    The generator arguments are :class:`Bars`'s.
    """

    num_classes = 2

    def __init__(
        self,
        num_train: int = 2000,
        num_val: int = 500,
        confounding: float | None = None,
        image_size: int = 32,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        colour_given_class: list[list[float]] | None = None,
        noise: float = DEFAULT_GEOMETRY["noise"],
        bar_length: tuple[float, float] = DEFAULT_GEOMETRY["bar_length"],
        bar_width: tuple[float, float] = DEFAULT_GEOMETRY["bar_width"],
        max_bars: int = DEFAULT_GEOMETRY["max_bars"],
    ) -> None:
        super().__init__()
        colour_given_class_table(confounding, colour_given_class)  # bad probabilities fail here, not at setup
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_set: Bars | None = None
        self.val_set: Bars | None = None

    def _make(self, num_samples: int, split: int) -> Bars:
        h = _saved_hparams(self)
        return Bars(
            num_samples,
            h.confounding,
            h.image_size,
            seed=h.seed * 1000 + split,
            noise=h.noise,
            colour_given_class=h.colour_given_class,
            bar_length=tuple(h.bar_length),
            bar_width=tuple(h.bar_width),
            max_bars=h.max_bars,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            h = _saved_hparams(self)
            self.train_set = self._make(h.num_train, 0)
            self.val_set = self._make(h.num_val, 1)


class ColouredDigitsDataModule(TensorSplitLoaders, pl.LightningDataModule):
    """Coloured digits train/val splits (stratified split of the 1,797 digits); batches ``(x, y)``."""

    num_classes = DIGIT_CLASSES

    def __init__(
        self,
        sigma: float = 0.05,
        image_size: int = 32,
        seed: int = 0,
        val_fraction: float = 0.2,
        batch_size: int = 64,
        num_workers: int = 0,
        jitter: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_set: ColouredDigits | None = None
        self.val_set: ColouredDigits | None = None

    def setup(self, stage: str | None = None) -> None:
        h = _saved_hparams(self)
        if self.train_set is None:
            self.train_set = ColouredDigits("train", h.sigma, h.image_size, h.seed, h.val_fraction, h.jitter)
            self.val_set = ColouredDigits("val", h.sigma, h.image_size, h.seed, h.val_fraction, h.jitter)


class TriggerTextDataModule(TensorSplitLoaders, pl.LightningDataModule):
    """TriggerText train/val splits (seeds ``seed * 1000 + split``): ``(ids, labels)`` batches.

    The validation *dataset* is the :class:`~xai_lightning.data.TriggerText` itself (its items carry
    ``trigger_mask``), which is where :class:`~xai_lightning.TextAttributionCallback` finds the
    vocabulary and the ground truth. Arguments after the split sizes are TriggerText's.
    """

    def __init__(
        self,
        num_train: int = 2000,
        num_val: int = 500,
        seed: int = 0,
        num_classes: int = 2,
        min_length: int = 8,
        max_length: int = 24,
        max_triggers: int = 2,
        num_distractors: int = 40,
        spurious_p: float = 0.0,
        spurious_word: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_set: TriggerText | None = None
        self.val_set: TriggerText | None = None

    def _make(self, num_samples: int, split: int) -> TriggerText:
        h = _saved_hparams(self)
        return TriggerText(
            num_samples,
            seed=h.seed * 1000 + split,
            num_classes=h.num_classes,
            min_length=h.min_length,
            max_length=h.max_length,
            max_triggers=h.max_triggers,
            num_distractors=h.num_distractors,
            spurious_p=h.spurious_p,
            spurious_word=h.spurious_word,
        )

    @property
    def vocab_size(self) -> int:
        return self._make(0, 0).vocab_size

    @property
    def num_classes(self) -> int:
        return int(_saved_hparams(self).num_classes)

    def setup(self, stage: str | None = None) -> None:
        h = _saved_hparams(self)
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = self._make(h.num_train, 0)
        if self.val_set is None and stage in (None, "fit", "validate"):
            self.val_set = self._make(h.num_val, 1)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup('fit') or setup('validate') first"
        # Dict batches (inputs, label, trigger_mask, …), collated by PyTorch's default.
        return DataLoader(
            self.val_set,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
