"""A small convolutional conditional VAE: the counterfactual generator behind EncDec-CaCE.

Goyal et al. (2019) estimate CaCE without a known generator by training a VAE whose encoder and
decoder are both conditioned on the concept: ``q(z | x, c)`` and ``p(x | z, c)``. The KL term
pushes the latent z to drop what the condition already says, so z keeps "everything but the
concept" and decoding the same z with a different c is a counterfactual of the same image.

Architecture (images ``(N, C, S, S)`` in [0, 1], S divisible by 4): the one-hot condition is
broadcast to extra input channels of the encoder (two stride-2 convs, then a linear map to the
mean and log-variance of z) and concatenated to z for the decoder (linear, two stride-2
transposed convs, sigmoid). Loss: per-image summed binary cross-entropy + ``beta`` · KL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xai_lightning.core import isolated_rng

__all__ = ["ConditionalVAE", "fit_conditional_vae"]


class ConditionalVAE(nn.Module):
    """``q(z | x, c)`` and ``p(x | z, c)`` for a categorical condition with ``num_values`` values.

    Args:
        image_shape: ``(C, S, S)`` with S divisible by 4.
        num_values: K, size of the one-hot condition.
        latent_dim: size of z.
        width: channels of the first conv (the second has twice as many).
    """

    def __init__(self, image_shape: tuple[int, int, int], num_values: int, latent_dim: int = 16,
                 width: int = 32) -> None:
        super().__init__()
        channels, height, width_px = image_shape
        if height % 4 or width_px % 4:
            raise ValueError(f"ConditionalVAE needs image sides divisible by 4; got {tuple(image_shape)}")
        if num_values < 2:
            raise ValueError(f"num_values must be >= 2; got {num_values}")
        self.image_shape = tuple(image_shape)
        self.num_values = num_values
        self.latent_dim = latent_dim
        self._grid = (2 * width, height // 4, width_px // 4)
        flat = 2 * width * (height // 4) * (width_px // 4)
        self.encoder = nn.Sequential(
            nn.Conv2d(channels + num_values, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.to_stats = nn.Linear(flat + num_values, 2 * latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(latent_dim + num_values, flat), nn.LeakyReLU(0.2))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1),
        )

    def _one_hot(self, values: torch.Tensor) -> torch.Tensor:
        return F.one_hot(values.long(), self.num_values).float()

    def encode(self, images: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of ``q(z | x, c)``, each ``(N, latent_dim)``."""
        condition = self._one_hot(values)
        maps = condition.view(*condition.shape, 1, 1).expand(-1, -1, *images.shape[2:])
        features = self.encoder(torch.cat([images, maps], dim=1))
        mean, log_var = self.to_stats(torch.cat([features, condition], dim=1)).chunk(2, dim=1)
        return mean, log_var

    def decode_logits(self, z: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        hidden = self.from_latent(torch.cat([z, self._one_hot(values)], dim=1))
        return self.decoder(hidden.view(-1, *self._grid))

    def decode(self, z: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, S, S)`` in [0, 1] from latents ``(N, latent_dim)`` and condition values ``(N,)``."""
        return torch.sigmoid(self.decode_logits(z, values))

    def counterfactual(self, images: torch.Tensor, values: torch.Tensor, new_values: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mean of ``(images, values)`` with the condition set to ``new_values``."""
        mean, _ = self.encode(images, values)
        return self.decode(mean, new_values)

    def loss(self, images: torch.Tensor, values: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
        """Negative ELBO per image (summed BCE + beta · KL), averaged over the batch."""
        mean, log_var = self.encode(images, values)
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
        recon = F.binary_cross_entropy_with_logits(self.decode_logits(z, values), images, reduction="sum")
        kl = -0.5 * (1 + log_var - mean.square() - log_var.exp()).sum()
        return (recon + beta * kl) / images.shape[0]


def fit_conditional_vae(images: torch.Tensor, values: torch.Tensor, num_values: int, latent_dim: int = 16,
                        width: int = 32, epochs: int = 30, batch_size: int = 128, lr: float = 2e-3,
                        beta: float = 1.0, seed: int = 0, device: str | torch.device = "cpu") -> ConditionalVAE:
    """Train a :class:`ConditionalVAE` on ``images (N, C, S, S)`` in [0, 1] with condition ``values (N,)``.

    Seeded (initialisation, shuffling and reparameterisation noise) and isolated from the global
    random streams. Returns the model in eval mode.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W); got shape {tuple(images.shape)}")
    if values.shape != (images.shape[0],):
        raise ValueError(f"values must have shape ({images.shape[0]},) to match images; got {tuple(values.shape)}")
    if images.min() < 0 or images.max() > 1:
        raise ValueError("images must lie in [0, 1] (the decoder ends in a sigmoid).")
    with isolated_rng():
        torch.manual_seed(seed)
        vae = ConditionalVAE(tuple(images.shape[1:]), num_values, latent_dim, width).to(device)
        optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed)
        n = images.shape[0]
        vae.train()
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch_size):
                rows = order[start:start + batch_size]
                loss = vae.loss(images[rows].to(device), values[rows].to(device), beta)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return vae.eval()
