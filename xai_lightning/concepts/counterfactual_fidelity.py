"""Does a counterfactual generator change only the concept? The shape shift of its intervention pairs.

A true intervention ``do(colour = c)`` on BARS changes the bars' colour and nothing else, so any
reading of the image that ignores colour — e.g. :func:`xai_lightning.data.bars.orientation_evidence`
on R + G — is identical on the two arms. A learned generator (the conditional VAE behind
EncDec-/Dec-CaCE) may instead change the shape along with the concept when the two were
confounded in its training data; the classifier then reacts to the shape change and the
"causal" estimate inherits the confounding. :func:`shape_shift` measures that leak.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["shape_shift"]


def shape_shift(
    treated: torch.Tensor,
    control: torch.Tensor,
    reference: torch.Tensor,
    labels: torch.Tensor,
    readout: Callable[[torch.Tensor], torch.Tensor],
) -> float:
    """Mean ``readout(treated) − readout(control)`` in units of the class gap of ``readout`` on ``reference``.

    Args:
        treated, control: ``(N, C, H, W)`` the two arms of N counterfactual pairs.
        reference: ``(M, C, H, W)`` images of known classes (e.g. the generator's reconstructions
            of the observed images) that fix the scale.
        labels: ``(M,)`` their classes in {0, 1}.
        readout: concept-invariant score ``(N, C, H, W) → (N,)``, larger for class 1.

    Returns:
        0 for a generator that leaves the shape alone (exactly 0 for a true intervention); 1 when
        switching the concept moves the shape as far as changing the class from 0 to 1 does;
        negative towards class 0.
    """
    if treated.shape != control.shape:
        raise ValueError(
            f"treated and control must have the same shape; got {tuple(treated.shape)} and {tuple(control.shape)}"
        )
    scores = readout(reference).double()
    labels = labels.long().to(scores.device)
    if not ((labels == 0).any() and (labels == 1).any()):
        raise ValueError("The reference images need both classes (0 and 1) to fix the scale of the shape shift.")
    gap = scores[labels == 1].mean() - scores[labels == 0].mean()
    if gap.abs() < 1e-12:
        raise ValueError("The readout does not separate the reference classes (gap 0); the shift has no scale.")
    return float(((readout(treated).double() - readout(control).double()).mean() / gap).item())
