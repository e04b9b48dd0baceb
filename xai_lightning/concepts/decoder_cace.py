"""Dec-CaCE: causal concept effect from a conditional VAE's decoder alone (Goyal et al. 2019).

The decoder-only variant of :mod:`~xai_lightning.concepts.encoder_decoder_cace`: instead of encoding the
observed images, draw the latent from the prior ``z ~ N(0, I)`` and decode it twice, with the
concept set to the treated and to the control value:
``Dec-CaCE = E_z[f(dec(z, treated)) − f(dec(z, control))]``. It needs no images at estimation
time, only the decoder, and averages over the VAE's model of the data rather than over the
observed samples. A class-conditioned VAE decodes each draw with the class of one observed
sample (so the classes follow the data); the latent draws are seeded.
"""

from __future__ import annotations

import torch
from torch import nn

from xai_lightning.concepts.cace import CaCEResult, Output, interventional_effect
from xai_lightning.concepts.conditional_vae import ConditionalVAE
from xai_lightning.concepts.encoder_decoder_cace import check_vae_fits
from xai_lightning.concepts.interventions import ConceptIntervention
from xai_lightning.core import batch_slices

__all__ = ["dec_cace", "dec_counterfactuals"]


def dec_counterfactuals(
    vae: ConditionalVAE, intervention: ConceptIntervention, seed: int = 0, max_batch: int | None = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(decoded under do(C=1), decoded under do(C=0))``, each ``(N, C, H, W)``, from N prior draws of z."""
    check_vae_fits(vae, intervention)
    device = next(vae.parameters()).device
    n = intervention.images.shape[0]
    z = torch.randn(n, *vae.latent_shape, generator=torch.Generator().manual_seed(seed))
    treated, control = [], []
    was_training = vae.training
    vae.eval()
    try:
        with torch.no_grad():
            for rows in batch_slices(n, max_batch):
                classes = intervention.labels[rows].to(device) if vae.class_conditioned else None
                latent = z[rows].to(device)
                treated.append(vae.decode(latent, intervention.treated[rows].to(device), classes).cpu())
                control.append(vae.decode(latent, intervention.control[rows].to(device), classes).cpu())
    finally:
        vae.train(was_training)
    return torch.cat(treated), torch.cat(control)


def dec_cace(
    model: nn.Module,
    intervention: ConceptIntervention,
    vae: ConditionalVAE,
    output: Output = "probability",
    seed: int = 0,
    max_batch: int | None = 256,
) -> CaCEResult:
    """Dec-CaCE: mean ``f(dec(z, treated)) − f(dec(z, control))`` with ``z ~ N(0, I)`` (seeded)."""
    treated, control = dec_counterfactuals(vae, intervention, seed, max_batch)
    return interventional_effect(model, treated, control, intervention.target, output, max_batch)
