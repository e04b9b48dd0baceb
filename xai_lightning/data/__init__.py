"""Datasets with ground truth (ConceptWorld), real data (digits), datamodules, the batch convention."""

from xai_lightning.data.bars import BAR_COLOURS, Bars, BarsDataModule, BarsLatent
from xai_lightning.data.batch import Batch, replace_inputs, unpack_batch
from xai_lightning.data.coloured_digits import ColouredDigits, ColouredDigitsDataModule
from xai_lightning.data.concept_world import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    TEXTURES,
    UNSEEN_COLOURS,
    UNSEEN_SHAPES,
    UNSEEN_TEXTURES,
    ConceptWorld,
    ConceptWorldLatent,
    ConceptWorldRender,
)
from xai_lightning.data.datamodules import ConceptWorldDataModule, DigitsDataModule
from xai_lightning.data.digits import HandwrittenDigits

__all__ = [
    "BACKGROUNDS",
    "BAR_COLOURS",
    "COLOURS",
    "SHAPES",
    "TEXTURES",
    "UNSEEN_COLOURS",
    "UNSEEN_SHAPES",
    "UNSEEN_TEXTURES",
    "Bars",
    "BarsDataModule",
    "BarsLatent",
    "Batch",
    "ColouredDigits",
    "ColouredDigitsDataModule",
    "ConceptWorld",
    "ConceptWorldDataModule",
    "ConceptWorldLatent",
    "ConceptWorldRender",
    "DigitsDataModule",
    "HandwrittenDigits",
    "replace_inputs",
    "unpack_batch",
]
