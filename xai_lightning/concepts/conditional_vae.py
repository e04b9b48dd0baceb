"""A small convolutional conditional VAE: the counterfactual generator behind EncDec- and Dec-CaCE.

Goyal et al. (2019) estimate CaCE without a known generator by training a VAE whose encoder and
decoder are both conditioned on the concept: ``q(z | x, c)`` and ``p(x | z, c)``. The KL term
pushes the latent z to drop what the condition already says, so that decoding the same z with a
different c is meant to be a counterfactual of the same image.

**Why that fails under confounding, and the fix.** When the concept is confounded with the class
(BARS: green ↔ vertical), the condition c also says most of what there is to say about the
*class*, so the KL term pushes the class (the bars' orientation) out of z and into c: decoding
with the other colour then also turns the bars — the "counterfactual" changes the shape, and the
estimate inherits the confounding (measured: EncDec tracked ConExp, not the ground truth). Two
remedies, both on by default in :func:`fit_conditional_vae` when class labels are given:

* **condition on the class too** (``num_classes > 0``): ``q(z | x, c, y)`` and ``p(x | z, c, y)``.
  The class is then held fixed by construction when only c is changed — the intervention
  ``do(C = c')`` with the concept's confounder (the class) unchanged;
* **balance the training data** (``balance=True``): weight each image by ``1 / P̂(c | y)``
  (inverse propensity, normalised to mean 1), so that in the weighted data c carries no
  information about y. The decoder must then learn what c does *on its own*, including on the
  rare combinations (a green horizontal bar) that confounding makes scarce.

Both need the class labels of the VAE's training images (which a user who trained the
classifier has); balancing also needs every (concept, class) combination to occur (positivity:
it fails at confounding 1 and for rows such as "horizontal bars are always red", where the
decoder can only extrapolate — a warning says so).

Architecture (images ``(N, C, S, S)`` in [0, 1], S divisible by 4): the one-hot condition
(concept, then class) is broadcast to extra input channels of the encoder (two stride-2 convs,
then a linear map to the mean and log-variance of z), concatenated to z for the decoder (linear,
two stride-2 transposed convs, sigmoid) and broadcast again before each transposed conv, so that
the last layer can colour what the latent draws. Loss: per-image summed binary cross-entropy
+ ``beta`` · KL, optionally weighted per image.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from xai_lightning.core import isolated_rng

__all__ = ["ConditionalVAE", "fit_conditional_vae", "inverse_propensity_weights"]


class ConditionalVAE(nn.Module):
    """``q(z | x, c[, y])`` and ``p(x | z, c[, y])`` for a categorical concept c (and optionally the class y).

    Args:
        image_shape: ``(C, S, S)`` with S divisible by 4.
        num_values: K, the number of concept values (size of its one-hot condition).
        latent_dim: size of z.
        width: channels of the first conv (the second has twice as many).
        num_classes: 0 (default): not conditioned on the class; else the number of classes of
            the class condition y.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_values: int,
        latent_dim: int = 16,
        width: int = 32,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        channels, height, width_px = image_shape
        if height % 4 or width_px % 4:
            raise ValueError(f"ConditionalVAE needs image sides divisible by 4; got {tuple(image_shape)}")
        if num_values < 2:
            raise ValueError(f"num_values must be >= 2; got {num_values}")
        if num_classes < 0 or num_classes == 1:
            raise ValueError(f"num_classes must be 0 (no class condition) or >= 2; got {num_classes}")
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1; got {latent_dim}")
        self.image_shape = tuple(image_shape)
        self.num_values = num_values
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        conditions = num_values + num_classes
        grid = (height // 4, width_px // 4)
        self._grid = (2 * width, *grid)
        self.latent_shape: tuple[int, ...] = (latent_dim,)
        self.encoder = nn.Sequential(
            nn.Conv2d(channels + conditions, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        )
        flat = 2 * width * grid[0] * grid[1]
        self.to_stats = nn.Linear(flat + conditions, 2 * latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(latent_dim + conditions, flat), nn.LeakyReLU(0.2))
        # The condition enters every decoder stage, the last one too: painting a region in the
        # condition's colour is then a local, per-pixel job that the latent need not carry.
        self.upsample = nn.ConvTranspose2d(2 * width + conditions, width, 4, stride=2, padding=1)
        self.to_image = nn.ConvTranspose2d(width + conditions, channels, 4, stride=2, padding=1)

    @property
    def class_conditioned(self) -> bool:
        return self.num_classes > 0

    def condition(self, values: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, K [+ num_classes])`` one-hot condition; ``classes`` is required iff the VAE is class-conditioned."""
        parts = [F.one_hot(values.long(), self.num_values).float()]
        if self.class_conditioned:
            if classes is None:
                raise ValueError("This VAE is conditioned on the class: pass classes (the images' class labels).")
            parts.append(F.one_hot(classes.long(), self.num_classes).float())
        elif classes is not None:
            raise ValueError("This VAE is not conditioned on the class (num_classes=0); do not pass classes.")
        return torch.cat(parts, dim=1)

    @staticmethod
    def _broadcast(condition: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return condition.view(*condition.shape, 1, 1).expand(-1, -1, *like.shape[2:])

    def encode(
        self, images: torch.Tensor, values: torch.Tensor, classes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of ``q(z | x, c[, y])``, each ``(N, *latent_shape)``."""
        condition = self.condition(values, classes)
        features = self.encoder(torch.cat([images, self._broadcast(condition, images)], dim=1))
        mean, log_var = self.to_stats(torch.cat([features.flatten(1), condition], dim=1)).chunk(2, dim=1)
        return mean, log_var

    def decode_logits(self, z: torch.Tensor, values: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        condition = self.condition(values, classes)
        hidden = self.from_latent(torch.cat([z, condition], dim=1)).view(-1, *self._grid)
        hidden = F.leaky_relu(self.upsample(torch.cat([hidden, self._broadcast(condition, hidden)], dim=1)), 0.2)
        return self.to_image(torch.cat([hidden, self._broadcast(condition, hidden)], dim=1))

    def decode(self, z: torch.Tensor, values: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Images ``(N, C, S, S)`` in [0, 1] from latents ``(N, *latent_shape)`` and conditions ``(N,)``."""
        return torch.sigmoid(self.decode_logits(z, values, classes))

    def counterfactual(
        self, images: torch.Tensor, values: torch.Tensor, new_values: torch.Tensor, classes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Decode the posterior mean of ``(images, values[, classes])`` with the concept set to ``new_values``."""
        mean, _ = self.encode(images, values, classes)
        return self.decode(mean, new_values, classes)

    def loss(
        self,
        images: torch.Tensor,
        values: torch.Tensor,
        beta: float = 1.0,
        classes: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Negative ELBO per image (summed BCE + beta · KL), averaged over the batch (weighted by ``weights``)."""
        mean, log_var = self.encode(images, values, classes)
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
        recon = F.binary_cross_entropy_with_logits(self.decode_logits(z, values, classes), images, reduction="none")
        kl = -0.5 * (1 + log_var - mean.square() - log_var.exp())
        per_image = recon.flatten(1).sum(1) + beta * kl.sum(1)
        if weights is None:
            return per_image.mean()
        return (per_image * weights).sum() / weights.sum()


def inverse_propensity_weights(
    values: torch.Tensor, classes: torch.Tensor, num_values: int, num_classes: int
) -> torch.Tensor:
    """``(N,)`` weights ``1 / P̂(c | y)``, normalised to mean 1, that make c independent of y in the weighted data.

    ``P̂`` is the empirical frequency. When a class lacks a concept value (positivity violated,
    e.g. confounding 1 or "horizontal bars are always red"), no weighting can create the missing
    combination: a warning says so, and the decoder will have to extrapolate to it.
    """
    counts = torch.zeros(num_classes, num_values, dtype=torch.float64)
    ones = torch.ones(values.shape[0], dtype=torch.float64)
    counts.index_put_((classes.long(), values.long()), ones, accumulate=True)
    present = counts.sum(1) > 0
    missing = [
        (int(y), int(c)) for y in torch.nonzero(present).flatten() for c in range(num_values) if counts[y, c] == 0
    ]
    if missing:
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        shown = ", ".join(str(pair) for pair in missing[:4]) + more
        warnings.warn(
            f"(class, concept value) combinations {shown} never occur in the VAE's training data "
            "(positivity violated): balancing cannot create them, and counterfactuals that need them are "
            "extrapolations.",
            stacklevel=2,
        )
    propensity = counts / counts.sum(1, keepdim=True).clamp_min(1.0)
    weights = 1.0 / propensity[classes.long(), values.long()]
    return (weights / weights.mean()).float()


def fit_conditional_vae(
    images: torch.Tensor,
    values: torch.Tensor,
    num_values: int,
    latent_dim: int = 16,
    width: int = 32,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 4e-3,
    beta: float = 1.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    classes: torch.Tensor | None = None,
    num_classes: int | None = None,
    condition_on_class: bool = True,
    balance: bool = True,
    kl_warmup: float = 0.5,
) -> ConditionalVAE:
    """Train a :class:`ConditionalVAE` on ``images (N, C, S, S)`` in [0, 1] with concept ``values (N,)``.

    Args:
        classes: ``(N,)`` class labels of the images. When given, the VAE is conditioned on them
            (``condition_on_class``) and the training images are weighted to break the
            concept–class correlation (``balance``); see the module docstring for why. Without
            classes, the plain concept-conditioned VAE of Goyal et al. is trained.
        num_classes: number of classes (default: ``classes.max() + 1``).
        kl_warmup: fraction of the training steps over which the KL weight ramps linearly from 0
            to ``beta`` (0: none). Defaults (30 epochs of batches of 64 at lr 4e-3, warm-up over
            half the steps) were chosen on BARS: fewer steps left the bars' colour faint in the
            decodings (the classifier then reads less colour: EncDec-CaCE underestimates).

    Seeded (initialisation, shuffling and reparameterisation noise) and isolated from the global
    random streams. Returns the model in eval mode.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W); got shape {tuple(images.shape)}")
    if values.shape != (images.shape[0],):
        raise ValueError(f"values must have shape ({images.shape[0]},) to match images; got {tuple(values.shape)}")
    if images.min() < 0 or images.max() > 1:
        raise ValueError("images must lie in [0, 1] (the decoder ends in a sigmoid).")
    weights = None
    class_condition = 0
    if classes is not None:
        if classes.shape != values.shape:
            raise ValueError(
                f"classes must have shape {tuple(values.shape)} to match values; got {tuple(classes.shape)}"
            )
        k = int(num_classes) if num_classes is not None else int(classes.max()) + 1
        if balance:
            weights = inverse_propensity_weights(values, classes, num_values, k)
        class_condition = k if condition_on_class else 0
    with isolated_rng():
        torch.manual_seed(seed)
        image_shape = (images.shape[1], images.shape[2], images.shape[3])  # (C, H, W): images are 4-D
        vae = ConditionalVAE(image_shape, num_values, latent_dim, width, num_classes=class_condition).to(device)
        optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed)
        n = images.shape[0]
        vae.train()
        steps = epochs * -(-n // batch_size)
        warmup = int(kl_warmup * steps)
        step = 0
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch_size):
                rows = order[start : start + batch_size]
                # KL warm-up: beta ramps up from 0, so the latent learns to draw the objects before the
                # KL term can squeeze it shut (posterior collapse leaves small objects undrawn).
                current_beta = beta * min(1.0, (step + 1) / warmup) if warmup else beta
                step += 1
                loss = vae.loss(
                    images[rows].to(device),
                    values[rows].to(device),
                    current_beta,
                    classes=classes[rows].to(device) if classes is not None and class_condition else None,
                    weights=weights[rows].to(device) if weights is not None else None,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return vae.eval()
