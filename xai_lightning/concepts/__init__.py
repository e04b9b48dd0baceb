"""Concept-based explanations: causal concept effects (CaCE) against ground truth."""

from xai_lightning.concepts.cace import CaCEResult, class_output, conexp, ground_truth_cace, interventional_effect
from xai_lightning.concepts.conditional_vae import ConditionalVAE, fit_conditional_vae
from xai_lightning.concepts.encdec_cace import encdec_cace, encdec_counterfactuals, fit_intervention_vae
from xai_lightning.concepts.interventions import (
    ConceptIntervention,
    bars_colour_intervention,
    coloured_digits_intervention,
    concept_world_intervention,
)

__all__ = [
    "CaCEResult",
    "ConceptIntervention",
    "ConditionalVAE",
    "bars_colour_intervention",
    "class_output",
    "coloured_digits_intervention",
    "concept_world_intervention",
    "conexp",
    "encdec_cace",
    "encdec_counterfactuals",
    "fit_conditional_vae",
    "fit_intervention_vae",
    "ground_truth_cace",
    "interventional_effect",
]
