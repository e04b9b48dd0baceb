"""Familiarity by reconstruction: an autoencoder's reconstruction error as an uncertainty score.

An autoencoder trained on what the model sees — its inputs, or the (detached) features of one of
its layers — reconstructs familiar inputs well and unfamiliar ones badly; its per-example
reconstruction error is a score that is high for out-of-distribution inputs (the lecture's
"approach A"; cf. Japkowicz et al. 1995, and reconstruction-based novelty detection generally).
The autoencoder is trained separately from the model, with its own optimiser, and never sends a
gradient into it.

Images or feature maps ``(C, H, W)`` get a small convolutional autoencoder with a dense
bottleneck (so it cannot learn the identity); flat features ``(D,)`` get an MLP autoencoder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from xai_lightning.core import isolated_rng, map_batched

__all__ = ["FamiliarityAutoencoder", "fit_autoencoder", "reconstruction_error", "training_step"]


class FamiliarityAutoencoder(nn.Module):
    """Autoencoder for inputs of one per-example ``shape``: ``(B, *shape) → (B, *shape)``.

    Args:
        shape: per-example shape, ``(C, H, W)`` (convolutional, H and W ≥ 4) or ``(D,)`` (MLP).
        bottleneck: size of the code; small codes generalise less to unfamiliar inputs.
        width: channels (conv) or hidden units (MLP) of the encoder and decoder.
    """

    def __init__(self, shape: Sequence[int], bottleneck: int = 16, width: int = 32) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        if bottleneck < 1 or width < 1:
            raise ValueError(f"bottleneck and width must be >= 1; got {bottleneck}, {width}")
        self.bottleneck, self.width = bottleneck, width
        self.convolutional = len(self.shape) == 3 and min(self.shape[1:]) >= 4
        if self.convolutional:
            channels, height, width_px = self.shape
            self.code_size = (-(-height // 4), -(-width_px // 4))
            flat = 2 * width * self.code_size[0] * self.code_size[1]
            self.encoder = nn.Sequential(
                nn.Conv2d(channels, width, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(flat, bottleneck),
            )
            self.decoder_input = nn.Linear(bottleneck, flat)
            self.decoder = nn.Sequential(
                nn.ReLU(),
                nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
                nn.ReLU(),
                nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1),
            )
        else:
            features = 1
            for size in self.shape:
                features *= size
            self.encoder = nn.Sequential(
                nn.Flatten(), nn.Linear(features, width), nn.ReLU(), nn.Linear(width, bottleneck)
            )
            self.decoder_input = nn.Linear(bottleneck, width)
            self.decoder = nn.Sequential(nn.ReLU(), nn.Linear(width, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"FamiliarityAutoencoder for {self.shape} got inputs {tuple(x.shape)}")
        hidden = self.decoder_input(self.encoder(x))
        if self.convolutional:
            hidden = hidden.view(x.shape[0], 2 * self.width, *self.code_size)
            out = self.decoder(hidden)
            if tuple(out.shape[-2:]) != self.shape[1:]:
                out = F.interpolate(out, size=self.shape[1:], mode="bilinear", align_corners=False)
            return out
        return self.decoder(hidden).view(x.shape[0], *self.shape)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error over the batch (the training objective)."""
        return F.mse_loss(self(x), x)


def reconstruction_error(
    autoencoder: FamiliarityAutoencoder, x: torch.Tensor, max_batch: int | None = None
) -> torch.Tensor:
    """Per-example mean squared reconstruction error ``(N,)`` of ``x (N, *shape)`` (high = unfamiliar)."""
    with torch.no_grad():
        return map_batched(
            lambda rows: (autoencoder(rows) - rows).square().flatten(1).mean(1), x.float(), max_batch=max_batch
        )


def training_step(
    autoencoder: FamiliarityAutoencoder,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    before_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """One optimiser step on the reconstruction loss of ``x`` (a detached copy); returns the loss (detached).

    ``before_step`` runs between ``backward`` and ``step`` (e.g. averaging gradients over DDP ranks).
    Runs with autograd enabled even inside ``no_grad``/``inference_mode``.
    """
    with torch.inference_mode(False), torch.enable_grad():
        inputs = x.detach().float().clone()
        autoencoder.train()
        loss = autoencoder.loss(inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if before_step is not None:
            before_step()
        optimizer.step()
        autoencoder.eval()
    return loss.detach()


def fit_autoencoder(
    x: torch.Tensor,
    steps: int = 500,
    batch_size: int = 64,
    lr: float = 1e-3,
    bottleneck: int = 16,
    width: int = 32,
    seed: int = 0,
) -> FamiliarityAutoencoder:
    """Train a :class:`FamiliarityAutoencoder` on ``x (N, *shape)`` (in-distribution data) with Adam.

    Initialisation and mini-batches come from a private generator seeded with ``seed``; no global
    generator is read or advanced.
    """
    generator = torch.Generator().manual_seed(seed)
    with isolated_rng():
        torch.default_generator.manual_seed(seed)
        autoencoder = FamiliarityAutoencoder(tuple(x.shape[1:]), bottleneck=bottleneck, width=width).to(x.device)
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=lr)
    for _ in range(steps):
        rows = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=generator)
        training_step(autoencoder, optimizer, x[rows.to(x.device)])
    return autoencoder.eval()
