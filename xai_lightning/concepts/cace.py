"""Causal concept effect (CaCE): ground truth by intervention, and the observational ConExp.

Goyal, Feder, Shalit, Kim (2019), "Explaining Classifiers with Causal Concept Effect (CaCE)":

* ``CaCE(C, f) = E[f(I) | do(C = 1)] − E[f(I) | do(C = 0)]`` — the change in the classifier's
  output when the concept is switched on vs off *and nothing else changes*. With a generator we
  compute it exactly on a sample: render every sample twice, with the concept set to 1 and to 0
  (:func:`ground_truth_cace`).
* ``ConExp(C, f) = E[f(I) | C = 1] − E[f(I) | C = 0]`` — the same contrast on *observed* data
  (:func:`conexp`). Under confounding it mixes the concept's effect with the effect of whatever
  the concept correlates with: a model that reads only orientation on BARS has CaCE(colour) = 0
  but ConExp(colour) = the colour–class correlation.

``f`` is the softmax probability of the intervention's target class (``output="probability"``,
the paper's choice) or its logit. Models run under :func:`xai_lightning.observe` (eval mode,
restored afterwards; RNG isolated) in slices of ``max_batch`` images. The conditional-VAE
estimator lives in :mod:`xai_lightning.concepts.encoder_decoder_cace`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from xai_lightning.concepts.interventions import ConceptIntervention
from xai_lightning.core import batch_slices, observe

__all__ = ["CaCEResult", "class_output", "conexp", "ground_truth_cace", "interventional_effect"]

Output = Literal["probability", "logit"]


@dataclass(frozen=True)
class CaCEResult:
    """One estimate of a concept's effect on a class output.

    Attributes:
        value: the estimate (difference of means of ``f``; for probabilities in [−1, 1]).
        stderr: its standard error (paired for interventional estimates, Welch for ConExp).
        num_samples: samples used (for ConExp: both groups together).
        per_example: ``(N,)`` per-sample effects ``f(do C=1) − f(do C=0)`` for interventional
            estimators; None for ConExp.
    """

    value: float
    stderr: float
    num_samples: int
    per_example: torch.Tensor | None = field(default=None, repr=False)


def class_output(
    model: nn.Module, images: torch.Tensor, target: int, output: Output = "probability", max_batch: int | None = 256
) -> torch.Tensor:
    """``(N,)`` softmax probability (or logit) of class ``target``; batched, no gradients, model in eval mode."""
    if output not in ("probability", "logit"):
        raise ValueError(f"output must be 'probability' or 'logit'; got {output!r}")
    device = next(model.parameters(), torch.empty(0)).device
    values = []
    with observe(model), torch.no_grad():
        for rows in batch_slices(images.shape[0], max_batch):
            logits = model(images[rows].to(device))
            if logits.dim() != 2:
                raise ValueError(f"model must return logits (B, num_classes); got shape {tuple(logits.shape)}")
            if not 0 <= target < logits.shape[1]:
                raise ValueError(f"target class {target} out of range 0..{logits.shape[1] - 1}")
            scores = logits.softmax(dim=1) if output == "probability" else logits
            values.append(scores[:, target].float().cpu())
    return torch.cat(values) if values else torch.zeros(0)


def interventional_effect(
    model: nn.Module,
    treated_images: torch.Tensor,
    control_images: torch.Tensor,
    target: int,
    output: Output = "probability",
    max_batch: int | None = 256,
) -> CaCEResult:
    """Mean paired effect ``f(treated_i) − f(control_i)`` over N sample pairs (the same samples, intervened)."""
    if treated_images.shape != control_images.shape:
        raise ValueError(
            f"treated and control images must have the same shape; got {tuple(treated_images.shape)} "
            f"and {tuple(control_images.shape)}"
        )
    n = treated_images.shape[0]
    if n == 0:
        raise ValueError("No samples: CaCE needs at least one intervened pair.")
    effects = class_output(model, treated_images, target, output, max_batch) - class_output(
        model, control_images, target, output, max_batch
    )
    stderr = float(effects.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return CaCEResult(value=float(effects.mean()), stderr=stderr, num_samples=n, per_example=effects)


def ground_truth_cace(
    model: nn.Module, intervention: ConceptIntervention, output: Output = "probability", max_batch: int | None = 256
) -> CaCEResult:
    """Ground-truth CaCE (Goyal et al. 2019): re-render each sample with the concept on and off.

    ``E[f | do(C=1)] − E[f | do(C=0)]`` estimated on the intervention's N samples, whose other
    latents follow the data distribution; f = P(target) by default.
    """
    treated, control = intervention.intervened()
    return interventional_effect(model, treated, control, intervention.target, output, max_batch)


def conexp(
    model: nn.Module, intervention: ConceptIntervention, output: Output = "probability", max_batch: int | None = 256
) -> CaCEResult:
    """Observational concept effect ``E[f | C=1] − E[f | C=0]`` (Goyal et al. 2019, "ConExp").

    C = 1 for samples whose observed concept value is the treated value. Needs both groups
    non-empty. Biased under confounding: it credits the concept with the effect of everything
    correlated with it.
    """
    observed = intervention.observed
    n1, n0 = int(observed.sum()), int((~observed).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError(
            f"ConExp of {intervention.name!r} needs samples with and without the concept; "
            f"got {n1} with and {n0} without. Use more samples or a less confounded set."
        )
    f = class_output(model, intervention.images, intervention.target, output, max_batch)
    on, off = f[observed], f[~observed]
    variance = (on.var(unbiased=True) / n1 if n1 > 1 else 0.0) + (off.var(unbiased=True) / n0 if n0 > 1 else 0.0)
    return CaCEResult(
        value=float(on.mean() - off.mean()), stderr=float(math.sqrt(float(variance))), num_samples=n1 + n0
    )
