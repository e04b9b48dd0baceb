"""Datasets with ground truth (ConceptWorld, BARS, coloured digits), real data (digits), datamodules, the batch
convention.

Lazy (PEP 562): the datasets import no Lightning, so the algorithm packages can use them; the
datamodules (``datamodules.py``) load Lightning only when one of them is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xai_lightning.lazy_exports import lazy_exports

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("BAR_COLOURS", "Bars", "BarsLatent"), "xai_lightning.data.bars"),
    **dict.fromkeys(("Batch", "replace_inputs", "unpack_batch"), "xai_lightning.data.batch"),
    "ColouredDigits": "xai_lightning.data.coloured_digits",
    **dict.fromkeys(
        ("BACKGROUNDS", "COLOURS", "SHAPES", "TEXTURES", "ConceptWorld", "ConceptWorldLatent", "ConceptWorldRender"),
        "xai_lightning.data.concept_world",
    ),
    **dict.fromkeys(
        ("BarsDataModule", "ColouredDigitsDataModule", "ConceptWorldDataModule", "DigitsDataModule"),
        "xai_lightning.data.datamodules",
    ),
    "HandwrittenDigits": "xai_lightning.data.digits",
    "TriggerText": "xai_lightning.data.trigger_text",
    "TriggerTextDataModule": "xai_lightning.data.datamodules",
    **dict.fromkeys(
        (
            "UNSEEN_COLOURS",
            "UNSEEN_SHAPES",
            "UNSEEN_TEXTURES",
        ),
        "xai_lightning.data.concept_world",
    ),
}

__all__ = sorted(_EXPORTS, key=str.lower)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from xai_lightning.data.bars import BAR_COLOURS, Bars, BarsLatent
    from xai_lightning.data.batch import Batch, replace_inputs, unpack_batch
    from xai_lightning.data.coloured_digits import ColouredDigits
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
    from xai_lightning.data.datamodules import (
        BarsDataModule,
        ColouredDigitsDataModule,
        ConceptWorldDataModule,
        DigitsDataModule,
        TriggerTextDataModule,
    )
    from xai_lightning.data.digits import HandwrittenDigits
    from xai_lightning.data.trigger_text import TriggerText
