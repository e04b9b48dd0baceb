"""GT-CaCE, EncDec-CaCE, Dec-CaCE, ConExp and TCAV of one concept side by side: the row of a CaCE table.

Goyal et al. (2019) compare the causal concept effect with the estimators a user could compute
without a generator — the observational ConExp, conditional-VAE estimates (EncDec-CaCE from
encoded images, Dec-CaCE from prior draws) and TCAV (Kim et al. 2018) — to show when
correlation-based explanations mislead. This module produces that comparison for one trained
model and one :class:`ConceptIntervention`; with a concept-invariant ``shape_readout`` it also
reports how much the VAE's counterfactuals change the shape (:func:`shape_shift`).

The TCAV column goes through :class:`xai_lightning.concepts.TCAV` (configured by the caller):
the concept set is the observed images that show the concept (what a TCAV user would collect),
the random pool is all observed images, and the score is the sign-count TCAV of the target class
with its p-value against random-vs-random CAVs. TCAV is not a causal effect — it is a fraction in
[0, 1], 0.5 meaning "no direction" — so compare its *departure from 0.5 and significance*, not
its value, with the CaCE columns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from xai_lightning.concepts.cace import Output, conexp, ground_truth_cace, interventional_effect
from xai_lightning.concepts.conditional_vae import ConditionalVAE
from xai_lightning.concepts.counterfactual_fidelity import shape_shift
from xai_lightning.concepts.decoder_cace import dec_counterfactuals
from xai_lightning.concepts.encoder_decoder_cace import Counterfactual, encdec_counterfactuals
from xai_lightning.concepts.interventions import ConceptIntervention

__all__ = ["CACE_COLUMNS", "compare_cace_estimators", "tcav_of_intervention", "vae_estimates"]

#: Keys of :func:`compare_cace_estimators`' row, in table order.
CACE_COLUMNS = (
    "concept",
    "target",
    "num_samples",
    "observed_fraction",
    "gt_cace",
    "gt_cace_stderr",
    "gt_cace_class0",
    "gt_cace_class1",
    "encdec_cace",
    "encdec_cace_stderr",
    "dec_cace",
    "dec_cace_stderr",
    "shape_shift",
    "conexp",
    "conexp_stderr",
    "tcav",
    "tcav_std",
    "tcav_p_value",
    "tcav_significant",
    "tcav_cav_accuracy",
)


def vae_estimates(
    model: nn.Module,
    intervention: ConceptIntervention,
    vae: ConditionalVAE,
    output: Output = "probability",
    max_batch: int | None = 256,
    counterfactual: Counterfactual = "decoded",
    shape_readout: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """EncDec-CaCE, Dec-CaCE (with standard errors) and, given a readout, the shape shift of the EncDec pairs.

    The shape shift is measured on the *decoded* pairs (the generator's own change of the shape),
    in units of the readout's class gap on the observed images (a stable scale: the gap of blurry
    reconstructions can be near 0).
    """
    treated, control = encdec_counterfactuals(vae, intervention, max_batch, counterfactual)
    encdec = interventional_effect(model, treated, control, intervention.target, output, max_batch)
    prior_treated, prior_control = dec_counterfactuals(vae, intervention, seed, max_batch)
    dec = interventional_effect(model, prior_treated, prior_control, intervention.target, output, max_batch)
    row = {
        "encdec_cace": encdec.value,
        "encdec_cace_stderr": encdec.stderr,
        "dec_cace": dec.value,
        "dec_cace_stderr": dec.stderr,
        "shape_shift": float("nan"),
    }
    if shape_readout is not None:
        decoded_treated, decoded_control = (
            (treated, control)
            if counterfactual == "decoded"
            else encdec_counterfactuals(vae, intervention, max_batch, "decoded")
        )
        row["shape_shift"] = shape_shift(
            decoded_treated, decoded_control, intervention.images, intervention.labels, shape_readout
        )
    return row


def tcav_of_intervention(
    model: nn.Module, intervention: ConceptIntervention, tcav: Any, layers: list[str] | None = None
) -> dict[str, float | bool]:
    """Sign-count TCAV of the intervention's concept for its target class, via a configured ``TCAV``.

    Returns ``tcav`` (mean over random sets), ``tcav_std``, ``tcav_p_value``, ``tcav_significant``
    and ``tcav_cav_accuracy`` for the first (or only) layer.
    """
    concept_images = intervention.images[intervention.observed]
    if concept_images.shape[0] < 3:
        raise ValueError(
            f"TCAV of {intervention.name!r} needs at least 3 observed examples of the concept; "
            f"got {concept_images.shape[0]}."
        )
    resolved = layers if layers is not None else tcav.resolve_layers(model, intervention.images)
    cavs = tcav.fit_cavs(model, {intervention.name: concept_images}, intervention.images, layers=resolved)
    result = tcav.score(model, intervention.images, intervention.labels, cavs, classes=[intervention.target])
    row = result.rows()[0]
    return {
        "tcav": row["tcav_mean"],
        "tcav_std": row["tcav_std"],
        "tcav_p_value": row["p_value"],
        "tcav_significant": row["significant"],
        "tcav_cav_accuracy": row["cav_accuracy_mean"],
    }


def compare_cace_estimators(
    model: nn.Module,
    intervention: ConceptIntervention,
    *,
    vae: ConditionalVAE | None = None,
    tcav: Any | None = None,
    tcav_layers: list[str] | None = None,
    output: Output = "probability",
    max_batch: int | None = 256,
    counterfactual: Counterfactual = "decoded",
    shape_readout: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """One row with every estimator that applies (keys :data:`CACE_COLUMNS`; NaN where one does not).

    ``vae``: a conditional VAE fitted on the observed data (EncDec-/Dec-CaCE columns, and the
    shape shift when a concept-invariant ``shape_readout`` is given); ``tcav``: a configured
    :class:`xai_lightning.concepts.TCAV` (TCAV columns). Ground truth needs the intervention's
    generator (``gt_cace_class<k>``: the ground truth over the samples of class k, for binary
    classes); ConExp needs samples with and without the concept.
    """
    nan = float("nan")
    observed = intervention.observed
    row: dict[str, Any] = {key: nan for key in CACE_COLUMNS}
    row.update(
        concept=intervention.name,
        target=intervention.target,
        num_samples=int(observed.numel()),
        observed_fraction=float(observed.float().mean()),
        tcav_significant=False,
    )
    if intervention.render is not None:
        truth = ground_truth_cace(model, intervention, output, max_batch)
        row.update(gt_cace=truth.value, gt_cace_stderr=truth.stderr)
        assert truth.per_example is not None
        for k in (0, 1):
            members = intervention.labels == k
            if members.any():
                row[f"gt_cace_class{k}"] = float(truth.per_example[members].mean())
    if vae is not None:
        row.update(vae_estimates(model, intervention, vae, output, max_batch, counterfactual, shape_readout))
    if 0 < int(observed.sum()) < observed.numel():
        observational = conexp(model, intervention, output, max_batch)
        row.update(conexp=observational.value, conexp_stderr=observational.stderr)
    if tcav is not None and int(observed.sum()) >= 3:
        row.update(tcav_of_intervention(model, intervention, tcav, tcav_layers))
    return row
