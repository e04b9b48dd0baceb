"""Concept-based explanations: CAVs, TCAV with significance testing, relative CAVs, concept sets.

Pure torch (no Lightning); see :mod:`xai_lightning.concepts.tcav` for the method (Kim et al. 2018).
"""

from xai_lightning.concepts.activations import layer_activations, logit_gradients
from xai_lightning.concepts.cav import CAVs, split_balanced, train_cavs, train_cavs_indexed
from xai_lightning.concepts.concept_sets import (
    concept_examples_from_world,
    draw_random_sets,
    load_concept_folder,
    resolve_world_concept,
)
from xai_lightning.concepts.significance import two_sided_t_test
from xai_lightning.concepts.tcav import (
    TCAV,
    ConceptCAVs,
    TCAVResult,
    cav_similarity,
    directional_derivatives,
    sort_by_cav_similarity,
    tcav_from_derivatives,
)

__all__ = [
    "CAVs",
    "ConceptCAVs",
    "TCAV",
    "TCAVResult",
    "cav_similarity",
    "concept_examples_from_world",
    "directional_derivatives",
    "draw_random_sets",
    "layer_activations",
    "load_concept_folder",
    "logit_gradients",
    "resolve_world_concept",
    "sort_by_cav_similarity",
    "split_balanced",
    "tcav_from_derivatives",
    "train_cavs",
    "train_cavs_indexed",
    "two_sided_t_test",
]
