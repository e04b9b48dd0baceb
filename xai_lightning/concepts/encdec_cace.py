"""EncDec-CaCE: causal concept effect from a conditional VAE's counterfactuals (Goyal et al. 2019).

For data without a known generator: train a conditional VAE on the observed images and concept
values (:func:`~xai_lightning.concepts.conditional_vae.fit_conditional_vae`), encode each image
with its observed concept, and decode the *same* latent with the concept set to the treated and
to the control value. The estimate is the mean paired difference of the classifier's output on
the two decodings — both are reconstructions, so the VAE's blur affects both arms alike instead
of being counted as an effect of the concept.
"""

from __future__ import annotations

import torch
from torch import nn

from xai_lightning.concepts.cace import CaCEResult, Output, interventional_effect
from xai_lightning.concepts.conditional_vae import ConditionalVAE, fit_conditional_vae
from xai_lightning.concepts.interventions import ConceptIntervention
from xai_lightning.core import batch_slices

__all__ = ["encdec_cace", "encdec_counterfactuals", "fit_intervention_vae"]


def fit_intervention_vae(intervention: ConceptIntervention, **kwargs) -> ConditionalVAE:
    """A conditional VAE trained on the intervention's observed images and concept values (kwargs: fit settings)."""
    return fit_conditional_vae(intervention.images, intervention.concept, intervention.num_values, **kwargs)


def encdec_counterfactuals(vae: ConditionalVAE, intervention: ConceptIntervention,
                           max_batch: int | None = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``(decoded under do(C=1), decoded under do(C=0))``, each ``(N, C, H, W)``, from the posterior means."""
    if vae.num_values != intervention.num_values:
        raise ValueError(f"The VAE is conditioned on {vae.num_values} concept values but {intervention.name!r} "
                         f"has {intervention.num_values}; fit it with fit_intervention_vae(intervention).")
    if tuple(intervention.images.shape[1:]) != vae.image_shape:
        raise ValueError(f"The VAE was trained on images of shape {vae.image_shape}; got "
                         f"{tuple(intervention.images.shape[1:])}")
    device = next(vae.parameters()).device
    treated, control = [], []
    was_training = vae.training
    vae.eval()
    try:
        with torch.no_grad():
            for rows in batch_slices(intervention.images.shape[0], max_batch):
                mean, _ = vae.encode(intervention.images[rows].to(device), intervention.concept[rows].to(device))
                treated.append(vae.decode(mean, intervention.treated[rows].to(device)).cpu())
                control.append(vae.decode(mean, intervention.control[rows].to(device)).cpu())
    finally:
        vae.train(was_training)
    return torch.cat(treated), torch.cat(control)


def encdec_cace(model: nn.Module, intervention: ConceptIntervention, vae: ConditionalVAE,
                output: Output = "probability", max_batch: int | None = 256) -> CaCEResult:
    """EncDec-CaCE: mean ``f(dec(z, treated)) − f(dec(z, control))`` with ``z = enc(x, observed concept)``."""
    treated, control = encdec_counterfactuals(vae, intervention, max_batch)
    return interventional_effect(model, treated, control, intervention.target, output, max_batch)
