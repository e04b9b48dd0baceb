"""A small convolutional VAE trained on the dataset: the generator prior of feature visualisation.

Nguyen et al. (NeurIPS 2016, "Synthesizing the preferred inputs for neurons in neural networks via
deep generator networks", DGN) optimise the *code* of a generator network instead of pixels, so
that every visualisation is an image the generator can produce — close to the training data.
Their generator is a large GAN-trained decoder of ImageNet features; at ConceptWorld's scale a
variational autoencoder (Kingma & Welling, ICLR 2014) trained here in seconds serves the same
purpose: its decoder maps a Gaussian code ``z ~ N(0, I)`` to images of the data distribution, and
the Gaussian prior on ``z`` is the natural code regulariser (DGN clips its codes to the range seen
in training instead).

Architecture for ``S×S`` images (``S`` divisible by 4), width ``w``: encoder
conv(4, stride 2) ``C→w`` – LReLU – conv(4, stride 2) ``w→2w`` – LReLU – linear to ``(μ, log σ²)``;
decoder linear – LReLU – transposed conv ``2w→w`` – LReLU – transposed conv ``w→C`` – plus a
learned per-pixel bias – sigmoid (LReLU: leaky ReLU, slope 0.2). :func:`train_vae` starts that
bias at the logit of the training images' mean, so the decoder begins at the mean image and
spends its few training steps on what varies (the object's colour, position and shape) instead of
first learning the background. The leaky ReLUs keep units from dying: with plain ReLUs and that
start, 2 of 6 seeds collapsed to the mean image (every unit of a layer dead, the loss stuck at
the mean image's), none of 14 with leaky ones.
Loss: binary cross-entropy of the reconstruction plus the Gaussian KL, both summed per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xai_lightning.core import isolated_rng

__all__ = ["ConvVAE", "train_vae", "vae_loss"]


class ConvVAE(nn.Module):
    """Convolutional VAE for ``(C, S, S)`` images in ``[0, 1]``.

    Args:
        channels: image channels.
        image_size: side ``S`` (divisible by 4).
        latent_dim: size of the code ``z``.
        width: channels of the first conv layer.
    """

    #: Mean loss of every training epoch; set by :func:`train_vae`.
    training_losses: list[float]

    def __init__(self, channels: int = 3, image_size: int = 32, latent_dim: int = 16, width: int = 16) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"ConvVAE needs an image size divisible by 4; got {image_size}")
        self.channels, self.image_size, self.latent_dim, self.width = channels, image_size, latent_dim, width
        side = image_size // 4
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.to_code = nn.Linear(2 * width * side * side, 2 * latent_dim)
        self.from_code = nn.Sequential(nn.Linear(latent_dim, 2 * width * side * side), nn.LeakyReLU(0.2))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1),
        )
        #: Per-pixel logit added to the decoder's output (train_vae starts it at the data's mean image).
        self.mean_logit = nn.Parameter(torch.zeros(channels, image_size, image_size))

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, S, S)`` → ``(μ, log σ²)``, each ``(B, latent_dim)``."""
        mean, log_variance = self.to_code(self.encoder(images)).chunk(2, dim=1)
        return mean, log_variance

    def decode_logits(self, codes: torch.Tensor) -> torch.Tensor:
        side = self.image_size // 4
        hidden = self.from_code(codes).view(-1, 2 * self.width, side, side)
        return self.decoder(hidden) + self.mean_logit

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, latent_dim)`` → images ``(B, C, S, S)`` in ``(0, 1)``."""
        return torch.sigmoid(self.decode_logits(codes))

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction logits, μ and log σ² (the code is sampled with the reparameterisation trick)."""
        mean, log_variance = self.encode(images)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        codes = mean + noise * (0.5 * log_variance).exp()
        return self.decode_logits(codes), mean, log_variance


def vae_loss(
    reconstruction_logits: torch.Tensor, images: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor
) -> torch.Tensor:
    """Negative ELBO per image, averaged over the batch: BCE(reconstruction) + KL(q(z|x) ‖ N(0, I))."""
    reconstruction = F.binary_cross_entropy_with_logits(reconstruction_logits, images, reduction="sum")
    kl = -0.5 * (1 + log_variance - mean.square() - log_variance.exp()).sum()
    return (reconstruction + kl) / images.shape[0]


def train_vae(
    images: torch.Tensor,
    *,
    latent_dim: int = 16,
    width: int = 16,
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
) -> ConvVAE:
    """Train a :class:`ConvVAE` on ``images (N, C, S, S)`` in ``[0, 1]`` with Adam; returns it in eval mode.

    The decoder starts at the images' mean (see the module docstring). The defaults (a 16-d code,
    width 16, 30 epochs of batches of 32: 480 Adam steps on 512 images, seconds on a CPU) learn
    the object's colour and position on ConceptWorld; 160 steps of batches of 64 learned little
    more than the mean image.

    Deterministic for a given seed, and isolated: the initialisation, shuffling and sampling use
    their own seeded generators and the global random state is restored afterwards, so training
    the prior in the middle of a run does not shift the run's random stream.
    ``vae.training_losses`` holds the mean loss of every epoch.
    """
    if images.dim() != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"train_vae needs square images (N, C, S, S); got {tuple(images.shape)}")
    if images.min() < 0 or images.max() > 1:
        raise ValueError("train_vae needs images in [0, 1] (the decoder ends in a sigmoid).")
    images = images.detach().float()
    with isolated_rng(), torch.inference_mode(False), torch.enable_grad():
        # Only the CPU generator initialises the weights (CUDA seeding would leak a lazy seed).
        torch.default_generator.manual_seed(seed)
        vae = ConvVAE(images.shape[1], images.shape[2], latent_dim, width).to(images.device)
        with torch.no_grad():
            vae.mean_logit.copy_(torch.logit(images.mean(0).clamp(0.01, 0.99)))
        generator = torch.Generator(device=images.device).manual_seed(seed)
        optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
        losses = []
        vae.train()
        for _ in range(epochs):
            order = torch.randperm(images.shape[0], generator=generator, device=images.device)
            total = 0.0
            for start in range(0, images.shape[0], batch_size):
                batch = images[order[start : start + batch_size]]
                logits, mean, log_variance = vae(batch, generator=generator)
                loss = vae_loss(logits, batch, mean, log_variance)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss) * batch.shape[0]
            losses.append(total / images.shape[0])
    vae.training_losses = losses
    return vae.eval()
