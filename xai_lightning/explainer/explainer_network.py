"""The explainer network: disentangle a performer's features into object-part filters.

Zhang, Yang, Liu, Wu & Zhu, "Unsupervised Learning of Neural Networks to Explain Neural Networks"
(2018). The *performer* is the network being explained; the *explainer* is an auto-encoder
trained on the performer's features, without labels and without changing the performer:

* **encoder**, from the performer's features ``x_in (B, C_in, h, w)`` at an input layer:

  - an *interpretable track*: two interpretable conv layers (3×3 conv → ReLU → mask layer), each
    filter trained with the filter loss of Zhang, Wu & Zhu (CVPR 2018) so that it fires on one
    object part at one location (:mod:`xai_lightning.explainer.filter_templates`);
  - an *ordinary track*: one 3×3 conv → ReLU, for what the part filters cannot express;
  - a gate ``p = sigmoid(w·GAP(x_in) + b) ∈ (0, 1)`` per image mixing them:
    ``x_enc = p · x_interp + (1 − p) · x_ordin`` (``p`` is the share of the knowledge that the
    interpretable filters explain);

* **decoder**: 3×3 conv → ReLU, resampling to the target resolution, 3×3 conv, reconstructing the
  performer's features ``x* (B, C_t, h_t, w_t)`` at an upper (target) layer;

* **loss** ``λ·‖x̂ − x*‖² / ‖x*‖²  +  λ_f · mean_f Loss_f  −  η · mean log p``. The reconstruction
  term is normalised by ``‖x*‖²`` (a relative error, so ``λ`` does not depend on the scale of the
  performer's features, which changes while the performer trains; the paper writes a plain
  squared error with per-layer weights); ``Loss_f`` is the filter loss of every interpretable
  filter of both interpretable layers; ``−η log p`` pushes knowledge through the interpretable
  track.

Default weights (``λ = 1``, ``λ_f = 0.1``, ``η = 0.05``) are ours, tuned on ConceptWorld so that
reconstruction stays good (the paper reports the classification error of the performer when its
upper layers run on the reconstruction, the "Δ error") while ``p`` grows; the architecture
widths are also ours (the paper used VGG-sized layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xai_lightning.explainer.filter_templates import DEFAULT_BETA, filter_loss, mask_to_peak

__all__ = ["ExplainerLoss", "ExplainerNetwork", "ExplainerOutput", "relative_squared_error"]


@dataclass
class ExplainerOutput:
    """What one explainer forward pass produces (shapes for a batch of ``B``).

    Attributes:
        reconstruction: ``(B, C_t, h_t, w_t)`` the reconstructed target-layer features.
        interpretable: ``(B, F, h, w)`` masked maps of the last interpretable layer (the filters
            one looks at).
        interpretable_raw: per interpretable layer, ``(B, F, h, w)`` maps after the ReLU and
            before the mask (what the filter loss scores).
        ordinary: ``(B, F, h, w)`` ordinary-track maps.
        p: ``(B,)`` the interpretable share of each image's encoding.
    """

    reconstruction: torch.Tensor
    interpretable: torch.Tensor
    interpretable_raw: list[torch.Tensor]
    ordinary: torch.Tensor
    p: torch.Tensor


@dataclass
class ExplainerLoss:
    """Terms of the explainer's loss for one batch (scalars; ``total`` carries the graph)."""

    total: torch.Tensor
    reconstruction: torch.Tensor
    filter: torch.Tensor
    log_p: torch.Tensor
    p: torch.Tensor


def _resample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    height, width = x.shape[-2:]
    if (height, width) == tuple(size):
        return x
    if height >= size[0] and width >= size[1]:
        if height % size[0] == 0 and width % size[1] == 0:  # same result, several times faster on CPU
            return F.avg_pool2d(x, (height // size[0], width // size[1]))
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ExplainerNetwork(nn.Module):
    """Encoder (interpretable + ordinary tracks, gate ``p``) and decoder; see the module docstring.

    Args:
        in_channels: channels ``C_in`` of the performer's input-layer features.
        target_channels: channels ``C_t`` of the performer's target-layer features.
        target_size: ``(h_t, w_t)`` of the target-layer features.
        num_filters: interpretable filters per interpretable layer (also the ordinary track's width).
        hidden_channels: decoder width (default ``max(2·num_filters, C_t)``).
        beta: decay of the mask and templates (paper: 4).
    """

    def __init__(
        self,
        in_channels: int,
        target_channels: int,
        target_size: tuple[int, int],
        num_filters: int = 16,
        hidden_channels: int | None = None,
        beta: float = DEFAULT_BETA,
    ) -> None:
        super().__init__()
        if num_filters < 1:
            raise ValueError(f"num_filters must be >= 1; got {num_filters}")
        hidden = hidden_channels or max(2 * num_filters, target_channels)
        self.in_channels = in_channels
        self.target_channels = target_channels
        self.target_size = (int(target_size[0]), int(target_size[1]))
        self.num_filters = num_filters
        self.beta = beta
        self.interpretable = nn.ModuleList(
            [nn.Conv2d(in_channels, num_filters, 3, padding=1), nn.Conv2d(num_filters, num_filters, 3, padding=1)]
        )
        self.ordinary = nn.Conv2d(in_channels, num_filters, 3, padding=1)
        self.gate = nn.Linear(in_channels, 1)
        self.decoder_in = nn.Conv2d(num_filters, hidden, 3, padding=1)
        self.decoder_out = nn.Conv2d(hidden, target_channels, 3, padding=1)
        nn.init.zeros_(self.gate.weight)  # p starts at 0.5 for every image
        nn.init.zeros_(self.gate.bias)
        # The reconstruction starts at zero (relative error 1) instead of at a random scale that can
        # be tens of times the target's energy and cost hundreds of steps to undo.
        nn.init.zeros_(self.decoder_out.weight)
        assert self.decoder_out.bias is not None  # built with bias=True (the default)
        nn.init.zeros_(self.decoder_out.bias)

    def forward(self, x: torch.Tensor) -> ExplainerOutput:
        """``x (B, C_in, h, w)`` performer features → :class:`ExplainerOutput`."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Explainer expects features (B, {self.in_channels}, h, w); got {tuple(x.shape)}")
        raw: list[torch.Tensor] = []
        h = x
        for conv in self.interpretable:
            activated = torch.relu(conv(h))
            raw.append(activated)
            h = mask_to_peak(activated, self.beta)
        ordinary = torch.relu(self.ordinary(x))
        p = torch.sigmoid(self.gate(x.mean(dim=(2, 3)))).squeeze(1)
        mix = p.view(-1, 1, 1, 1)
        encoded = mix * h + (1 - mix) * ordinary
        # The first decoder convolution runs at the encoder's resolution. Pooling the masked part
        # maps before it would be cheaper, but in a ConceptWorld run the filters' location
        # instability then came out higher and less steady over epochs (0.034-0.050 vs 0.037-0.039).
        decoded = torch.relu(self.decoder_in(encoded))
        reconstruction = self.decoder_out(_resample(decoded, self.target_size))
        return ExplainerOutput(
            reconstruction=reconstruction, interpretable=h, interpretable_raw=raw, ordinary=ordinary, p=p
        )

    def loss(
        self,
        x: torch.Tensor,
        target: torch.Tensor,
        reconstruction_weight: float = 1.0,
        filter_weight: float = 0.1,
        eta: float = 0.05,
        output: ExplainerOutput | None = None,
    ) -> ExplainerLoss:
        """The explainer's training loss on input features ``x`` and target features ``target``."""
        out = self(x) if output is None else output
        if out.reconstruction.shape != target.shape:
            raise ValueError(
                f"The explainer reconstructs {tuple(out.reconstruction.shape)} but the target features are "
                f"{tuple(target.shape)}"
            )
        reconstruction = relative_squared_error(out.reconstruction, target)
        filters = torch.stack([filter_loss(maps) for maps in out.interpretable_raw]).mean()
        log_p = out.p.clamp_min(1e-12).log().mean()
        total = reconstruction_weight * reconstruction + filter_weight * filters - eta * log_p
        return ExplainerLoss(
            total=total,
            reconstruction=reconstruction.detach(),
            filter=filters.detach(),
            log_p=log_p.detach(),
            p=out.p.detach().mean(),
        )


def relative_squared_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``‖prediction − target‖² / ‖target‖²`` over the whole batch (0 is perfect, 1 is predicting zeros)."""
    return (prediction - target).square().sum() / target.square().sum().clamp_min(1e-12)
