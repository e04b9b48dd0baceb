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
    "Bars",
    "BarsDataModule",
    "BarsLatent",
    "ColouredDigits",
    "ColouredDigitsDataModule",
    "COLOURS",
    "Batch",
    "ConceptWorld",
    "ConceptWorldDataModule",
    "ConceptWorldLatent",
    "ConceptWorldRender",
    "DigitsDataModule",
    "HandwrittenDigits",
    "SHAPES",
    "TEXTURES",
    "UNSEEN_COLOURS",
    "UNSEEN_SHAPES",
    "UNSEEN_TEXTURES",
    "replace_inputs",
    "unpack_batch",
]
