"""Concept-based explanations: CAVs, TCAV with significance testing, relative CAVs, concept sets,
and causal concept effects (CaCE: ground truth, ConExp, EncDec) to check them against.

Pure torch (no Lightning); see :mod:`xai_lightning.concepts.tcav` for the method (Kim et al. 2018)
and :mod:`xai_lightning.concepts.cace` for CaCE (Goyal et al. 2019).
"""

from xai_lightning.concepts.activations import layer_activations, logit_gradients
from xai_lightning.concepts.cace import (
    CaCEResult,
    class_output,
    conexp,
    ground_truth_cace,
    interventional_effect,
)
from xai_lightning.concepts.cace_comparison import (
    CACE_COLUMNS,
    compare_cace_estimators,
    tcav_of_intervention,
    vae_estimates,
)
from xai_lightning.concepts.cace_seeds import (
    PairedComparison,
    SeedSummary,
    compare_paired,
    mean_absolute_errors,
    summarise_seeds,
)
from xai_lightning.concepts.cav import CAVs, split_balanced, train_cavs, train_cavs_indexed
from xai_lightning.concepts.concept_sets import (
    concept_contrast_from_world,
    concept_contrast_latents,
    concept_examples_from_world,
    draw_random_sets,
    load_concept_folder,
    resolve_world_concept,
)
from xai_lightning.concepts.conditional_vae import (
    ConditionalVAE,
    fit_conditional_vae,
    inverse_propensity_weights,
)
from xai_lightning.concepts.counterfactual_fidelity import shape_shift
from xai_lightning.concepts.decoder_cace import dec_cace, dec_counterfactuals
from xai_lightning.concepts.encoder_decoder_cace import encdec_cace, encdec_counterfactuals, fit_intervention_vae
from xai_lightning.concepts.interventions import (
    ConceptIntervention,
    bars_colour_intervention,
    coloured_digits_intervention,
    concept_world_intervention,
    intervention_for_dataset,
    parse_concept,
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
    "CACE_COLUMNS",
    "TCAV",
    "CAVs",
    "CaCEResult",
    "ConceptCAVs",
    "ConceptIntervention",
    "ConditionalVAE",
    "PairedComparison",
    "SeedSummary",
    "TCAVResult",
    "bars_colour_intervention",
    "cav_similarity",
    "class_output",
    "coloured_digits_intervention",
    "compare_cace_estimators",
    "compare_paired",
    "concept_contrast_from_world",
    "concept_contrast_latents",
    "concept_examples_from_world",
    "concept_world_intervention",
    "conexp",
    "dec_cace",
    "dec_counterfactuals",
    "directional_derivatives",
    "draw_random_sets",
    "encdec_cace",
    "encdec_counterfactuals",
    "fit_conditional_vae",
    "fit_intervention_vae",
    "ground_truth_cace",
    "intervention_for_dataset",
    "interventional_effect",
    "inverse_propensity_weights",
    "layer_activations",
    "load_concept_folder",
    "logit_gradients",
    "mean_absolute_errors",
    "parse_concept",
    "resolve_world_concept",
    "shape_shift",
    "sort_by_cav_similarity",
    "split_balanced",
    "summarise_seeds",
    "tcav_from_derivatives",
    "tcav_of_intervention",
    "train_cavs",
    "train_cavs_indexed",
    "two_sided_t_test",
    "vae_estimates",
]
