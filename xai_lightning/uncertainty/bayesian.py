"""Bayes by Backprop (Blundell, Cornebise, Kavukcuoglu & Wierstra, ICML 2015) with the local
reparameterisation trick (Kingma, Salimans & Welling, NeurIPS 2015).

Every weight has a factorised Gaussian posterior ``q(w) = N(μ, σ²)``, ``σ = softplus(ρ)``, and a
Gaussian prior ``N(0, σ_p²)``. Instead of sampling weights, a layer samples its *pre-activations*:
for an input ``x`` the output of a linear layer under ``q`` is exactly Gaussian,

    b ~ N(x μᵀ + μ_b,  x² (σ²)ᵀ + σ_b²),

so one draw per output unit and example gives an unbiased, lower-variance estimate of the ELBO
gradient than a shared weight sample per batch. For convolutions the same formula (convolving
``x`` with ``μ`` and ``x²`` with ``σ²``) treats the output positions as independent — the usual
approximation (Kingma et al. 2015; Molchanov et al. 2017), not one shared weight sample per image.

Training minimises ``KL(q ‖ p) / num_batches − E_q log p(y | x, w)`` per mini-batch; the KL
between the factorised Gaussians is closed-form (:meth:`BayesianLayer.kl_divergence`).

A layer samples in training mode, and in eval mode inside :func:`keyed_weight_noise` (which
draws the noise from :class:`~xai_lightning.uncertainty.KeyedNoise`, keyed by example and
sample, without touching any global generator); otherwise, in eval mode, it is deterministic and
uses the posterior means — cheap, and what Grad-CAM and other explanations see.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from xai_lightning.core.eval_mode import eval_mode
from xai_lightning.uncertainty.keyed_noise import KeyedNoise
from xai_lightning.uncertainty.predictive import (
    PredictiveSummary,
    keyed_forward,
    sampled_logits,
    summarise_samples,
)

__all__ = [
    "BayesianConv2d",
    "BayesianLayer",
    "BayesianLinear",
    "bayesian_layers",
    "bayesian_logits",
    "bayesian_predict",
    "keyed_weight_noise",
    "kl_divergence",
    "make_bayesian",
]


class BayesianLayer(nn.Module):
    """Shared parameters and KL of the Gaussian mean-field layers.

    Args:
        weight_shape: shape of the weight tensor.
        bias_shape: shape of the bias, or None for no bias.
        prior_sigma: standard deviation σ_p of the zero-mean Gaussian prior.
        init_rho: initial ρ of every weight (σ = softplus(ρ); −5 gives σ ≈ 0.0067, so training
            starts close to a deterministic network, as Blundell et al. recommend).
    """

    def __init__(
        self, weight_shape: Sequence[int], bias_shape: Sequence[int] | None, prior_sigma: float, init_rho: float
    ) -> None:
        super().__init__()
        if prior_sigma <= 0:
            raise ValueError(f"prior_sigma must be > 0; got {prior_sigma}")
        self.prior_sigma = float(prior_sigma)
        self.init_rho = float(init_rho)
        self.weight_mu = nn.Parameter(torch.empty(*weight_shape))
        self.weight_rho = nn.Parameter(torch.empty(*weight_shape))
        if bias_shape is not None:
            self.bias_mu = nn.Parameter(torch.empty(*bias_shape))
            self.bias_rho = nn.Parameter(torch.empty(*bias_shape))
        else:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_rho", None)
        #: Set by :func:`keyed_weight_noise`: ``(noise, stream)`` to sample from in eval mode.
        self.noise: tuple[KeyedNoise, int] | None = None

    def reset_parameters(self) -> None:
        # μ as PyTorch initialises the deterministic layer (Kaiming-uniform, fan-in bias bound).
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))
        nn.init.constant_(self.weight_rho, self.init_rho)
        if self.bias_mu is not None:
            fan_in = self.weight_mu[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias_mu, -bound, bound)
            nn.init.constant_(self.bias_rho, self.init_rho)

    @property
    def weight_sigma(self) -> torch.Tensor:
        return F.softplus(self.weight_rho)

    @property
    def bias_sigma(self) -> torch.Tensor | None:
        return None if self.bias_rho is None else F.softplus(self.bias_rho)

    def kl_divergence(self) -> torch.Tensor:
        """``KL(q ‖ p)`` summed over weights and biases (nats), closed form for Gaussians:
        ``log(σ_p/σ) + (σ² + μ²) / (2σ_p²) − ½`` per parameter."""
        total = _gaussian_kl(self.weight_mu, self.weight_sigma, self.prior_sigma)
        if self.bias_mu is not None:
            bias_sigma = self.bias_sigma
            assert bias_sigma is not None, "bias_mu and bias_rho are registered together"
            total = total + _gaussian_kl(self.bias_mu, bias_sigma, self.prior_sigma)
        return total

    def _mean_and_variance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _deterministic(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self.noise is None:
            return self._deterministic(x)
        mean, variance = self._mean_and_variance(x)
        if self.noise is not None:
            noise, stream = self.noise
            epsilon = noise.normal(stream, tuple(mean.shape), device=mean.device, dtype=mean.dtype)
        else:
            epsilon = torch.randn_like(mean)
        return mean + torch.sqrt(variance.clamp_min(1e-16)) * epsilon


def _gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor, prior_sigma: float) -> torch.Tensor:
    return (
        math.log(prior_sigma) - torch.log(sigma) + (sigma.square() + mu.square()) / (2 * prior_sigma**2) - 0.5
    ).sum()


class BayesianLinear(BayesianLayer):
    """A fully connected layer with a Gaussian posterior over its weights: ``(B, in) → (B, out)``."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, prior_sigma: float = 1.0, init_rho: float = -5.0
    ) -> None:
        super().__init__((out_features, in_features), (out_features,) if bias else None, prior_sigma, init_rho)
        self.in_features = in_features
        self.out_features = out_features
        self.reset_parameters()

    def _deterministic(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_mu, self.bias_mu)

    def _mean_and_variance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bias_var = None if self.bias_sigma is None else self.bias_sigma.square()
        return F.linear(x, self.weight_mu, self.bias_mu), F.linear(x.square(), self.weight_sigma.square(), bias_var)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, prior_sigma={self.prior_sigma}"


class BayesianConv2d(BayesianLayer):
    """A 2-D convolution with a Gaussian posterior over its kernel: ``(B, C_in, H, W) → (B, C_out, H', W')``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        prior_sigma: float = 1.0,
        init_rho: float = -5.0,
    ) -> None:
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        kernel = _pair(kernel_size)
        super().__init__(
            (out_channels, in_channels // groups, *kernel), (out_channels,) if bias else None, prior_sigma, init_rho
        )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel, _pair(stride), _pair(padding)
        self.dilation, self.groups = _pair(dilation), groups
        self.reset_parameters()

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def _deterministic(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.weight_mu, self.bias_mu)

    def _mean_and_variance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bias_var = None if self.bias_sigma is None else self.bias_sigma.square()
        return self._conv(x, self.weight_mu, self.bias_mu), self._conv(x.square(), self.weight_sigma.square(), bias_var)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, prior_sigma={self.prior_sigma}"
        )


def bayesian_layers(model: nn.Module) -> list[tuple[str, BayesianLayer]]:
    """``(name, layer)`` of every Bayesian layer of ``model``, in registration order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, BayesianLayer)]


def kl_divergence(model: nn.Module) -> torch.Tensor:
    """Sum of the KL divergences of every Bayesian layer of ``model`` (0 if it has none)."""
    layers = bayesian_layers(model)
    if not layers:
        return torch.zeros(())
    return torch.stack([layer.kl_divergence() for _, layer in layers]).sum()


def make_bayesian(
    model: nn.Module, layers: str | Sequence[str] = "all", prior_sigma: float = 1.0, init_rho: float = -5.0
) -> nn.Module:
    """Replace ``nn.Linear``/``nn.Conv2d`` modules of ``model`` (in place) by Bayesian ones whose means are
    the current weights.

    Args:
        layers: ``"all"`` (every Linear and Conv2d), ``"last"`` (the last one registered, e.g. the
            classifier head — "Bayesian last layer"), or a list of dotted module names.
        prior_sigma, init_rho: see :class:`BayesianLayer`.

    Returns ``model``. Unknown names, or names of other module types, raise ``ValueError`` listing
    the convertible ones.
    """
    convertible = [name for name, module in model.named_modules() if type(module) in (nn.Linear, nn.Conv2d) and name]
    if not convertible:
        raise ValueError("make_bayesian found no nn.Linear or nn.Conv2d module to convert")
    if layers == "all":
        names = convertible
    elif layers == "last":
        names = convertible[-1:]
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        unknown = [name for name in names if name not in convertible]
        if unknown:
            raise ValueError(
                f"make_bayesian cannot convert {unknown}: give 'all', 'last' or names of nn.Linear/"
                f"nn.Conv2d modules: {convertible}"
            )
    for name in names:
        owner, leaf = model, name
        if "." in name:
            parent, leaf = name.rsplit(".", 1)
            owner = model.get_submodule(parent)
        old = getattr(owner, leaf)
        if isinstance(old, nn.Linear):
            new: BayesianLayer = BayesianLinear(
                old.in_features, old.out_features, old.bias is not None, prior_sigma, init_rho
            )
        else:
            if old.padding_mode != "zeros" or isinstance(old.padding, str):
                raise ValueError(
                    f"make_bayesian: {name!r} uses padding={old.padding!r}, padding_mode="
                    f"{old.padding_mode!r}; only numeric zero padding is supported"
                )
            new = BayesianConv2d(
                old.in_channels,
                old.out_channels,
                old.kernel_size,
                old.stride,
                old.padding,
                old.dilation,
                old.groups,
                old.bias is not None,
                prior_sigma,
                init_rho,
            )
        with torch.no_grad():
            new.weight_mu.copy_(old.weight)
            if old.bias is not None:
                new.bias_mu.copy_(old.bias)
        new.to(old.weight.device)
        setattr(owner, leaf, new)
    return model


@contextlib.contextmanager
def keyed_weight_noise(model: nn.Module, noise: KeyedNoise) -> Iterator[list[tuple[str, BayesianLayer]]]:
    """Within the block, every Bayesian layer of ``model`` samples (also in eval mode) with noise from ``noise``."""
    layers = bayesian_layers(model)
    if not layers:
        raise ValueError(
            "Sampling weights needs Bayesian layers, but the model has none. Build it with BayesianLinear/"
            "BayesianConv2d, convert it with make_bayesian(network), or train a VariationalClassifier."
        )
    try:
        for stream, (_, layer) in enumerate(layers):
            layer.noise = (noise, 1000 + stream)
        yield layers
    finally:
        for _, layer in layers:
            layer.noise = None


def bayesian_logits(
    model: nn.Module,
    x: torch.Tensor,
    samples: int = 20,
    seed: int = 0,
    keys: torch.Tensor | None = None,
    max_batch: int | None = None,
    output_key: str | int | None = None,
    share_prefix: bool = True,
) -> torch.Tensor:
    """Logits of ``samples`` weight samples of ``x (N, ...)``: ``(samples, N, K)``, batched like MC dropout.

    The model runs in eval mode (BatchNorm, dropout off); only the Bayesian layers are stochastic,
    with noise keyed by ``(seed, keys, sample, layer)``. Every module's mode is restored. With
    ``share_prefix`` the layers before the first Bayesian layer run once per example (a
    "Bayesian last layer" costs about one forward; see :func:`~xai_lightning.uncertainty.mc_dropout_logits`).
    """
    if samples < 2:
        raise ValueError(f"A Bayesian predictive spread needs at least 2 weight samples; got {samples}")
    forward, noise = keyed_forward(model, x, keys, seed, output_key)

    with eval_mode(model), torch.no_grad(), keyed_weight_noise(model, noise) as layers:
        return sampled_logits(forward, x, samples, [layer for _, layer in layers], max_batch, share_prefix)


def bayesian_predict(
    model: nn.Module,
    x: torch.Tensor,
    samples: int = 20,
    seed: int = 0,
    keys: torch.Tensor | None = None,
    max_batch: int | None = None,
    output_key: str | int | None = None,
    share_prefix: bool = True,
) -> PredictiveSummary:
    """Predictive mean ``(N, K)`` and uncertainty scores ``(N,)`` of a Bayesian network from weight samples."""
    logits = bayesian_logits(model, x, samples, seed, keys, max_batch, output_key, share_prefix)
    return summarise_samples(logits.float().softmax(-1))
