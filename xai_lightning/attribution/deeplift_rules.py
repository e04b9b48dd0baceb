"""DeepLIFT's rescale rule as a backward pass: multipliers ``Δy/Δx`` instead of ``∂y/∂x`` at nonlinearities.

DeepLIFT (Shrikumar, Greenside & Kundaje, "Learning Important Features Through Propagating
Activation Differences", ICML 2017) explains the difference between the output on an input
``x`` and on a reference ``x̄``. The forward pass runs on both at once — the batch is
``[inputs; references]``, two halves of equal size — and each nonlinearity passes back its
*multiplier* ``m = Δy/Δx = (y(x) − y(x̄)) / (x − x̄)`` (the rescale rule) in place of its
derivative; where ``|Δx| < eps`` the ordinary gradient is used (the limit of the ratio).
Linear pieces — convolutions, linear layers, BatchNorm in eval mode, average pooling, the
residual additions of ResNets, our ``Normalize`` — need no rule: for them multipliers *are*
gradients. The chain rule for multipliers then gives ``Σ_i m_i Δx_i = Δf`` exactly
(summation-to-delta).

Rules (module types as in Captum's ``DeepLift``, plus more element-wise activations):

* element-wise activations (ReLU, LeakyReLU, ELU, Sigmoid, Tanh, Softplus, GELU, SiLU, …):
  ``m = Δy/Δx`` per element;
* max pooling (1-, 2-, 3-D): the pool is treated as one nonlinearity. Per window with outputs
  ``o = max_w x``, ``ō = max_w x̄`` and ``M = max(o, ō)``, the change ``M − ō`` is credited to
  the input's argmax and ``o − M`` to the reference's argmax (so the two sum to ``o − ō``), and
  each position's credit is divided by its ``Δx``. Credits from overlapping windows add up.

Not supported (the gradient is used, so summation-to-delta may fail — check the delta):
activations called as functions inside ``forward``, Softmax, adaptive max pooling, attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.pooling import _MaxPoolNd

from xai_lightning.attribution.output_override import override_module_outputs
from xai_lightning.core import ObserverGuard

__all__ = ["ELEMENTWISE_NONLINEARITIES", "MAX_POOLS", "apply_rescale_rule"]

ELEMENTWISE_NONLINEARITIES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.LogSigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Softsign,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Tanhshrink,
)
MAX_POOLS: tuple[type[nn.Module], ...] = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_POOL_FUNCTIONS = {nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d, nn.MaxPool3d: F.max_pool3d}


def _halves_difference(t: torch.Tensor) -> torch.Tensor:
    """``[a; b] → [a − b; a − b]``: each row's difference to its partner in the other half."""
    first, second = t.chunk(2)
    difference = first - second
    return torch.cat([difference, difference])


def _rescale_elementwise(module: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Same value as ``y``; the gradient to ``x`` is ``Δy/Δx`` (or ``∂y/∂x`` where ``|Δx| < eps``)."""
    x_first, x_second = x.detach().chunk(2)
    y_first, y_second = y.detach().chunk(2)
    delta_in = x_first - x_second  # both halves share it: the ratio is computed once, on half the rows
    small = delta_in.abs() < eps
    half = (y_first - y_second) / torch.where(small, torch.ones_like(delta_in), delta_in)
    multiplier = torch.cat([half, half])
    if type(module) is nn.ReLU:
        # ReLU's derivative is known (1 where x > 0, as torch defines it), so the multiplier covers
        # every position and the backward pass is a single product, not both branches of a where.
        small_rows = torch.cat([small, small])
        multiplier = torch.where(small_rows, (x.detach() > 0).to(multiplier.dtype), multiplier)
        return y.detach() + multiplier * (x - x.detach())
    return torch.where(torch.cat([small, small]), y, y.detach() + multiplier * (x - x.detach()))


class _MaxPoolRescale(torch.autograd.Function):
    """Max pooling whose backward pass is DeepLIFT's rescale rule for the pool as a whole."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, module: _MaxPoolNd, eps: float) -> torch.Tensor:
        pool = _POOL_FUNCTIONS[type(module)]
        y, indices = pool(
            x, module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode, return_indices=True
        )
        ctx.save_for_backward(x, y, indices)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, y, indices = ctx.saved_tensors
        output, reference_output = y.chunk(2)
        top = torch.maximum(output, reference_output)
        credit = grad_output * torch.cat([top - reference_output, output - top])
        # Send each window's credit to the position its maximum came from (indices are flat
        # within each channel's spatial plane); credits of overlapping windows add up.
        flat_credit = torch.zeros_like(x).flatten(2)
        flat_credit.scatter_add_(2, indices.flatten(2), credit.flatten(2))
        first, second = flat_credit.view_as(x).chunk(2)
        credited = torch.cat([first + second, first + second])
        delta_in = _halves_difference(x)
        small = delta_in.abs() < ctx.eps
        rescaled = credited / torch.where(small, torch.ones_like(delta_in), delta_in)
        # Skipping the ordinary gradient when no Δx is small needs the answer on the host: worth it
        # on a CPU, a synchronisation per backward pass on an accelerator, where both are computed.
        if rescaled.device.type == "cpu" and not bool(small.any()):
            return rescaled, None, None
        # The ordinary max-pool gradient, where Δx is too small to divide by: each window's
        # incoming gradient goes to its argmax (the same indices; no second pooling pass).
        gradient = torch.zeros_like(x).flatten(2)
        gradient.scatter_add_(2, indices.flatten(2), grad_output.flatten(2))
        return torch.where(small, gradient.view_as(x), rescaled), None, None


def apply_rescale_rule(guard: ObserverGuard, model: nn.Module, eps: float = 1e-10) -> list[nn.Module]:
    """Install the rescale rule on every supported nonlinearity of ``model`` for the guard's lifetime.

    Every forward pass while it is installed must carry ``[inputs; references]`` halves.
    Returns the hooked modules.
    """

    def replace(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[0] % 2:
            raise RuntimeError(
                "DeepLIFT's rescale rule needs forward batches made of [inputs; references] halves; got an odd "
                f"batch of {x.shape[0]} at {type(module).__name__}."
            )
        if isinstance(module, MAX_POOLS):
            if getattr(module, "return_indices", False):
                raise ValueError("DeepLIFT does not support max-pool modules with return_indices=True.")
            return _MaxPoolRescale.apply(x, module, eps)
        return _rescale_elementwise(module, x, y, eps)

    return override_module_outputs(
        guard, model, lambda m: isinstance(m, ELEMENTWISE_NONLINEARITIES + MAX_POOLS), replace
    )
